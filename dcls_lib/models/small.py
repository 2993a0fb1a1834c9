"""Small members of the study's four families, for training from scratch on SynthClick.

Each is built from timm's own classes with reduced widths and depths (no vendored model code) and
then turned into one of the three variants the book compares, with the same converters as the
published models:

* ``baseline``: the architecture as timm builds it;
* ``dilated``: its replaceable convolutions dilated (``convert_to_dilated``), same parameters;
* ``dcls``: those convolutions replaced by DCLS (``convert_to_dcls``, family defaults: positions
  shared per stage, the published dilated size, taps and interpolation, unless overridden).

``width`` is the first stage's channel count; later stages double it.

Total stride 16, not the published 32: each family's stem downsamples by 2 where the published one
downsamples by 4 (ResNet's first convolution at stride 1, before its max-pool; ConvNeXt's patchify stem 2x2 instead of 4x4; ConvFormer's
stem convolution at stride 2; FastViT's second stem block at stride 1).  So a 112-pixel SynthClick
image gives the last stage, where Grad-CAM looks, 7x7 cells, as the study's 224 pixels do at stride
32, at a quarter of the pixels to generate and keep; the stages themselves are timm's.

One change of normalisation: ConvNeXt and ConvFormer normalise each position over its channels
(LayerNorm), which at these widths (8 to 64 channels) gives every position of a feature map the same
energy: a position holding a marked ring and one holding background leave the norm equally loud, and
the evidence SynthClick hides among distractors cannot stand out.  Both stayed at chance (issue 13:
48% on two classes where the ResNet reaches 100%; the full task, 8% of 12 after 900 steps).  Their
small members therefore normalise over channels *and* positions of each image (``GroupNorm`` with one
group: MetaFormer's "modified LayerNorm", PoolFormer's norm), which keeps a sample's statistics its
own, as LayerNorm does, but leaves loud positions loud; they then learn as the BatchNorm families do
(81% and 85% on the two classes, three seeds each).  The head's norm, applied to the pooled vector,
is the same either way and stays.  And the small ConvFormer classifies with a linear layer
(``use_mlp_head=False``, as timm's PoolFormers do), not the MLP head of the published S18 (a 4x
expansion, squared ReLU and a norm): with that head it stayed at chance on the full task (8% of 12
after 960 steps at 64 px, width 16), with the linear one it reached 96% in 360 steps.
"""

from __future__ import annotations

from typing import Callable, Optional

import timm
from torch import nn
from timm.layers import LayerNorm2d, trunc_normal_
from timm.models.fastvit import MobileOneBlock
from timm.models.metaformer import LayerNorm2dNoBias, MetaFormer, SepConv
from timm.models.resnet import BasicBlock, ResNet

from ..validation import check_choice
from .convert import convert_to_dcls, convert_to_dilated

VARIANTS = ("baseline", "dilated", "dcls")


def _widths(width: int) -> tuple[int, int, int, int]:
    return (width, 2 * width, 4 * width, 8 * width)


def _stem_conv(in_channels: int, out_channels: int, kernel_size: int, padding: int) -> nn.Conv2d:
    """A stride-2 stem convolution, initialised as the family initialises its own (trunc-normal, std 0.02)."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=2, padding=padding)
    trunc_normal_(conv.weight, std=0.02)
    nn.init.zeros_(conv.bias)
    return conv


def _norm_over_positions(module: nn.Module) -> nn.Module:
    """Every per-position LayerNorm of ``module`` replaced by GroupNorm(1, C): one mean and variance per
    image over channels and positions (see the module docstring for why)."""
    for name, child in module.named_children():
        if isinstance(child, LayerNorm2d):
            setattr(module, name, nn.GroupNorm(1, child.normalized_shape[0], eps=child.eps))
        else:
            _norm_over_positions(child)
    return module


def _resnet(num_classes: int, width: int) -> nn.Module:
    model = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes, channels=_widths(width))
    # timm's 7x7 stem is 64 channels wide whatever the stages: make it ``width``, at stride 1 (stride 2:
    # the max-pool only; without it the ResNet learns far slower).  At 112 px a 64-channel stem at full
    # resolution cost more than all the stages together.
    model.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=1, padding=3, bias=False)
    model.bn1 = nn.BatchNorm2d(width)
    first = model.layer1[0]
    first.conv1 = nn.Conv2d(width, width, kernel_size=3, padding=1, bias=False)
    first.downsample = None  # its input now has the block's width: an identity shortcut, as timm builds one
    for module in (model.conv1, first.conv1):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")  # timm's init of convs
    return model


def _convnext(num_classes: int, width: int) -> nn.Module:
    model = timm.create_model("convnext_atto", num_classes=num_classes, dims=_widths(width), depths=(1, 1, 3, 1))
    model.stem[0] = _stem_conv(3, width, kernel_size=2, padding=0)  # patchify 2x2 (timm's patch_size=2 adds a stride-2 stage)
    _norm_over_positions(model.stem)
    _norm_over_positions(model.stages)
    return model


def _fastvit(num_classes: int, width: int) -> nn.Module:
    model = timm.create_model("fastvit_sa12", num_classes=num_classes, embed_dims=_widths(width), layers=(1, 1, 2, 1))
    model.stem[1] = MobileOneBlock(width, width, kernel_size=3, stride=1, group_size=1, act_layer=nn.GELU)
    return model


def _convformer(num_classes: int, width: int) -> nn.Module:
    model = MetaFormer(
        depths=(1, 1, 3, 1), dims=_widths(width), token_mixers=SepConv, norm_layers=LayerNorm2dNoBias,
        num_classes=num_classes, use_mlp_head=False,  # see the module docstring
    )
    model.stem.conv = _stem_conv(3, width, kernel_size=7, padding=3)
    _norm_over_positions(model.stem)
    _norm_over_positions(model.stages)
    return model


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
