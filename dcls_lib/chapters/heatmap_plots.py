"""The figures and explorer frames that put a model's map beside the image and the human map
(chapters 5 to 7); the maps themselves come from :mod:`dcls_lib.heatmaps`."""

from __future__ import annotations

from itertools import product
from typing import Mapping, Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np
from torch import Tensor

from ..cam import DEFAULT_THRESHOLD, METHOD_NAMES, method_label
from .viz import figure_png
from .widgets import Control, Panel, frame_explorer

MAP_CMAP = "magma"
HUMAN_CONTOUR = {"levels": [0.5], "colors": "cyan", "linewidths": 0.9}


def _hwc(image: Tensor) -> np.ndarray:
    image = image.detach().float().cpu()
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) image, got shape {tuple(image.shape)}")
    return image.permute(1, 2, 0).clamp(0, 1).numpy()


def score_text(rho: float) -> str:
    """'ρ = +0.42', or 'constant map' where the Spearman correlation is undefined."""
    return "constant map" if not np.isfinite(rho) else f"ρ = {rho:+.2f}"


def show_map(ax: plt.Axes, heatmap: Tensor, human_map: Optional[Tensor] = None, title: Optional[str] = None) -> None:
    """A model's map on its own colour scale (its minimum to its maximum), with the human map's
    half-maximum contour in cyan: where the model looks against where the evidence is."""
    m = heatmap.detach().float().cpu().numpy()
    low, high = float(m.min()), float(m.max())
    ax.imshow(m, cmap=MAP_CMAP, vmin=low, vmax=high if high > low else low + 1, interpolation="nearest")
    if human_map is not None:
        ax.contour(human_map.detach().float().cpu().numpy(), **HUMAN_CONTOUR)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def plot_heatmap_grid(
    images: Tensor,
    human_maps: Tensor,
    rows: Mapping[str, Tensor],
    scores: Optional[Mapping[str, Sequence[float]]] = None,
    column_titles: Optional[Sequence[str]] = None,
    panel_size: float = 1.45,
) -> plt.Figure:
    """Images (top row), human maps, then one row per entry of ``rows`` (name -> maps (N, H, W)),
    each map titled with its Spearman correlation with the human map (``scores[name][i]``)."""
    n = images.shape[0]
    if human_maps.shape[0] != n or any(m.shape[0] != n for m in rows.values()):
        raise ValueError("images, human maps and every row of maps need the same number of images")
    if column_titles is not None and len(column_titles) != n:
        raise ValueError(f"{len(column_titles)} column titles for {n} images")
    count = 2 + len(rows)
    fig, axes = plt.subplots(count, n, figsize=(panel_size * n + 1.2, panel_size * count), squeeze=False)
    for i in range(n):
        axes[0, i].imshow(_hwc(images[i]), interpolation="nearest")
        if column_titles is not None:
            axes[0, i].set_title(column_titles[i], fontsize=7)
        axes[1, i].imshow(human_maps[i].cpu().numpy(), cmap=MAP_CMAP, vmin=0, vmax=1, interpolation="nearest")
        for r, (name, maps) in enumerate(rows.items(), start=2):
            rho = None if scores is None else float(scores[name][i])
            show_map(axes[r, i], maps[i], human_maps[i], title=None if rho is None else score_text(rho))
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for r, name in enumerate(["image", "human map", *rows]):
        axes[r, 0].set_ylabel(name, fontsize=8, rotation=0, ha="right", va="center", wrap=True)
    fig.tight_layout(h_pad=0.4, w_pad=0.3)
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


def image_frame(image: Tensor, human_map: Tensor, title: str = "", dpi: int = 72) -> bytes:
    """PNG of an image beside its human map (the explorer's left panel)."""
    fig, axes = plt.subplots(1, 2, figsize=(4.2, 2.35))
    axes[0].imshow(_hwc(image), interpolation="nearest")
    axes[0].set_title(title or "image", fontsize=8)
    axes[1].imshow(human_map.cpu().numpy(), cmap=MAP_CMAP, vmin=0, vmax=1, interpolation="nearest")
    axes[1].contour(human_map.cpu().numpy(), **HUMAN_CONTOUR)
    axes[1].set_title("human map (cyan: half maximum)", fontsize=8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return figure_png(fig, dpi=dpi, colors=128, close=True)


def map_frame(heatmap: Tensor, human_map: Tensor, title: str, rho: float, dpi: int = 72) -> bytes:
    """PNG of a model's map with the human map's contour and its Spearman score (the explorer's right panel)."""
    fig, ax = plt.subplots(figsize=(2.35, 2.35))
    show_map(ax, heatmap, human_map, title=f"{title}\n{score_text(rho)}")
    fig.tight_layout()
    return figure_png(fig, dpi=dpi, colors=64, close=True)


def heatmap_explorer(
    images: Tensor,
    human_maps: Tensor,
    image_titles: Sequence[str],
    maps: Mapping[tuple, Tensor],
    scores: Mapping[tuple, Tensor],
    thresholds: Sequence[float],
    threshold: float = DEFAULT_THRESHOLD,
    caption: str = "",
):
    """Chapter 7's explorer: controls for the image, the model, the method and the threshold, each
    switching precomputed frames in the browser (:func:`dcls_lib.chapters.widgets.frame_explorer`).

    ``maps[(family, variant), method, t]`` holds the maps (N, H, W) of ``images`` (t is None for
    Grad-CAM, one of ``thresholds`` for Threshold-Grad-CAM), ``scores`` the same keys' Spearman
    correlations (N,).  The family control appears only when there are several families; the slider
    starts at the threshold nearest ``threshold``.
    """
    thresholds = [float(t) for t in thresholds]
    if not thresholds:
        raise ValueError("the explorer needs at least one threshold")
    models = list(dict.fromkeys(key[0] for key in maps))
    families = list(dict.fromkeys(f for f, _ in models))
    variants = list(dict.fromkeys(v for _, v in models))
    n = len(images)
    if len(image_titles) != n or len(human_maps) != n:
        raise ValueError(f"{n} images need {n} human maps and titles, got {len(human_maps)} and {len(image_titles)}")
    pairs = list(product(families, variants))
    needed = [(m, "gradcam", None) for m in pairs] + [(m, "threshold-gradcam", t) for m in pairs for t in thresholds]
    missing = [key for key in needed if key not in maps or key not in scores]
    if missing:
        raise ValueError(f"no maps or scores for {len(missing)} of the explorer's combinations, e.g. {missing[0]}")

    model_controls = ["family", "variant"] if len(families) > 1 else ["variant"]
    start = min(range(len(thresholds)), key=lambda i: abs(thresholds[i] - threshold))
    controls = [Control("image", list(image_titles))]
    if len(families) > 1:
        controls.append(Control("family", families))
    controls += [Control("variant", variants, kind="toggle"),
                 Control("method", [METHOD_NAMES["gradcam"], METHOD_NAMES["threshold-gradcam"]], kind="toggle", initial=1),
                 Control("threshold", [f"{t:.1f}" for t in thresholds], kind="slider", initial=start)]

    left = Panel(["image"], {(k,): image_frame(images[k], human_maps[k], image_titles[k]) for k in range(n)})
    frames = {}
    for k, (fi, family), (vi, variant) in product(range(n), enumerate(families), enumerate(variants)):
        model = (family, variant)
        plain = map_frame(maps[model, "gradcam", None][k], human_maps[k], f"{family} {variant}, {METHOD_NAMES['gradcam']}",
                          float(scores[model, "gradcam", None][k]))
        for ti, t in enumerate(thresholds):
            floored = map_frame(maps[model, "threshold-gradcam", t][k], human_maps[k],
                                f"{family} {variant}, {method_label('threshold-gradcam', t)}",
                                float(scores[model, "threshold-gradcam", t][k]))
            model_index = (fi, vi) if len(families) > 1 else (vi,)
            frames[(k, *model_index, 0, ti)] = plain  # Grad-CAM has no threshold: the same frame
            frames[(k, *model_index, 1, ti)] = floored
    right = Panel(["image", *model_controls, "method", "threshold"], frames)
    distinct = set(frames.values()) | set(left.frames.values())
    note = f"{len(distinct)} precomputed frames ({sum(map(len, distinct)) // 1024} KiB)."
    return frame_explorer(controls, [left, right], caption=f"{note} {caption}".strip())

