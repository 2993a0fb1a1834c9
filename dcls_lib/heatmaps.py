"""Heatmaps as the book shows them: several maps from one backward pass, what Grad-CAM's channel
mean cancels, threshold sweeps, and the figures and explorer frames that put a model's map beside
the image and the human map.

Both of the study's maps (:mod:`dcls_lib.cam`) are functions of the same two tensors, the target
layer's activations ``A`` and the gradients ``dy_c/dA``.  :func:`layer_tensors` computes them once
for a set of images; :class:`LayerTensors` then gives Grad-CAM, Threshold-Grad-CAM at any threshold,
and the diagnostics below, without another forward or backward pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product
from typing import Callable, Mapping, Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import Tensor, nn

from .cam import DEFAULT_THRESHOLD, EXPLAINERS, StudyCAM, explain, weighted_channels
from .metrics import alignment_from_correlations, spearman

METHOD_NAMES = {"gradcam": "Grad-CAM", "threshold-gradcam": "Threshold-Grad-CAM"}
MAP_CMAP = "magma"
HUMAN_CONTOUR = {"levels": [0.5], "colors": "cyan", "linewidths": 0.9}


def method_label(explainer: str, threshold: Optional[float] = None) -> str:
    """'Grad-CAM' or 'Threshold-Grad-CAM (t = 0.3)': how figures and tables name a map."""
    if explainer not in METHOD_NAMES:
        raise ValueError(f"explainer must be one of {EXPLAINERS}, got {explainer!r}")
    if explainer == "threshold-gradcam":
        return f"{METHOD_NAMES[explainer]} (t = {DEFAULT_THRESHOLD if threshold is None else threshold:g})"
    return METHOD_NAMES[explainer]


def channels_last_view(activations: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, H, W, C), the layout of the study's MetaFormers (the sail-sg code).

    Given to :class:`~dcls_lib.cam.StudyCAM` as its ``reshape_transform``, it shows what a Grad-CAM
    that takes dimension 1 for the channels makes of channels-last activations: it averages the
    gradients over (W, C) instead of (H, W), sums over rows instead of channels, and returns a
    (W, C) "map" that is then stretched to the image.
    """
    if activations.dim() != 4:
        raise ValueError(f"expected (B, C, H, W) activations, got shape {tuple(activations.shape)}")
    return activations.permute(0, 2, 3, 1)


@dataclass
class LayerTensors:
    """A target layer's activations and the gradients of each image's target logit, (B, C, h, w) float32."""

    activations: Tensor
    gradients: Tensor

    def __post_init__(self) -> None:
        if self.activations.dim() != 4 or self.gradients.shape != self.activations.shape:
            raise ValueError(
                f"activations and gradients must be (B, C, h, w) of the same shape, got "
                f"{tuple(self.activations.shape)} and {tuple(self.gradients.shape)}"
            )

    def __len__(self) -> int:
        return self.activations.shape[0]

    def maps(self, explainer: str, threshold: float = DEFAULT_THRESHOLD, size: Optional[Sequence[int]] = None) -> Tensor:
        """The study's ``explainer`` maps (B, *size*), as :func:`dcls_lib.cam.explain` computes them."""
        return explain(explainer, self.activations, self.gradients, size, threshold)

    def weighted_channels(self) -> Tensor:
        """``alpha_k A_k`` for every channel k: (B, C, h, w), the terms both maps are made of."""
        return weighted_channels(self.activations, self.gradients)


def layer_tensors(
    model: nn.Module,
    images: Tensor,
    labels,
    *,
    preprocess: Optional[Callable[[Tensor], Tensor]] = None,
    target_layer: Optional[nn.Module] = None,
    reshape_transform: Optional[Callable[[Tensor], Tensor]] = None,
    batch_size: int = 64,
    device=None,
) -> LayerTensors:
    """Activations and gradients at ``model``'s target layer for ``images`` (N, 3, H, W), on the CPU.

    ``labels``: the class whose logit is explained, one per image.  ``preprocess`` turns a batch of
    images, on the device, into the model's input (e.g. ``PixelNormalize``).  The target layer is the
    study's (:func:`dcls_lib.models.cam_target`) unless ``target_layer`` is given; ``reshape_transform``
    is applied to both tensors (:func:`channels_last_view` reproduces the channels-last mistake).
    """
    labels = torch.as_tensor(labels).long().flatten()
    if images.dim() != 4 or labels.numel() != images.shape[0]:
        raise ValueError(f"need images (N, 3, H, W) and one label per image, got {tuple(images.shape)} and {labels.numel()} labels")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if target_layer is None:
        from .models import cam_target

        target = cam_target(model)
        target_layer, reshape_transform = target.layer, reshape_transform or target.reshape_transform
    device = torch.device(device) if device is not None else next(model.parameters()).device
    cam = StudyCAM(model, target_layer, reshape_transform)
    activations, gradients = [], []
    for start in range(0, images.shape[0], batch_size):
        batch = images[start:start + batch_size].to(device).float()
        if preprocess is not None:
            batch = preprocess(batch)
        a, g = cam.layer_tensors(batch, labels[start:start + batch_size].to(device))
        activations.append(a.float().cpu())
        gradients.append(g.float().cpu())
    return LayerTensors(torch.cat(activations), torch.cat(gradients))


def cam_diagnostics(tensors: LayerTensors) -> dict[str, Tensor]:
    """Per image, at the layer's own resolution, what the channel mean does to Grad-CAM:

    - ``gradcam positive``: the fraction of cells where ``mean_k alpha_k A_k > 0``; the others are 0
      after Grad-CAM's ReLU, all tied with each other.
    - ``gradcam constant``: Grad-CAM's map is constant (no positive cell: an all-zero map, whose
      Spearman correlation is undefined; the study's code dropped such images).
    - ``threshold-gradcam positive``: the fraction of cells where some ``alpha_k A_k > 0``.
    - ``cancellation``: ``1 - sum_cells |sum_k alpha_k A_k| / sum_cells sum_k |alpha_k A_k|``: 0 when at
      every cell all channel terms have one sign, 1 when positive and negative terms cancel exactly.
    """
    terms = tensors.weighted_channels()
    net = terms.sum(dim=1)
    gross = terms.abs().sum(dim=1).sum(dim=(1, 2))
    positive = (net > 0).float().mean(dim=(1, 2))
    return {
        "gradcam positive": positive,
        "gradcam constant": (net > 0).flatten(1).sum(dim=1) == 0,
        "threshold-gradcam positive": (terms > 0).any(dim=1).float().mean(dim=(1, 2)),
        "cancellation": 1 - net.abs().sum(dim=(1, 2)) / gross.clamp_min(torch.finfo(gross.dtype).tiny),
    }


def threshold_sweep(
    tensors: LayerTensors, human_maps: Tensor, thresholds: Sequence[float], constant: str = "zero"
) -> dict[str, list[float]]:
    """Threshold-Grad-CAM's alignment score (mean Spearman / human ceiling) at each threshold.

    Returns ``{"threshold": [...], "alignment": [...], "floor fraction": [...]}``, where the floor
    fraction is the mean share of pixels raised to the threshold, every one of them tied with the
    others in the rank correlation.  Maps are resized to the human maps' size.
    """
    if len(thresholds) == 0:
        raise ValueError("thresholds is empty")
    if human_maps.shape[0] != len(tensors):
        raise ValueError(f"{human_maps.shape[0]} human maps for {len(tensors)} images")
    size = tuple(human_maps.shape[-2:])
    out = {"threshold": [], "alignment": [], "floor fraction": []}
    for t in thresholds:
        maps = tensors.maps("threshold-gradcam", float(t), size)
        out["threshold"].append(float(t))
        out["alignment"].append(alignment_from_correlations(spearman(maps, human_maps), constant=constant))
        out["floor fraction"].append(float((maps <= float(t)).float().mean()))
    return out


# --- figures ---------------------------------------------------------------------------------------


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
    from .viz import figure_png

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
    try:
        return figure_png(fig, dpi=dpi, colors=128)
    finally:
        plt.close(fig)


def map_frame(heatmap: Tensor, human_map: Tensor, title: str, rho: float, dpi: int = 72) -> bytes:
    """PNG of a model's map with the human map's contour and its Spearman score (the explorer's right panel)."""
    from .viz import figure_png

    fig, ax = plt.subplots(figsize=(2.35, 2.35))
    show_map(ax, heatmap, human_map, title=f"{title}\n{score_text(rho)}")
    fig.tight_layout()
    try:
        return figure_png(fig, dpi=dpi, colors=64)
    finally:
        plt.close(fig)


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
    switching precomputed frames in the browser (:func:`dcls_lib.widgets.frame_explorer`).

    ``maps[(family, variant), method, t]`` holds the maps (N, H, W) of ``images`` (t is None for
    Grad-CAM, one of ``thresholds`` for Threshold-Grad-CAM), ``scores`` the same keys' Spearman
    correlations (N,).  The family control appears only when there are several families; the slider
    starts at the threshold nearest ``threshold``.
    """
    from .widgets import Control, Panel, frame_explorer

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

