"""The book built once per test session, in smoke mode, shared by the notebook and browser tests.

Building the book executes every notebook listed in book/_toc.yml under ``DCLS_PROFILE=smoke``
(jupyter-book with a fresh execution cache in a temporary folder), so each notebook runs exactly once
per test run; the tests then inspect the executed notebooks and load the HTML in Chromium.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BOOK = ROOT / "book"
sys.path.insert(0, str(BOOK))
sys.path.insert(0, str(BOOK / "_ext"))

from build_book import BuildError, build  # noqa: E402


@dataclass
class BuiltBook:
    html: Path
    executed: Path  # the executed copies of the notebooks, with their outputs
    log: Path


@pytest.fixture(scope="session")
def smoke_book(tmp_path_factory) -> BuiltBook:
    out = tmp_path_factory.mktemp("book")
    log = out / "build.log"
    try:
        html = build(profile="smoke", output=out, log=log, runs=out / "runs")
    except BuildError as error:
        pytest.fail(f"the book did not build in smoke mode: {error}", pytrace=False)
    return BuiltBook(html=html, executed=out / "_build" / "jupyter_execute", log=log)
