"""The study's two heatmaps, Grad-CAM and Threshold-Grad-CAM, as the study defines them.

From the activations ``A`` (B, C, h, w) of a target layer (or (B, C, L) for time series and
(B, C, d, h, w) for volumes: everything here works over 1, 2 or 3 spatial dimensions) and the gradients ``dy_c/dA`` of each
image's ground-truth logit, with ``alpha_k`` the spatial mean of channel k's gradient:

- **Grad-CAM** (study): ``relu(mean_k alpha_k A_k)``, no normalisation, resized to the input size.
- **Threshold-Grad-CAM**: ``mean_k relu(alpha_k A_k)`` (the ReLU acts on every weighted channel,
  *before* the channel mean), min-max normalised per image, every value below ``threshold``
  (0.3) raised to it, resized to the input size.  A constant map (all zero, say: no channel
  contributes) normalises to 0 and so comes out as the constant ``threshold``; the study's code
  divided by zero there and produced NaN.

``eigen_smooth=True`` does what it does in pytorch-grad-cam's methods: the channel reduction is
replaced by the projection of the weighted channels ``alpha_k A_k`` on their first principal component
(pytorch-grad-cam's ``get_2d_projection``).  The rest of each map is unchanged: Grad-CAM applies its
ReLU to the projection; Threshold-Grad-CAM min-max normalises it and floors it at the threshold, so
its per-channel ReLU is what the projection replaces.  The sign of a principal component is
arbitrary (pytorch-grad-cam leaves it so too): a smoothed map can come out inverted.

What "gradcam" means in this library.  pytorch-grad-cam's ``GradCAM`` sums channels instead of
averaging them and min-max normalises its map (with a 1e-7 guard) before resizing with OpenCV.
Both differences are positive affine maps of the study's map, and bilinear resizing commutes with
them, so its maps rank pixels exactly as the study's do and give the same Spearman score (up to
float rounding); only the values differ.  The library's "gradcam" is the study's definition
(:func:`explain`, :class:`StudyGradCAM`): it is what the paper computed, it keeps the raw scale
(which tells a weak map from a strong one), and it runs on the model's device.  Use
``pytorch_grad_cam.GradCAM`` itself where its normalised [0, 1] maps are wanted for display.

Two ways to compute them:

- :class:`ThresholdGradCAM` and :class:`StudyGradCAM` are pytorch-grad-cam methods (subclasses of
  its ``BaseCAM``): same call as ``GradCAM``, ``cam(input_tensor, targets)`` -> (B, H, W) numpy.
- :class:`StudyCAM` computes either map on the model's device and backpropagates only from the
  logits to the target layer (pytorch-grad-cam backpropagates through the whole network into every
  parameter), which is what the evaluation engine uses.  Both give the same maps (tested).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection
from torch import Tensor, nn

from .validation import check_choice

EXPLAINERS = ("gradcam", "threshold-gradcam")
METHOD_NAMES = {"gradcam": "Grad-CAM", "threshold-gradcam": "Threshold-Grad-CAM"}
DEFAULT_THRESHOLD = 0.3


def method_label(explainer: str, threshold: Optional[float] = None) -> str:
    """'Grad-CAM' or 'Threshold-Grad-CAM (t = 0.3)': how figures and tables name a map."""
    check_choice("explainer", explainer, EXPLAINERS)
    if explainer == "threshold-gradcam":
        return f"{METHOD_NAMES[explainer]} (t = {DEFAULT_THRESHOLD if threshold is None else threshold:g})"
    return METHOD_NAMES[explainer]


def _check_threshold(threshold: float) -> float:
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}")
    return float(threshold)


_SHAPES = {1: "(B, C, L)", 2: "(B, C, H, W)", 3: "(B, C, D, H, W)"}
_RESIZE_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


def _check_layer_tensors(activations: Tensor, gradients: Tensor, size: Optional[Sequence[int]] = None) -> None:
    spatial = activations.dim() - 2 if size is None else len(size)
    if spatial not in _SHAPES or activations.dim() != spatial + 2:
        raise ValueError(
            f"target-layer activations must be {_SHAPES.get(spatial, '(B, C, *spatial)')} like the input; got shape "
            f"{tuple(activations.shape)} (pass a reshape_transform for token or channels-last layers)"
        )
    if gradients.shape != activations.shape:
        raise ValueError(f"gradients {tuple(gradients.shape)} do not match activations {tuple(activations.shape)}")


def weighted_channels(activations: Tensor, gradients: Tensor) -> Tensor:
    """``alpha_k A_k`` for every channel k, ``alpha_k`` the spatial mean of channel k's gradient:
    (B, C, *spatial), the terms both maps are made of."""
    alpha = gradients.mean(dim=tuple(range(2, gradients.dim())), keepdim=True)  # (B, C, 1, ...)
    return alpha * activations


def _spatial_dims(maps: Tensor) -> tuple[int, ...]:
    return tuple(range(1, maps.dim()))  # maps are (B, *spatial)


def resize_maps(maps: Tensor, size: Optional[Sequence[int]]) -> Tensor:
    """Resize (B, *spatial) maps to ``size``: bilinear as torchvision's ``Resize`` does on tensors (with
    antialiasing); linear for time series and trilinear for volumes."""
    if size is None or tuple(maps.shape[1:]) == tuple(size):
        return maps
    mode = _RESIZE_MODES[len(size)]
    return F.interpolate(maps[:, None], size=tuple(size), mode=mode, align_corners=False, antialias=mode == "bilinear")[:, 0]


def minmax_normalize(maps: Tensor) -> Tensor:
    """Per-map min-max scaling of (B, *spatial) maps to [0, 1]; a constant map becomes all zeros instead of 0/0."""
    low = maps.amin(dim=_spatial_dims(maps), keepdim=True)
    span = maps.amax(dim=_spatial_dims(maps), keepdim=True) - low
    flat = span <= 0
    return torch.where(flat, 0.0, (maps - low) / torch.where(flat, 1.0, span))


def _principal_projection(terms: Tensor) -> Tensor:
    """The terms (B, C, *spatial) projected on their first principal component: (B, *spatial)."""
    return torch.from_numpy(get_2d_projection(terms.detach().cpu().numpy())).to(terms.device)


# What tells the two maps apart: how the weighted channels (B, C, *spatial) are reduced to one map
# (B, *spatial), unless eigen_smooth projects them instead, and what is done to that map.
_REDUCE = {
    "gradcam": lambda terms: terms.mean(dim=1),
    "threshold-gradcam": lambda terms: torch.relu(terms).mean(dim=1),
}
_FINISH = {
    "gradcam": lambda cam, threshold: torch.relu(cam),
    "threshold-gradcam": lambda cam, threshold: minmax_normalize(cam).clamp_min(threshold),
}


def explain(
    explainer: str,
    activations: Tensor,
    gradients: Tensor,
    size: Optional[Sequence[int]] = None,
    threshold: float = DEFAULT_THRESHOLD,
    eigen_smooth: bool = False,
) -> Tensor:
    """The map named ``explainer`` from a layer's activations and gradients, resized to ``size``; float32.

    "gradcam": ``relu(mean_k alpha_k A_k)``, unnormalised.  "threshold-gradcam": ``mean_k relu(alpha_k
    A_k)``, min-max per image, floored at ``threshold`` (which Grad-CAM does not use).
    """
    check_choice("explainer", explainer, EXPLAINERS)
    threshold = _check_threshold(threshold)
    _check_layer_tensors(activations, gradients, size)
    terms = weighted_channels(activations.float(), gradients.float())
    cam = _principal_projection(terms) if eigen_smooth else _REDUCE[explainer](terms)
    return resize_maps(_FINISH[explainer](cam, threshold), size)


class _StudyBaseCAM(BaseCAM):
    """BaseCAM with its per-layer ReLU, min-max and OpenCV resize replaced by one of the study's maps.

    With several target layers the per-layer maps (each already the study's map) are averaged.  A
    target layer that runs more than once in a forward pass contributes its first call's activations
    and gradients, as pytorch-grad-cam's ``GradCAM`` does.  Inputs may be 1-D (B, C, L), images or
    volumes (B, C, D, H, W); the maps have the input's spatial size.
    """

    explainer: str

    def __init__(
        self,
        model: nn.Module,
        target_layers: Sequence[nn.Module],
        reshape_transform: Optional[Callable] = None,
        threshold: float = DEFAULT_THRESHOLD,
    ) -> None:
        if isinstance(target_layers, nn.Module) or not target_layers:
            raise ValueError("target_layers must be a non-empty list of modules, as in pytorch-grad-cam")
        self.threshold = _check_threshold(threshold)
        super().__init__(model, list(target_layers), reshape_transform)

    def __del__(self):
        if hasattr(self, "activations_and_grads"):  # not when the constructor refused its arguments
            super().__del__()

    def __exit__(self, exc_type, exc_value, exc_tb) -> bool:
        """Release the hooks; unlike BaseCAM, let every exception through (it swallows IndexError)."""
        self.activations_and_grads.release()
        return False

    def forward(self, input_tensor: Tensor, targets, eigen_smooth: bool = False) -> np.ndarray:
        if targets is not None and len(targets) != input_tensor.shape[0]:
            raise ValueError(
                f"targets must have one entry per image: got {len(targets)} for a batch of {input_tensor.shape[0]}"
            )
        if not torch.is_grad_enabled():
            raise RuntimeError("Grad-CAM needs gradients: do not call it under torch.no_grad()")
        return super().forward(input_tensor, targets, eigen_smooth)

    def compute_cam_per_layer(self, input_tensor: Tensor, targets, eigen_smooth: bool) -> list:
        size = tuple(input_tensor.shape[2:])
        store = self.activations_and_grads
        if len(store.gradients) < len(self.target_layers) or len(store.gradients) != len(store.activations):
            raise RuntimeError("no gradient reached a target layer: does the model's output depend on it?")
        # calls are recorded in forward order (gradients too, once backward is done): the first ones, as GradCAM
        first = list(zip(store.activations, store.gradients))[: len(self.target_layers)]
        return [explain(self.explainer, a, g, size, self.threshold, eigen_smooth).cpu().numpy()[:, None] for a, g in first]

    def aggregate_multi_layers(self, cam_per_target_layer: list) -> np.ndarray:
        return np.mean(np.concatenate(cam_per_target_layer, axis=1), axis=1).astype(np.float32)


class ThresholdGradCAM(_StudyBaseCAM):
    """Threshold-Grad-CAM as a pytorch-grad-cam method: ``cam(input_tensor, targets)`` -> (B, H, W) float32.

    ``ThresholdGradCAM(model, target_layers, reshape_transform=None, threshold=0.3)``.  ``targets``
    needs one entry per image (e.g. ``ClassifierOutputTarget(label)``, the study's target logit).
    Use it as a context manager so that its hooks are released.
    """

    explainer = "threshold-gradcam"


class StudyGradCAM(_StudyBaseCAM):
    """The study's plain Grad-CAM (unnormalised ``relu(mean_k alpha_k A_k)``) as a pytorch-grad-cam method."""

    explainer = "gradcam"

    def __init__(self, model: nn.Module, target_layers: Sequence[nn.Module], reshape_transform: Optional[Callable] = None):
        super().__init__(model, target_layers, reshape_transform)


class StudyCAM:
    """Either of the study's maps for a batch, on the model's device, with backward stopped at the target layer.

    ``StudyCAM(model, target_layer, reshape_transform=None, explainer="threshold-gradcam",
    threshold=0.3)(images, labels, size=None)`` -> (B, H, W) float32 tensor on the images' device,
    the map of each image's ``labels`` logit.  The model is put in eval mode.  During a call the parameters are
    frozen and the target layer's output is swapped for a detached copy that requires gradients, so
    the forward pass up to the target layer keeps no graph and the backward pass only runs through
    the head; the gradients at the target layer are the same as a full backward gives.  The
    parameters' ``requires_grad`` flags are restored afterwards.  ``autocast`` (mixed precision)
    applies if the caller enables it; maps are computed in float32.
    """

    def __init__(
        self,
        model: nn.Module,
        target_layer: nn.Module,
        reshape_transform: Optional[Callable] = None,
        explainer: str = "threshold-gradcam",
        threshold: float = DEFAULT_THRESHOLD,
    ) -> None:
        if explainer not in EXPLAINERS:
            raise ValueError(f"explainer must be one of {EXPLAINERS}, got {explainer!r}")
        if not isinstance(target_layer, nn.Module):
            raise TypeError(f"target_layer must be one nn.Module, got {type(target_layer).__name__}")
        if not any(m is target_layer for m in model.modules()):
            raise ValueError("target_layer is not a submodule of model")
        self.model = model.eval()
        self.target_layer = target_layer
        self.reshape_transform = reshape_transform
        self.explainer = explainer
        self.threshold = _check_threshold(threshold)
        self._activation: Optional[Tensor] = None

    def _capture(self, module: nn.Module, inputs, output):
        if not isinstance(output, Tensor):
            raise TypeError(f"the target layer must return a tensor, got {type(output).__name__}")
        self._activation = output.detach().requires_grad_(True)
        return self._activation.clone()

    def __call__(self, images: Tensor, labels: Tensor, size: Optional[Sequence[int]] = None) -> Tensor:
        """Maps (B, H, W) of the ``labels`` logits, resized to ``size`` (default: the images' size)."""
        activations, gradients = self.layer_tensors(images, labels)
        size = tuple(images.shape[2:]) if size is None else tuple(size)
        return explain(self.explainer, activations, gradients, size, self.threshold)

    def layer_tensors(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """The target layer's activations and the gradients of the ``labels`` logits there, after
        ``reshape_transform``: what both maps are computed from.  Keep them to compute several maps
        (both methods, many thresholds) from one backward pass."""
        labels = torch.as_tensor(labels, device=images.device).long().flatten()
        if labels.numel() != images.shape[0]:
            raise ValueError(f"labels must have one entry per image: got {labels.numel()} for {images.shape[0]} images")
        flags = [(p, p.requires_grad) for p in self.model.parameters()]
        handle = self.target_layer.register_forward_hook(self._capture)
        try:
            for p, _ in flags:
                p.requires_grad_(False)
            with torch.enable_grad():
                logits = self.model(images)
                if self._activation is None:
                    raise RuntimeError("the target layer did not run during the forward pass")
                if logits.dim() != 2:
                    raise ValueError(f"the model must return (B, classes) logits, got shape {tuple(logits.shape)}")
                if int(labels.max()) >= logits.shape[1] or int(labels.min()) < 0:
                    raise ValueError(f"labels must be in [0, {logits.shape[1]}), got {labels.min()}..{labels.max()}")
                target = logits.gather(1, labels[:, None]).sum()
                (gradients,) = torch.autograd.grad(target, self._activation)
        finally:
            handle.remove()
            for p, flag in flags:
                p.requires_grad_(flag)
        activations, self._activation = self._activation.detach(), None
        if self.reshape_transform is not None:
            activations, gradients = self.reshape_transform(activations), self.reshape_transform(gradients)
        return activations, gradients
