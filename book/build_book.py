"""Build the book: vendor its JavaScript, then run Jupyter Book, executing the notebooks.

    python book/build_book.py [--profile smoke|cpu|gpu] [--output DIR] [--all]

The notebooks scale their work with the profile (``DCLS_PROFILE``; by default the machine's: ``gpu``
with CUDA, else ``cpu``); each profile has its own execution cache under ``<output>/_build``, so a
notebook runs again only when its code changed.  A failing cell, a broken reference or any other
Sphinx warning fails the build.  The HTML lands in ``<output>/_build/html`` (by default book/_build/html).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

BOOK = Path(__file__).resolve().parent
sys.path.insert(0, str(BOOK))

from vendor_js import vendor  # noqa: E402

from dcls_lib.progress import QUIET_ENV  # noqa: E402

PROFILES = ("smoke", "cpu", "gpu")


class BuildError(RuntimeError):
    """The book did not build; the message ends with the tail of the build log."""


def jupyter_book() -> str:
    """The jupyter-book executable of this Python environment."""
    here = Path(sys.executable).with_name("jupyter-book")
    found = str(here) if here.exists() else shutil.which("jupyter-book")
    if not found:
        raise BuildError("jupyter-book is not installed in this environment (pip install -e '.[book]')")
    return found


def build(profile: str | None = None, output: Path | None = None, rebuild_all: bool = False,
          log: Path | None = None, runs: Path | None = None) -> Path:
    """Build the book and return the folder of its HTML; raises BuildError with the log's tail.

    ``runs``: where the chapters keep the models they train (``DCLS_RUNS``; default: the checkout's
    ``runs/``), e.g. a temporary folder for a throw-away build."""
    if profile is not None and profile not in PROFILES:
        raise BuildError(f"profile must be one of {PROFILES}, got {profile!r}")
    vendor()
    env = dict(os.environ)
    # pages show results, not machinery: no progress bars or run logs (live notebooks keep them)
    env[QUIET_ENV] = "1"
    if profile is not None:
        env["DCLS_PROFILE"] = profile
    if runs is not None:
        env["DCLS_RUNS"] = str(runs)
    # the kernel must import this checkout's dcls_lib, whatever is installed
    root = str(BOOK.parent)
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    command = [jupyter_book(), "build", str(BOOK), "--warningiserror", "--keep-going"]
    if output is not None:
        command += ["--path-output", str(output)]
    if rebuild_all:
        command.append("--all")
    if log is None:
        result = subprocess.run(command, env=env)
        tail = "(see the output above)"
    else:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as handle:
            result = subprocess.run(command, env=env, stdout=handle, stderr=subprocess.STDOUT)
        tail = log.read_text(errors="replace")[-6000:]
    if result.returncode != 0:
        raise BuildError(f"jupyter-book build failed (exit {result.returncode}): {tail}")
    return (output if output is not None else BOOK) / "_build" / "html"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=PROFILES, default=os.environ.get("DCLS_PROFILE") or None,
                        help="run profile of the notebooks (default: $DCLS_PROFILE, else the machine's)")
    parser.add_argument("--output", type=Path, default=None, help="build folder (default: book/)")
    parser.add_argument("--all", action="store_true", help="re-render every page (the cache still applies)")
    args = parser.parse_args()
    try:
        html = build(args.profile, args.output, args.all)
    except BuildError as error:
        print(error, file=sys.stderr)
        return 1
    print(f"The book is in {html}/index.html")
    return 0


if __name__ == "__main__":
    sys.exit(main())
