"""The figures and explorer frames that draw a model's map over its image, with the human map's
outline (chapters 5 to 7); the maps themselves come from :mod:`dcls_lib.heatmaps`.

Every map is drawn as grad-cam's usual overlay: the image, dimmed, under the map as a translucent
colour layer on the map's own scale (its minimum to its maximum), and the human map's half-maximum
contour in white: where the model looks against where the evidence is.
"""

from __future__ import annotations

import textwrap
from typing import Mapping, Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np
from torch import Tensor

from ..cam import DEFAULT_THRESHOLD, METHOD_NAMES  # noqa: F401 (chapter 6's plots import it from here)
from .viz import figure_png

MAP_CMAP = "jet"
MAP_ALPHA = 0.5
HUMAN_CONTOUR = {"levels": [0.5], "colors": "white", "linewidths": 1.3}
PANEL_INCHES = 2.6  # one overlay in an explorer frame: 187 px at the frames' 72 dpi
FRAME_FONT = 11  # titles in explorer frames, which the page shows at their own size


def _hwc(image: Tensor) -> np.ndarray:
    image = image.detach().float().cpu()
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) image, got shape {tuple(image.shape)}")
    return image.permute(1, 2, 0).clamp(0, 1).numpy()


def score_text(rho: float) -> str:
    """'ρ = +0.42', or 'constant map' where the Spearman correlation is undefined."""
    return "constant map" if not np.isfinite(rho) else f"ρ = {rho:+.2f}"


def show_overlay(ax: plt.Axes, image: Tensor, heatmap: Optional[Tensor] = None,
                 human_map: Optional[Tensor] = None, title: Optional[str] = None, fontsize: float = 9) -> None:
    """``image`` with ``heatmap`` over it as a translucent colour layer on the map's own scale,
    and ``human_map``'s half-maximum contour; either may be left out."""
    picture = _hwc(image)
    if heatmap is not None:
        m = heatmap.detach().float().cpu().numpy()
        if m.shape != picture.shape[:2]:
            raise ValueError(f"a map of shape {m.shape} cannot be drawn over an image of {picture.shape[:2]}")
        low, high = float(m.min()), float(m.max())
        ax.imshow(0.35 + 0.65 * picture.mean(axis=2), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.imshow(m, cmap=MAP_CMAP, vmin=low, vmax=high if high > low else low + 1, alpha=MAP_ALPHA,
                  interpolation="nearest")
    else:
        ax.imshow(picture, interpolation="nearest")
    if human_map is not None:
        ax.contour(human_map.detach().float().cpu().numpy(), **HUMAN_CONTOUR)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=fontsize)


def plot_heatmap_grid(
    images: Tensor,
    human_maps: Tensor,
    rows: Mapping[str, Tensor],
    scores: Optional[Mapping[str, Sequence[float]]] = None,
    column_titles: Optional[Sequence[str]] = None,
    panel_size: float = 2.0,
) -> plt.Figure:
    """Images (top row), their human maps, then one row per entry of ``rows`` (name -> maps (N, H, W)),
    every map drawn over its image with the human map's outline and titled with its Spearman
    correlation with the human map (``scores[name][i]``)."""
    n = images.shape[0]
    if human_maps.shape[0] != n or any(m.shape[0] != n for m in rows.values()):
        raise ValueError("images, human maps and every row of maps need the same number of images")
    if column_titles is not None and len(column_titles) != n:
        raise ValueError(f"{len(column_titles)} column titles for {n} images")
    count = 2 + len(rows)
    fig, axes = plt.subplots(count, n, figsize=(panel_size * n + 1.4, (panel_size + 0.1) * count), squeeze=False)
    for i in range(n):
        show_overlay(axes[0, i], images[i], title=None if column_titles is None else column_titles[i])
        show_overlay(axes[1, i], images[i], human_maps[i])
        for r, (name, maps) in enumerate(rows.items(), start=2):
            rho = None if scores is None else float(scores[name][i])
            show_overlay(axes[r, i], images[i], maps[i], human_maps[i], None if rho is None else score_text(rho))
    for r, name in enumerate(["image", "human map", *rows]):
        axes[r, 0].set_ylabel(name, fontsize=9, rotation=0, ha="right", va="center", wrap=True)
    fig.tight_layout(h_pad=0.5, w_pad=0.3)
    return fig


def plot_threshold_sweep(
    sweeps: Mapping[str, Mapping[str, Sequence[float]]],
    gradcam: Optional[Mapping[str, float]] = None,
    study_threshold: float = DEFAULT_THRESHOLD,
) -> plt.Figure:
    """Alignment (%) against the threshold for each model (``sweeps[name]`` from :func:`threshold_sweep`),
    with each model's plain Grad-CAM score as a dotted line, and the share of pixels on the floor."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4))
    for k, (name, sweep) in enumerate(sweeps.items()):
        colour = f"C{k}"
        left.plot(sweep["threshold"], np.multiply(sweep["alignment"], 100), "o-", color=colour, label=name, markersize=3)
        if gradcam is not None and name in gradcam:
            left.axhline(100 * gradcam[name], color=colour, linestyle=":", linewidth=1)
        right.plot(sweep["threshold"], np.multiply(sweep["floor fraction"], 100), "o-", color=colour, markersize=3)
    for ax in (left, right):
        ax.axvline(study_threshold, color="0.5", linewidth=0.8)
        ax.set_xlabel("threshold t")
    left.set_ylabel("alignment (% of human ceiling)")
    left.set_title("Threshold-Grad-CAM (dotted: Grad-CAM)", fontsize=9)
    right.set_ylabel("pixels on the floor (%)")
    right.set_title("pixels tied at the floor", fontsize=9)
    left.legend(fontsize=7)
    fig.tight_layout()
    return fig


# --- explorer frames --------------------------------------------------------------------------------


def threshold_labels(thresholds: Sequence[float]) -> list[str]:
    """Each threshold with as many decimals as the finest of them needs (steps of 0.05: '0.10',
    '0.15'), at least one: the slider's readout and the frames' titles print the same text."""
    values = [float(t) for t in thresholds]
    decimals = next((d for d in range(1, 7) if all(abs(round(t, d) - t) < 1e-9 for t in values)), 6)
    return [f"{t:.{decimals}f}" for t in values]


def image_frame(image: Tensor, human_map: Optional[Tensor], title: str = "", dpi: int = 72) -> bytes:
    """PNG of an image beside its human map drawn over it (the explorer's left panel); an image
    without a human map (one the reader loaded) is drawn alone."""
    count = 1 if human_map is None else 2
    fig, axes = plt.subplots(1, count, figsize=(PANEL_INCHES * count, PANEL_INCHES + 0.35), squeeze=False)
    show_overlay(axes[0, 0], image, title=textwrap.fill(title or "image", 28), fontsize=FRAME_FONT)
    if human_map is not None:
        show_overlay(axes[0, 1], image, human_map, title="human map", fontsize=FRAME_FONT)
    fig.tight_layout()
    return figure_png(fig, dpi=dpi, colors=128, close=True)


def overlay_frame(image: Tensor, human_map: Optional[Tensor], panels: Mapping[str, Mapping[str, tuple]],
                  title: str = "", dpi: int = 72) -> bytes:
    """PNG of maps drawn over ``image``: ``panels[row][column] = (map (H, W), panel title)``, rows
    labelled on the left when there are several, the human map's outline on every map."""
    rows = list(panels)
    columns = list(dict.fromkeys(c for row in panels.values() for c in row))
    if not rows or not columns:
        raise ValueError("overlay_frame needs at least one map")
    fig, axes = plt.subplots(len(rows), len(columns), squeeze=False, layout="constrained",
                             figsize=(PANEL_INCHES * len(columns), (PANEL_INCHES + 0.35) * len(rows) + 0.3 * bool(title)))
    for r, row in enumerate(rows):
        for c, column in enumerate(columns):
            ax = axes[r, c]
            if column not in panels[row]:
                ax.set_visible(False)
                continue
            heatmap, text = panels[row][column]
            show_overlay(ax, image, heatmap, human_map, text, fontsize=FRAME_FONT)
        if len(rows) > 1:
            axes[r, 0].set_ylabel(row, fontsize=FRAME_FONT + 1)
    if title:
        fig.suptitle(title, fontsize=FRAME_FONT + 1)
    return figure_png(fig, dpi=dpi, colors=64, close=True)
