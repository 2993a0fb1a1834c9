"""Chapter 2's tap player: one tap moved along a row, for every interpolation and width.

Each frame is :func:`~dcls_lib.chapters.viz.plot_tap_frame` for one interpolation, one tap column
and one ``σ``; :func:`~dcls_lib.chapters.widgets.frame_explorer` switches them in the browser, so
the player works in the static book and in a live notebook alike.  An interpolation without a
width (bilinear) draws one frame per column whatever ``σ`` shows, and frames that come out
identical are stored once in the page.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

from torch import Tensor

from ..layers import get_interpolation
from .tap_gradient import loss_landscape
from .viz import figure_png, label_figure, plot_tap_frame
from .widgets import Control, Panel, frame_explorer, page_weight_kb

# The interpolations chapter 2 explains, by the label of their button.
INTERPOLATIONS = {
    "bilinear (v1)": "v1",
    "triangle (max)": "max",
    "Gaussian (gauss)": "gauss",
    "published ConvNeXt (v0)": "v0",
}
# s as a function of σ, per interpolation with a width (see the chapter's table).
WIDTH_OFFSET = {"max": 1.0, "gauss": 0.27}


def frame_title(version: str, sigma: Optional[float]) -> str:
    """What a frame shows: the profile and, where it has one, its width."""
    if sigma is None:
        return f"{version}: bilinear, no width (σ has no effect)"
    name = "triangle" if version == "max" else "Gaussian"
    width = abs(sigma) + WIDTH_OFFSET[version]
    return f"{version}: {name}, σ = {sigma:g}, width s = {width:g}"


def tap_series(
    version: str,
    size: int,
    target: Tensor,
    columns: Tensor,
    positions: Sequence[float],
    sigma: Optional[float],
    label: str,
    dpi: int = 72,
    colors: int = 64,
) -> list[bytes]:
    """One PNG frame per tap position for one interpolation and width; the loss curves are
    sampled at ``columns``."""
    landscape = (columns, *loss_landscape(version, size, columns, target, sigma=sigma))
    series = []
    for column in positions:
        fig = plot_tap_frame(version, size, float(column), target, landscape, sigma=sigma,
                             derivative_limit=1.0, title=frame_title(version, sigma))
        label_figure(fig, label)
        series.append(figure_png(fig, dpi=dpi, colors=colors, close=True))
    return series


def tap_frames(
    size: int,
    target: Tensor,
    columns: Tensor,
    positions: Sequence[float],
    sigmas: Sequence[float],
    label: str,
    interpolations: Mapping[str, str] = INTERPOLATIONS,
    dpi: int = 72,
    colors: int = 64,
) -> dict[tuple[int, int, int], bytes]:
    """PNG frames keyed by (interpolation, position, σ) indices, as :class:`Panel` takes them.
    An interpolation without a width is drawn once per position and shown for every σ."""
    if not positions or not sigmas:
        raise ValueError("tap_frames needs at least one position and one σ")
    frames = {}
    for i, version in enumerate(interpolations.values()):
        if get_interpolation(version).has_sigma:
            series = [tap_series(version, size, target, columns, positions, float(s), label, dpi, colors)
                      for s in sigmas]
        else:
            series = [tap_series(version, size, target, columns, positions, None, label, dpi, colors)] * len(sigmas)
        for k, pngs in enumerate(series):
            for j, png in enumerate(pngs):
                frames[i, j, k] = png
    return frames


def tap_player(
    size: int,
    target: Tensor,
    columns: Tensor,
    positions: Sequence[float],
    sigmas: Sequence[float],
    label: str,
    initial_position: float = 0.0,
    initial_sigma: Optional[float] = None,
    interpolations: Mapping[str, str] = INTERPOLATIONS,
    dpi: int = 72,
):
    """Buttons for the interpolation, a slider for the tap's column and one for ``σ``, showing
    the frames of :func:`tap_frames`; the caption states how many frames the page holds and
    their weight.  Returns :func:`frame_explorer`'s box."""
    if initial_sigma is not None and initial_sigma not in sigmas:
        raise ValueError(f"initial_sigma {initial_sigma} is not one of the σ {list(sigmas)}")
    sigma_start = 0 if initial_sigma is None else list(sigmas).index(initial_sigma)
    start = min(range(len(positions)), key=lambda j: abs(positions[j] - initial_position), default=0)
    frames = tap_frames(size, target, columns, positions, sigmas, label, interpolations, dpi)
    controls = [
        Control("interpolation", list(interpolations), "toggle"),
        Control("tap column", [f"{p:+.2f}" for p in positions], "slider", start),
        Control("σ", [f"{s:g}" for s in sigmas], "slider", sigma_start),
    ]
    panel = Panel([c.name for c in controls], frames)
    distinct = len(set(frames.values()))
    caption = (f"{distinct} distinct frames, {page_weight_kb(frames):.0f} KB in the page; "
               f"σ moves the triangle and the Gaussian only. {label}.")
    return frame_explorer(controls, [panel], caption=caption)
