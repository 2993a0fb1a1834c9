"""Print the built book to one PDF, offline: ``make pdf``.

Jupyter Book's own PDF builders download a browser (pyppeteer) or need LaTeX; neither is wanted
here.  The HTML pages already render everything (figures, MathJax, widgets at their first frame), so
this serves ``book/_build/html`` on 127.0.0.1, loads each page of the table of contents in the
headless Chromium the browser tests use, prints it with the theme's print style sheet, and joins the
pages in table-of-contents order with pypdf, one bookmark per page.

    python book/build_pdf.py [--html DIR] [--output FILE]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from pypdf import PdfWriter

from dcls_lib.files import atomic_path

BOOK = Path(__file__).resolve().parent
sys.path.insert(0, str(BOOK))

from chromium import Chromium, serve  # noqa: E402
from toc import toc_files  # noqa: E402

DEFAULT_HTML = BOOK / "_build" / "html"
DEFAULT_PDF = BOOK / "_build" / "pdf" / "dcls-book.pdf"


class PdfError(RuntimeError):
    """The PDF could not be made; the message says why."""


def build_pdf(html: Path = DEFAULT_HTML, output: Path = DEFAULT_PDF, timeout: float = 60.0) -> Path:
    """Print every page of the built book in ``html`` into one PDF at ``output``; returns ``output``."""
    missing = [name for name in toc_files() if not (html / f"{name}.html").is_file()]
    if missing:
        raise PdfError(f"the book is not built in {html} (no {missing[0]}.html): run `make book` first")
    writer = PdfWriter()
    with tempfile.TemporaryDirectory(prefix="dcls-pdf.") as scratch, serve(html) as base, Chromium() as chrome:
        page = chrome.new_page()
        try:
            for number, name in enumerate(toc_files()):
                page.goto(base + f"{name}.html", timeout=timeout)
                pending = page.wait_rendered(timeout)
                if pending:
                    raise PdfError(f"{name}: {'; '.join(pending)}")
                title = page.evaluate("document.querySelector('article h1')?.innerText || document.title")
                printed = page.print_pdf(Path(scratch) / f"{number:02d}.pdf")
                first = len(writer.pages)
                writer.append(str(printed))
                writer.add_outline_item(title.strip(" #¶\n"), first)
        finally:
            page.close()
    with atomic_path(output) as partial:  # a reader never sees half a PDF
        writer.write(partial)
    return output


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--html", type=Path, default=DEFAULT_HTML, help="the built HTML (default: book/_build/html)")
    parser.add_argument("--output", type=Path, default=DEFAULT_PDF, help=f"the PDF (default: {DEFAULT_PDF.relative_to(BOOK.parent)})")
    args = parser.parse_args()
    try:
        pdf = build_pdf(args.html, args.output)
    except (PdfError, FileNotFoundError, TimeoutError) as error:
        print(f"make pdf: {error}", file=sys.stderr)
        return 1
    print(f"The book as one PDF: {pdf}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
