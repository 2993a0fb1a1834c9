#!/usr/bin/env bash
# Install the system programs the book needs when they are missing (Debian/Ubuntu, apt-get):
#   npm       to vendor the book's JavaScript from the npm registry (make book, make test)
#   chromium  to load the built book in a headless browser (make test; pass --browser)
# As root it installs them; otherwise it uses sudo when that needs no password, or stops and says
# what to install.
set -euo pipefail

need=()
command -v npm >/dev/null 2>&1 || need+=(npm)
if [[ "${1:-}" == "--browser" ]]; then
  command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
    || [[ -n "${CHROMIUM:-}" ]] || need+=(chromium)
fi
[[ ${#need[@]} -eq 0 ]] && exit 0

if [[ $(id -u) -eq 0 ]]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  sudo=(sudo -n)
else
  echo "Missing: ${need[*]}. Install them (Debian/Ubuntu: sudo apt-get install -y ${need[*]}) and rerun." >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "Missing: ${need[*]}, and no apt-get to install them with: install them and rerun." >&2
  exit 1
fi
echo "Installing ${need[*]} with apt-get"
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${need[@]}"
