"""Heatmaps from one backward pass: several maps, what Grad-CAM's channel mean cancels, threshold
sweeps.  The figures and explorer frames that show them are in :mod:`dcls_lib.chapters.heatmap_plots`.

Both of the study's maps (:mod:`dcls_lib.cam`) are functions of the same two tensors, the target
layer's activations ``A`` and the gradients ``dy_c/dA``.  :func:`layer_tensors` computes them once
for a set of images; :class:`LayerTensors` then gives Grad-CAM, Threshold-Grad-CAM at any threshold,
and the diagnostics below, without another forward or backward pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from .cam import DEFAULT_THRESHOLD, StudyCAM, explain, weighted_channels
from .metrics import alignment_from_correlations, spearman

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
