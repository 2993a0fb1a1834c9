"""``make pdf``: the smoke book printed to one PDF by headless Chromium, offline, every page in it."""

from __future__ import annotations

import re

from pypdf import PdfReader

from build_pdf import PdfError, build_pdf
from toc import toc_files

import pytest


@pytest.fixture(scope="module")
def book_pdf(smoke_book, tmp_path_factory):
    return PdfReader(build_pdf(smoke_book.html, tmp_path_factory.mktemp("pdf") / "book.pdf"))


def _images(page) -> int:
    xobjects = page.get("/Resources", {}).get("/XObject", {})
    return sum(1 for ref in xobjects.values() if ref.get_object().get("/Subtype") == "/Image")


def test_every_page_of_the_book_is_in_the_pdf_in_order(book_pdf):
    titles = [item.title for item in book_pdf.outline]
    assert len(titles) == len(toc_files()), f"bookmarks {titles} do not match the table of contents"
    text = " ".join(page.extract_text() for page in book_pdf.pages)
    for title in titles:
        assert title.split()[0] in text, f"the PDF lacks the page {title!r}"
    assert any("interpolation" in t.lower() for t in titles) and titles[-1].lower().startswith("references")


def test_the_pdf_carries_the_figures_and_formulas(book_pdf):
    figures = sum(_images(page) for page in book_pdf.pages)
    assert figures >= len(toc_files()) - 2, f"only {figures} images in the PDF"
    text = " ".join(page.extract_text() for page in book_pdf.pages)
    tex = re.findall(r"\\(?:frac|sum|sigma|partial|mathrm|left|right|cdot|begin)\b", text)
    assert not tex, f"formulas were printed as TeX source, not typeset: {tex[:5]}"


def test_an_unbuilt_book_is_refused_with_what_to_run(tmp_path):
    with pytest.raises(PdfError, match="make book"):
        build_pdf(tmp_path, tmp_path / "book.pdf")
    assert not (tmp_path / "book.pdf").exists()
