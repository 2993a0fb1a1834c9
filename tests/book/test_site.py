"""The built book, served on 127.0.0.1 and loaded in headless Chromium: it renders, offline.

For every page: no request leaves localhost, no request fails, no JavaScript error, every image has
loaded, every formula is typeset by MathJax.  Pages with widgets render them from the embedded state
and the slider switches frames without a kernel.  Screenshots land in book/_build/screenshots/.
"""

from __future__ import annotations

import re

import pytest

from chromium import Chromium, is_local, serve
from toc import BOOK, toc_files

SCREENSHOTS = BOOK / "_build" / "screenshots"
PAGES = toc_files()
# What a reader should never see in a rendered page: machinery (progress bars, empty output blocks,
# paths of the machine that built it) and code lines running past the edge of their cell.
TQDM_BAR = re.compile(r"\d+/\d+ \[\d+:\d+<|\d+(\.\d+)?(it|img|B)/s\]|\?(it|img)/s")
MACHINE_PATH = re.compile(r"(?:^|[\s'\"(=:])(/(?:home|root|tmp|work|usr|var|opt|mnt|Users|private)/[^\s'\"]*)")
BLANK_OUTPUTS = """Array.from(document.querySelectorAll('.cell_output')).filter(o =>
  !o.innerText.trim() && !o.querySelector('img, svg, table, .jupyter-widgets, script[type*="widget"]')).length"""
SCROLLING_CODE = """Array.from(document.querySelectorAll('.cell_input pre, .highlight pre'))
  .filter(p => p.scrollWidth > p.clientWidth + 1)
  .map(p => p.innerText.split('\\n').reduce((a, b) => (b.length > a.length ? b : a), '').trim())"""
VISIBLE_FRAME = """(() => {
  const shown = Array.from(document.querySelectorAll('.widget-image')).filter(e => e.offsetParent !== null);
  return shown.map(e => e.src).join(' ');
})()"""


@pytest.fixture(scope="module")
def site(smoke_book):
    with serve(smoke_book.html) as base, Chromium() as chrome:
        page = chrome.new_page()
        yield base, page
        page.close()


def _load(site, name: str):
    base, page = site
    page.goto(base + f"{name}.html")
    pending = page.wait_rendered(30)
    assert not pending, f"{name}: {'; '.join(pending)}"
    return page


@pytest.mark.parametrize("name", PAGES)
def test_page_renders_offline(site, name):
    page = _load(site, name)
    outside = [u for u in page.requests() if not is_local(u)]
    assert not outside, f"{name}: requests left localhost: {outside}"
    assert not page.failures(), f"{name}: failed requests: {page.failures()}"
    assert not page.console_errors(), f"{name}: JavaScript errors: {page.console_errors()}"
    broken = page.evaluate("Array.from(document.images).filter(i => !i.naturalWidth).map(i => i.src)")
    assert not broken, f"{name}: images that did not render: {broken}"
    if name.startswith("notebooks/"):
        figures = page.evaluate("document.querySelectorAll('.cell_output img').length")
        assert figures >= 1, f"{name}: no figure rendered"
        article = page.evaluate("document.querySelector('article').innerText")
        assert "profile smoke" in article, f"{name}: the chapter does not say which profile computed it"
        banner = page.evaluate("document.querySelector('.bd-header-announcement').innerText")
        assert "profile smoke" in banner, f"{name}: the banner does not name the build's profile"
    path = page.screenshot(SCREENSHOTS / f"{name.replace('/', '_')}.png")
    print(f"screenshot: {path}")


@pytest.mark.parametrize("name", PAGES)
def test_page_shows_no_machinery(site, name):
    """No progress bar, blank output block or machine path in a page; no code line runs off its cell."""
    page = _load(site, name)
    text = page.evaluate("document.querySelector('article').innerText")
    bars = [m.group(0) for m in TQDM_BAR.finditer(text)]
    assert not bars, f"{name}: progress bars in the page: {bars[:3]}"
    paths = [m.group(1) for m in MACHINE_PATH.finditer(text)]
    assert not paths, f"{name}: paths of the build machine in the page: {paths[:3]}"
    blank = page.evaluate(BLANK_OUTPUTS)
    assert not blank, f"{name}: {blank} empty output blocks"
    wide = page.evaluate(SCROLLING_CODE)
    assert not wide, f"{name}: code lines wider than their cell: {wide[:3]}"


def test_formulas_are_typeset(site):
    page = _load(site, "notebooks/02_interpolation")
    count = page.evaluate("document.querySelectorAll('mjx-container').length")
    assert count >= 10, f"only {count} formulas typeset on the interpolation chapter"
    # MathJax used its own fonts, served locally
    fonts = [u for u in page.requests() if "mathjax" in u and u.endswith((".woff", ".woff2"))]
    assert fonts and all(is_local(u) for u in fonts)


def test_bibliography_lists_the_seed_papers(site):
    page = _load(site, "references")
    text = page.evaluate("document.body.innerText")
    for title in ("Dilated convolution with learnable spacings", "Grad-CAM study",
                  "Harmonizing the object recognition strategies"):
        assert title.lower() in text.lower(), f"the bibliography lacks {title!r}"


def test_tap_widget_moves_in_the_static_page(site):
    """The chapter-2 player: frames computed at build time, switched in the browser by its buttons
    (interpolation) and sliders (tap column, then σ)."""
    page = _load(site, "notebooks/02_interpolation")
    assert page.evaluate("document.querySelectorAll('.widget-slider').length") >= 2
    labels = page.evaluate("Array.from(document.querySelectorAll('.widget-toggle-buttons button'))"
                           ".map(b => b.textContent.trim())")
    for name in ("v1", "max", "gauss", "v0"):
        assert any(f"({name})" in label for label in labels), f"no {name} button among {labels}"
    page.evaluate("document.querySelector('.widget-slider').scrollIntoView({block: 'center'})")

    def move(slider: int, key: str = "ArrowRight", code: int = 39) -> None:
        handle = f"document.querySelectorAll('.widget-slider .noUi-handle')[{slider}]"
        assert page.evaluate(f"(() => {{ const h = {handle}; h.focus(); return document.activeElement === h; }})()")
        page.press(key, key, code)
        page.settle(0.5)

    before = page.evaluate(VISIBLE_FRAME)
    readout = page.evaluate("document.querySelector('.widget-slider .widget-readout').textContent")
    assert before, "no frame of the widget is visible"
    move(0)  # the tap column
    after = page.evaluate(VISIBLE_FRAME)
    assert page.evaluate("document.querySelector('.widget-slider .widget-readout').textContent") != readout
    assert after and after != before, "moving the tap did not change the frame"
    # another interpolation: another series of frames
    _click_option(page, ".widget-toggle-buttons", next(label for label in labels if "(max)" in label))
    triangle = page.evaluate(VISIBLE_FRAME)
    assert triangle not in ("", after)
    move(1)  # σ: the triangle's width changes
    assert page.evaluate(VISIBLE_FRAME) not in ("", triangle), "σ did not change the triangle's frame"
    _click_option(page, ".widget-toggle-buttons", next(label for label in labels if "(v1)" in label))
    bilinear = page.evaluate(VISIBLE_FRAME)
    move(1, "ArrowLeft", 37)  # bilinear has no width: σ leaves it alone
    assert page.evaluate(VISIBLE_FRAME) == bilinear, "σ changed the bilinear frame"
    path = page.screenshot(SCREENSHOTS / "widget_02_interpolation.png", full_page=False)
    print(f"screenshot: {path}")


def _click_option(page, selector: str, text: str) -> None:
    """Click the button of a toggle-buttons widget whose label is ``text``."""
    assert page.evaluate(f"""(() => {{
      const b = Array.from(document.querySelectorAll('{selector} button')).find(b => b.textContent.trim() === {text!r});
      if (!b) return false; b.click(); return true; }})()"""), f"no button {text!r}"
    page.settle(0.5)


# The widget outputs of a page that show pictures, in order (chapter 7: the explorer, then the
# randomisation view; the live explorer's output is removed from the static page).
EXPLORERS = "Array.from(document.querySelectorAll('.cell_output')).filter(o => o.querySelector('.widget-image'))"


def _in_explorer(page, k: int, expression: str):
    """Evaluate ``expression`` (JavaScript using ``box``) on the k-th picture-showing widget output."""
    return page.evaluate(f"(() => {{ const box = {EXPLORERS}[{k}]; return {expression}; }})()")


def _shown(page, k: int) -> list[str]:
    return _in_explorer(page, k, "Array.from(box.querySelectorAll('.widget-image'))"
                                 ".filter(e => e.offsetParent !== null).map(e => e.src)")


def _press_in(page, k: int, text: str) -> None:
    assert _in_explorer(page, k, f"""(() => {{
      const b = Array.from(box.querySelectorAll('.widget-toggle-buttons button')).find(b => b.textContent.trim() === {text!r});
      if (!b) return false; b.click(); return true; }})()"""), f"no button {text!r} in explorer {k}"
    page.settle(0.5)


def test_heatmap_explorer_switches_frames_in_the_static_page(site):
    """Chapter 7: the image dropdown, the method buttons and the threshold slider switch precomputed
    frames without a kernel; the variants share one picture; the randomisation view switches too."""
    page = _load(site, "notebooks/07_explorer")
    assert page.evaluate(f"{EXPLORERS}.length") == 2, "the explorer and the randomisation view"
    assert _in_explorer(page, 0, "box.querySelectorAll('.widget-dropdown select').length") == 1
    assert _in_explorer(page, 0, "box.querySelectorAll('.widget-slider').length") == 1
    assert _in_explorer(page, 0, "box.querySelector('.widget-dropdown select').options.length") >= 4
    _in_explorer(page, 0, "box.scrollIntoView({block: 'start'})")
    start = _shown(page, 0)
    assert len(start) == 2, f"the explorer should show two pictures (image, variants), shows {start!r}"

    # another image: both pictures change
    _in_explorer(page, 0, """(() => { const s = box.querySelector('.widget-dropdown select');
      s.selectedIndex = 1; s.dispatchEvent(new Event('change', {bubbles: true})); })()""")
    page.settle(0.5)
    other_image = _shown(page, 0)
    assert len(other_image) == 2 and not set(other_image) & set(start)

    # Grad-CAM: the variants' picture changes, the image stays; its threshold does nothing
    _press_in(page, 0, "Grad-CAM")
    gradcam = _shown(page, 0)
    assert gradcam[0] == other_image[0] and gradcam[1] != other_image[1]
    readout = _in_explorer(page, 0, "box.querySelector('.widget-readout').textContent.trim()")
    assert re.fullmatch(r"\d\.\d+", readout), f"threshold readout {readout!r}"
    assert _in_explorer(page, 0, "(() => { const h = box.querySelector('.widget-slider .noUi-handle'); "
                                 "h.focus(); return document.activeElement === h; })()")
    page.press("ArrowRight", "ArrowRight", 39)
    page.settle(0.5)
    assert _shown(page, 0) == gradcam
    # Threshold-Grad-CAM: the slider switches the variants' picture
    _press_in(page, 0, "Threshold-Grad-CAM")
    before = _shown(page, 0)
    _in_explorer(page, 0, "box.querySelector('.widget-slider .noUi-handle').focus()")
    page.press("ArrowLeft", "ArrowLeft", 37)
    page.settle(0.5)
    after = _shown(page, 0)
    assert after[0] == before[0] and after != before, "the threshold slider did not switch the map"
    path = page.screenshot(SCREENSHOTS / "widget_07_explorer.png", full_page=False)
    print(f"screenshot: {path}")

    # the randomisation view: one picture (trained above randomised), switched by its method buttons
    view = _shown(page, 1)
    assert len(view) == 1
    _press_in(page, 1, "Grad-CAM")
    assert _shown(page, 1) != view and _shown(page, 0) == after, "the two explorers must not be linked"


@pytest.mark.parametrize("name", [p for p in PAGES if p.startswith("notebooks/")])
def test_chapter_offers_its_notebook_for_download(site, name):
    """The page's download menu links the chapter's .ipynb, served by the site itself."""
    page = _load(site, name)
    href = page.evaluate("(document.querySelector('.dropdown-download-buttons a[href$=\".ipynb\"]') || {}).href")
    assert href and is_local(href) and href.endswith(name.split("/")[-1] + ".ipynb"), f"{name}: no .ipynb download ({href})"
    cells = page.evaluate(f"fetch({href!r}).then(r => r.ok ? r.json() : null).then(nb => nb && nb.cells.length)")
    assert cells, f"{name}: the downloaded notebook is not a notebook"
