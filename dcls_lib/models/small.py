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
downsamples by 4, so a 112-pixel SynthClick image gives the last stage, where Grad-CAM looks, 7x7
cells, as the study's 224 pixels do at stride 32, at a quarter of the pixels to generate and keep;
the stages themselves are timm's.  ResNet: its 3x3 max-pool at stride 1, after its 7x7 convolution
at stride 2.  FastViT: its second stem block at stride 1.  ConvNeXt and ConvFormer: the ResNet's
stem (a 7x7 convolution at stride 2, norm, the family's activation, a 3x3 max-pool at stride 1) in
place of their patchify or strided convolution.

Why ConvNeXt and ConvFormer differ from timm's (issue 13; every change made before variants were
compared, and the same for all three variants; each measured on SynthClick, 112 px, width 8, 450 steps unless
said, 2 CPU cores, December 2026):

* **Norms.**  timm's normalise each position over its channels (LayerNorm), which at 8 to 64 channels
  gives every position the same energy: a marked ring cannot stand out from fifteen distractors.
  Both stayed at chance (48% on test_learning's two classes where the ResNet reaches 100%).  The
  small ConvFormer normalises over channels *and* positions of each image (``GroupNorm`` with one
  group, MetaFormer's "modified LayerNorm"); the small ConvNeXt uses BatchNorm, as the ResNet and
  FastViT do (with GroupNorm it stayed at chance on the full task at 64 px, width 8; with BatchNorm
  it reached 88%).  The head's norm, on the pooled vector, stays.
* **Layer scale 0.1** for the ConvNeXt (CaiT's value for networks of up to 18 blocks; timm's 1e-6 is
  for deep ones): with 1e-6 its six blocks stayed nearly off (trained gammas 0.005 to 0.014).
* **Stem.**  With the 2x2 patchify stem the ConvNeXt needed 900 steps to leave chance (BatchNorm and
  layer scale 0.1: 8% after 450 steps, 100% after 900) and its DCLS variant had not left it after
  900; at 112 px a ring (25 px across) is wider than what a first-stage unit sees (14 px).  With
  the ResNet's stem its baseline reached 100% in 3 epochs, the DCLS ConvNeXt 100% in 6, and the DCLS
  ConvFormer, at chance with its strided stem, 99% in 3.
* **Stride where the stem convolves.**  The stem convolves at stride 2 and pools at stride 1, not
  the other way round (this book's builds up to December 2026): the same receptive field, with the
  convolution, norm and activation on a quarter of the cells.  Measured (one thread per run, two runs
  side by side, batch 32): a training epoch of the DCLS ConvNeXt 30-34 s against 37-41 s, and its
  seed 0 at 90% validation accuracy after 4 of 6 epochs against 20% (100% and 99% after 6); the DCLS
  ResNet, the DCLS ConvFormer and the ResNet and ConvNeXt baselines learned as before.
* **Head.**  The small ConvFormer classifies with a linear layer (``use_mlp_head=False``, as timm's
  PoolFormers do), not the published S18's MLP head: with it, it stayed at chance (8% after 960
  steps at 64 px, width 16); with the linear one it reached 96% in 360 steps.
"""

from __future__ import annotations

from typing import Callable, Optional

import timm
import torch.nn.functional as F
from torch import nn
from timm.layers import LayerNorm2d
from timm.models.fastvit import MobileOneBlock
from timm.models.metaformer import LayerNorm2dNoBias, MetaFormer, SepConv, StarReLU
from timm.models.resnet import BasicBlock, ResNet

from ..validation import check_choice
from .convert import convert_to_dcls, convert_to_dilated

VARIANTS = ("baseline", "dilated", "dcls")
SHALLOW_LAYER_SCALE = 0.1  # CaiT's layer-scale init for networks of up to 18 blocks (timm's 1e-6 is for deep ones)


class SubsampledPointwiseConv2d(nn.Conv2d):
    """A 1x1 convolution at stride s, computed as the stride-1 one on every s-th row and column: the
    same numbers, and the same parameters and state-dict keys as the ``nn.Conv2d`` it replaces.

    Why: in torch 2.14.1 on CPU, oneDNN's backward of a channels-last 1x1 convolution at stride 2
    (8 -> 16 channels, 56x56 or larger) aborts with heap corruption; the small ResNet's layer-2
    shortcut and the small FastViT's stem have one, and the small models train channels-last."""

    def forward(self, input):
        step_h, step_w = self.stride
        return F.conv2d(input[:, :, ::step_h, ::step_w], self.weight, self.bias, 1, 0, 1, self.groups)


def _subsample_strided_pointwise(module: nn.Module) -> nn.Module:
    """Every 1x1, unpadded, strided ``nn.Conv2d`` of ``module`` made a ``SubsampledPointwiseConv2d``."""
    for name, child in module.named_children():
        if (type(child) is nn.Conv2d and child.kernel_size == (1, 1) and child.padding == (0, 0)
                and child.stride != (1, 1) and child.dilation == (1, 1)):
            child.__class__ = SubsampledPointwiseConv2d
        else:
            _subsample_strided_pointwise(child)
    return module


def _widths(width: int) -> tuple[int, int, int, int]:
    return (width, 2 * width, 4 * width, 8 * width)


def _replace_layer_norms(module: nn.Module, make: Callable[[int, float], nn.Module]) -> nn.Module:
    """Every per-position LayerNorm of ``module`` replaced by ``make(channels, eps)`` (see the module
    docstring for why)."""
    for name, child in module.named_children():
        if isinstance(child, LayerNorm2d):
            setattr(module, name, make(child.normalized_shape[0], child.eps))
        else:
            _replace_layer_norms(child, make)
    return module


def _group_norm(channels: int, eps: float) -> nn.Module:
    return nn.GroupNorm(1, channels, eps=eps)  # one mean and variance per image, over channels and positions


def _batch_norm(channels: int, layer_norm_eps: float) -> nn.Module:
    """Per channel, over the batch and positions: the ResNet's and FastViT's norm, with their eps (1e-5),
    not the replaced LayerNorm's."""
    return nn.BatchNorm2d(channels)


def _resnet(num_classes: int, width: int) -> nn.Module:
    model = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes, channels=_widths(width))
    # timm's 7x7 stem is 64 channels wide whatever the stages: make it ``width``, with the stem's stride 2
    # in the convolution and the max-pool at stride 1 (without the max-pool the ResNet learns far slower).
    # At 112 px a 64-channel stem cost more than all the stages together.
    model.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
    model.bn1 = nn.BatchNorm2d(width)
    model.maxpool = nn.MaxPool2d(kernel_size=3, stride=1, padding=1)
    first = model.layer1[0]
    first.conv1 = nn.Conv2d(width, width, kernel_size=3, padding=1, bias=False)
    first.downsample = None  # its input now has the block's width: an identity shortcut, as timm builds one
    for module in (model.conv1, first.conv1):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")  # timm's init of convs
    return model


def _pooling_stem(width: int, norm: Callable[[int, float], nn.Module], act: Callable[[], nn.Module]) -> nn.Module:
    """The small ResNet's stem with a family's norm and activation: a 7x7 convolution at stride 2, then a
    3x3 max-pool at stride 1 (stride 2 in all, as every small stem).  Used in place of a patchify or
    strided stem, see the module docstring."""
    return nn.Sequential(
        nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False), norm(width, 1e-5), act(),  # ResNet's eps
        nn.MaxPool2d(kernel_size=3, stride=1, padding=1),
    )


def _convnext(num_classes: int, width: int) -> nn.Module:
    model = timm.create_model("convnext_atto", num_classes=num_classes, dims=_widths(width), depths=(1, 1, 3, 1),
                              ls_init_value=SHALLOW_LAYER_SCALE)
    model.stem = _pooling_stem(width, _batch_norm, nn.GELU)
    _replace_layer_norms(model.stages, _batch_norm)
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
    model.stem = _pooling_stem(width, _group_norm, StarReLU)
    _replace_layer_norms(model.stages, _group_norm)
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
    model = _subsample_strided_pointwise(SMALL_FAMILIES[family](num_classes, width))
    if variant == "dilated":
        convert_to_dilated(model)
    elif variant == "dcls":
        convert_to_dcls(model, dilated_kernel_size=dilated_kernel_size, kernel_count=kernel_count, version=version)
    return model
