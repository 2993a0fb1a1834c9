"""Put the book's JavaScript into book/_vendor so the HTML never loads anything from a CDN.

Jupyter Book 1.x pages load RequireJS and the Jupyter widgets HTML manager (to draw widgets from
the state saved in the page) and MathJax 3 (to typeset maths), from CDNs by default.  This script
installs the versions pinned in book/package-lock.json from the npm registry (`npm ci`, only when
the lock file changed) and copies the files the pages need into book/_vendor, which _config.yml
serves as static files.  The copy is made in a temporary folder and renamed into place, so a failed
run never leaves a half-filled _vendor behind.

    python book/vendor_js.py
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BOOK = Path(__file__).resolve().parent
NODE_MODULES = BOOK / "node_modules"
VENDOR = BOOK / "_vendor"
STAMP_NAME = ".vendored-from"

# source inside node_modules -> destination inside _vendor (a folder copies all of it)
FILES = {
    "requirejs/require.js": "require.js",
    "@jupyter-widgets/html-manager/dist/embed-amd.js": "html-manager/embed-amd.js",
    "mathjax/es5/tex-chtml.js": "mathjax/tex-chtml.js",
    "mathjax/es5/input/tex": "mathjax/input/tex",
    "mathjax/es5/output/chtml": "mathjax/output/chtml",
    "mathjax/es5/ui": "mathjax/ui",
    "mathjax/es5/a11y": "mathjax/a11y",
    "mathjax/es5/sre": "mathjax/sre",
}
# the widget manager's fonts (Font Awesome), loaded from next to embed-amd.js
FONT_SUFFIXES = (".woff2", ".woff", ".ttf", ".eot", ".svg")


def _lock_text() -> str:
    lock = BOOK / "package-lock.json"
    if not lock.is_file():
        raise SystemExit(f"{lock} is missing: it pins the book's JavaScript; restore it from git")
    return lock.read_text()


def npm_ci() -> None:
    """Install node_modules from the lock file, unless they were installed from this very lock file."""
    lock = _lock_text()
    installed = NODE_MODULES / ".package-lock.json"
    stamp = NODE_MODULES / STAMP_NAME
    if installed.is_file() and stamp.is_file() and stamp.read_text() == lock:
        return
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("npm is not installed: the book vendors its JavaScript from the npm registry "
                         "(Debian: apt-get install npm; `make book` does it when run as root)")
    subprocess.run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=BOOK, check=True)
    stamp.write_text(lock)


def _versions() -> dict[str, str]:
    lock = json.loads(_lock_text())
    packages = lock.get("packages", {})
    names = ("requirejs", "@jupyter-widgets/html-manager", "mathjax")
    return {name: packages[f"node_modules/{name}"]["version"] for name in names}


def vendor() -> Path:
    """Copy the pinned files into _vendor (atomically) and return its path."""
    lock = _lock_text()
    stamp = VENDOR / STAMP_NAME
    if stamp.is_file() and stamp.read_text() == lock:
        return VENDOR
    npm_ci()
    tmp = Path(tempfile.mkdtemp(prefix="_vendor.", dir=BOOK))
    tmp.chmod(0o755)
    try:
        for src, dst in FILES.items():
            source, target = NODE_MODULES / src, tmp / dst
            if not source.exists():
                raise SystemExit(f"{source} is missing after `npm ci`: check book/package.json")
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, target)
            else:
                shutil.copy2(source, target)
        fonts = NODE_MODULES / "@jupyter-widgets/html-manager/dist"
        for font in fonts.iterdir():
            if font.suffix in FONT_SUFFIXES:
                shutil.copy2(font, tmp / "html-manager" / font.name)
        (tmp / "VERSIONS.json").write_text(json.dumps(_versions(), indent=2) + "\n")
        (tmp / STAMP_NAME).write_text(lock)
        old = None
        if VENDOR.exists():
            old = VENDOR.with_name("_vendor.old")
            shutil.rmtree(old, ignore_errors=True)
            VENDOR.rename(old)
        tmp.rename(VENDOR)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return VENDOR


if __name__ == "__main__":
    print(f"vendored {', '.join(f'{k} {v}' for k, v in _versions().items())} into {vendor()}", file=sys.stderr)
