"""Image normalisation, the one place that knows ImageNet's mean and std.

Models take ``(x - mean) / std`` per channel of images in [0, 1]; the evaluation, the study's input
transform (:func:`dcls_lib.models.input_transform`) and training on SynthClick all normalise here.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PixelNormalize(nn.Module):
    """Batched model input from [0, 1] images: ``(x - mean) / std`` per channel, on the images' device."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        super().__init__()
        if len(mean) != len(std) or min(std) <= 0:
            raise ValueError(f"mean and std need one value per channel and std > 0, got {mean} and {std}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(-1, 1, 1), persistent=False)

    @classmethod
    def for_model(cls, model: nn.Module) -> "PixelNormalize":
        """The mean and std of a timm model's ``pretrained_cfg``, ImageNet's where it has none."""
        config = getattr(model, "pretrained_cfg", None) or {}
        return cls(config.get("mean") or IMAGENET_MEAN, config.get("std") or IMAGENET_STD)

    def extra_repr(self) -> str:
        return f"mean={tuple(self.mean.flatten().tolist())}, std={tuple(self.std.flatten().tolist())}"

    def forward(self, images: Tensor) -> Tensor:
        # (B, C, H, W) or (C, H, W): the (C, 1, 1) buffers broadcast over both
        return (images - self.mean.to(images.device, images.dtype)) / self.std.to(images.device, images.dtype)
