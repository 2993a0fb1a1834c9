"""Progress bars and run logs: shown in live notebooks and on the command line, not in the rendered book.

The book's pages show results, not machinery, so ``book/build_book.py`` sets ``DCLS_QUIET=1`` while
it executes the chapters; every bar and log line of the library goes through here and stays silent
then.  ``disable=True`` still silences one bar wherever it runs.
"""

from __future__ import annotations

import os

from tqdm.auto import tqdm

QUIET_ENV = "DCLS_QUIET"


def quiet() -> bool:
    """Whether ``DCLS_QUIET`` asks for no progress bars and no log lines."""
    return os.environ.get(QUIET_ENV, "").strip() not in ("", "0")


def progress_bar(iterable=None, *, disable: bool = False, **kwargs) -> tqdm:
    """A tqdm bar (notebook or terminal), silent when ``disable`` or :func:`quiet`."""
    return tqdm(iterable, disable=disable or quiet(), **kwargs)


def note(message: str) -> None:
    """One line about a run's progress, printed without breaking a bar; silent when :func:`quiet`."""
    if not quiet():
        tqdm.write(message)
