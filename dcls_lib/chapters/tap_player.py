"""Chapter 2's tap player: one tap moved along a row, for every interpolation and width.

Each frame is :func:`~dcls_lib.chapters.viz.plot_tap_frame` for one interpolation, one tap column
and one ``σ``; :func:`~dcls_lib.chapters.widgets.frame_explorer` switches them in the browser, so
the player works in the static book and in a live notebook alike.  An interpolation without a
width (bilinear) draws one frame per column whatever ``σ`` shows, and frames that come out
identical are stored once in the page.
"""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True)
class TapScene:
    """What every frame of the player shares: a ``size``-wide kernel fitted to ``target``, the loss
    sampled at ``columns``, the tap ``positions`` drawn, the figures' ``label`` and PNG settings."""

    size: int
    target: Tensor
    columns: Tensor
    positions: Sequence[float]
    label: str
    dpi: int = 72
    colors: int = 64


def tap_series(scene: TapScene, version: str, sigma: Optional[float]) -> list[bytes]:
    """One PNG frame per tap position for one interpolation and width."""
    landscape = (scene.columns, *loss_landscape(version, scene.size, scene.columns, scene.target, sigma=sigma))
    series = []
    for column in scene.positions:
        fig = plot_tap_frame(version, scene.size, float(column), scene.target, landscape, sigma=sigma,
                             derivative_limit=1.0, title=frame_title(version, sigma))
        label_figure(fig, scene.label)
        series.append(figure_png(fig, dpi=scene.dpi, colors=scene.colors, close=True))
    return series


def tap_frames(
    scene: TapScene, sigmas: Sequence[float], interpolations: Mapping[str, str] = INTERPOLATIONS
) -> dict[tuple[int, int, int], bytes]:
    """PNG frames keyed by (interpolation, position, σ) indices, as :class:`Panel` takes them.
    An interpolation without a width is drawn once per position and shown for every σ."""
    if not scene.positions or not sigmas:
        raise ValueError("tap_frames needs at least one position and one σ")
    frames = {}
    for i, version in enumerate(interpolations.values()):
        if get_interpolation(version).has_sigma:
            series = [tap_series(scene, version, float(s)) for s in sigmas]
        else:
            series = [tap_series(scene, version, None)] * len(sigmas)
        for k, pngs in enumerate(series):
            for j, png in enumerate(pngs):
                frames[i, j, k] = png
    return frames


def tap_player(
    scene: TapScene,
    sigmas: Sequence[float],
    initial_position: float = 0.0,
    initial_sigma: Optional[float] = None,
    interpolations: Mapping[str, str] = INTERPOLATIONS,
):
    """Buttons for the interpolation, a slider for the tap's column and one for ``σ``, showing
    the frames of :func:`tap_frames`; the caption states how many frames the page holds and
    their weight.  Returns :func:`frame_explorer`'s box."""
    if initial_sigma is not None and initial_sigma not in sigmas:
        raise ValueError(f"initial_sigma {initial_sigma} is not one of the σ {list(sigmas)}")
    sigma_start = 0 if initial_sigma is None else list(sigmas).index(initial_sigma)
    positions = scene.positions
    start = min(range(len(positions)), key=lambda j: abs(positions[j] - initial_position), default=0)
    frames = tap_frames(scene, sigmas, interpolations)
    controls = [
        Control("interpolation", list(interpolations), "toggle"),
        Control("tap column", [f"{p:+.2f}" for p in positions], "slider", start),
        Control("σ", [f"{s:g}" for s in sigmas], "slider", sigma_start),
    ]
    panel = Panel([c.name for c in controls], frames)
    distinct = len(set(frames.values()))
    caption = (f"{distinct} distinct frames, {page_weight_kb(frames):.0f} KB in the page; "
               f"σ moves the triangle and the Gaussian only. {scene.label}.")
    return frame_explorer(controls, [panel], caption=caption)
