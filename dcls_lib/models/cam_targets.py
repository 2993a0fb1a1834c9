"""Where Grad-CAM looks in each model, and how images go in, so the study never hard-codes either.

Target layers (the study's choices, found in timm's modules):
- ResNet: the output of ``layer4``.
- ConvNeXt: the output of the last stage, before global pooling and the head's norm.
- CAFormer / ConvFormer (timm ``MetaFormer``): the output of the last stage, before pooling.  timm's
  MetaFormer stages return (B, C, H, W) even for attention stages (they flatten to tokens inside the
  stage and fold back), so no reshape is needed; the study's sail-sg models returned channels-last
  (B, H, W, C) there and needed one.
- FastViT: the output of the final ``conv_exp`` block (timm's ``final_conv``), before pooling.

All four give (B, C, H, W) activations, as pytorch-grad-cam expects.  ``reshape_transform`` stays in
``CamTarget`` for models whose target is not laid out that way (``channels_last_to_nchw``).

Inputs: ``input_transform`` resizes the whole image to ``image_size`` x ``image_size`` (no centre crop,
so every pixel of the map lines up with the same pixel of the full image and of the human map) and
normalises with the model's mean and std from its timm ``pretrained_cfg``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..transforms import IMAGENET_MEAN, IMAGENET_STD, PixelNormalize
from ..validation import check_positive_int
from .families import detect_family


def channels_last_to_nchw(activations: Tensor) -> Tensor:
    """(B, H, W, C) -> (B, C, H, W), for targets that are channels-last."""
    if activations.dim() != 4:
        raise ValueError(f"expected (B, H, W, C) activations, got shape {tuple(activations.shape)}")
    return activations.permute(0, 3, 1, 2)


@dataclass(frozen=True)
class CamTarget:
    """The layer whose activations Grad-CAM weighs, its name in the model, and how to make them (B, C, H, W)."""

    name: str
    layer: nn.Module
    reshape_transform: Optional[Callable[[Tensor], Tensor]] = None


def cam_target(model: nn.Module) -> CamTarget:
    """The study's Grad-CAM target of ``model`` (any member of the four families, baseline or DCLS)."""
    name = detect_family(model).cam_layer(model)
    return CamTarget(name, model.get_submodule(name), None)


class ImageTransform:
    """Full image -> normalised float tensor of ``size`` x ``size``; PIL images, uint8 or float tensors.

    Accepts a PIL image, a (C, H, W) or (B, C, H, W) tensor (uint8 in 0..255 or float in 0..1) or an
    (H, W, C) uint8 numpy array.  PIL images and arrays go through the same tensor path, so a picture
    gives the same result whatever form it comes in.  Bicubic resizing uses antialiasing and is clamped
    to the input range, as PIL's is.
    """

    def __init__(
        self,
        size: int = 224,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        interpolation: str = "bicubic",
    ):
        check_positive_int(image_size=size)
        if interpolation not in ("bicubic", "bilinear"):
            raise ValueError(f"interpolation must be 'bicubic' or 'bilinear', got {interpolation!r}")
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need 3 values (RGB), got {mean!r} and {std!r}")
        self.size = size
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.interpolation = interpolation
        self.normalize = PixelNormalize(self.mean, self.std)

    def __repr__(self) -> str:
        return (
            f"ImageTransform(size={self.size}, mean={self.mean}, std={self.std}, "
            f"interpolation={self.interpolation!r}, crop=None)"
        )

    def _as_float_batch(self, image) -> tuple[Tensor, bool]:
        from PIL import Image

        if isinstance(image, Image.Image):
            image = np.asarray(image.convert("RGB"))
        if isinstance(image, np.ndarray):
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(f"numpy images must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
            image = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1)
        if not isinstance(image, Tensor):
            raise TypeError(f"expected a PIL image, a numpy array or a tensor, got {type(image).__name__}")
        batched = image.dim() == 4
        if image.dim() not in (3, 4) or image.shape[-3] != 3:
            raise ValueError(f"tensor images must be (3, H, W) or (B, 3, H, W), got shape {tuple(image.shape)}")
        if image.dtype == torch.uint8:
            image = image.float() / 255.0
        elif image.is_floating_point():
            low, high = float(image.min()), float(image.max())
            if low < 0.0 or high > 1.0:
                raise ValueError(
                    f"float images must hold values in [0, 1] (got {low:.3g}..{high:.3g}); pass uint8 for 0..255"
                )
            image = image.float()
        else:
            raise ValueError(f"tensor images must be uint8 or float, got {image.dtype}")
        return (image if batched else image.unsqueeze(0)), batched

    def __call__(self, image) -> Tensor:
        batch, batched = self._as_float_batch(image)
        if batch.shape[-2:] != (self.size, self.size):
            batch = F.interpolate(
                batch, size=(self.size, self.size), mode=self.interpolation, align_corners=False, antialias=True
            ).clamp_(0.0, 1.0)
        batch = self.normalize(batch)
        return batch if batched else batch[0]


def input_transform(model: nn.Module, image_size: int = 224) -> ImageTransform:
    """The study's input transform for ``model``: whole image resized to ``image_size``, the model's mean/std.

    Mean, std and interpolation come from the model's timm ``pretrained_cfg`` (ImageNet defaults
    and bicubic if it has none), so it works for any timm model.  The size is the study's 224 for every model, whatever size timm
    evaluates the model at (FastViT's cfg says 256).
    """
    cfg = getattr(model, "pretrained_cfg", None) or {}
    interpolation = cfg.get("interpolation") or "bicubic"
    if interpolation not in ("bicubic", "bilinear"):
        interpolation = "bicubic"
    return ImageTransform(
        image_size, cfg.get("mean") or IMAGENET_MEAN, cfg.get("std") or IMAGENET_STD, interpolation
    )
