"""Small members of the study's four families, for training from scratch on SynthClick.

Each is built from timm's own classes with reduced widths and depths (no vendored model code) and
then turned into one of the three variants the book compares, with the same converters as the
published models:

* ``baseline``: the architecture as timm builds it;
* ``dilated``: its replaceable convolutions dilated (``convert_to_dilated``), same parameters;
* ``dcls``: those convolutions replaced by DCLS (``convert_to_dcls``, family defaults: positions
  shared per stage, the published dilated size, taps and interpolation, unless overridden).

``width`` is the first stage's channel count; later stages double it.
"""

from __future__ import annotations

from typing import Callable, Optional

import timm
from torch import nn
from timm.models.metaformer import LayerNorm2dNoBias, MetaFormer, SepConv
from timm.models.resnet import BasicBlock, ResNet

from ..validation import check_choice
from .convert import convert_to_dcls, convert_to_dilated

VARIANTS = ("baseline", "dilated", "dcls")


def _widths(width: int) -> tuple[int, int, int, int]:
    return (width, 2 * width, 4 * width, 8 * width)


def _resnet(num_classes: int, width: int) -> nn.Module:
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes, channels=_widths(width), stem_width=width // 2)


def _convnext(num_classes: int, width: int) -> nn.Module:
    return timm.create_model("convnext_atto", num_classes=num_classes, dims=_widths(width), depths=(1, 1, 3, 1))


def _fastvit(num_classes: int, width: int) -> nn.Module:
    return timm.create_model("fastvit_sa12", num_classes=num_classes, embed_dims=_widths(width), layers=(1, 1, 2, 1))


def _convformer(num_classes: int, width: int) -> nn.Module:
    return MetaFormer(
        depths=(1, 1, 3, 1), dims=_widths(width), token_mixers=SepConv, norm_layers=LayerNorm2dNoBias,
        num_classes=num_classes,
    )


SMALL_FAMILIES: dict[str, Callable[[int, int], nn.Module]] = {
    "resnet": _resnet,
    "convnext": _convnext,
    "fastvit": _fastvit,
    "convformer": _convformer,
}


def create_small_model(
    family: str,
    variant: str = "baseline",
    num_classes: int = 12,
    width: int = 32,
    dilated_kernel_size: Optional[int] = None,
    kernel_count=None,
    version: Optional[str] = None,
) -> nn.Module:
    """A small ``family`` member (resnet, convnext, fastvit, convformer) as ``variant``."""
    check_choice("family", family, sorted(SMALL_FAMILIES))
    check_choice("variant", variant, VARIANTS)
    if not isinstance(width, int) or width < 4 or width % 2:
        raise ValueError(f"width must be an even int >= 4, got {width!r}")
    model = SMALL_FAMILIES[family](num_classes, width)
    if variant == "dilated":
        convert_to_dilated(model)
    elif variant == "dcls":
        convert_to_dcls(model, dilated_kernel_size=dilated_kernel_size, kernel_count=kernel_count, version=version)
    return model
