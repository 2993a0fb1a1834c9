"""Which convolutions DCLS replaces in each model family, and with what, as the published models do.

A family is recognised by the type of the timm model object, never by its name, so small members
(resnet18, resnet10t, convnext_atto, fastvit_t8, a MetaFormer with small depths) convert with the
same rules as the study's models.  What each family replaces was read from the authors' code:

- ResNet (timm ``ResNet``): every 3x3 convolution of the residual blocks (``Bottleneck.conv2``,
  ``BasicBlock.conv1``/``conv2``), stride and groups kept.  Source: ``timm/models/resnet_dcls.py`` in
  K-H-Ismail/pytorch-image-models and ``replace_depthwise_dcls_resnet`` in rabihchamas/DCLS-GradCAM-Eval.
- ConvNeXt (timm ``ConvNeXt``): every block's depthwise 7x7 (``conv_dw``).  Source:
  ``models/convnext_dcls.py`` in K-H-Ismail/ConvNeXt-dcls.
- MetaFormer (timm ``MetaFormer``, i.e. ConvFormer and CAFormer): the depthwise conv of every
  ``SepConv`` token mixer.  Source: ``replace_depthwise_dcls_metaformers`` in DCLS-GradCAM-Eval, applied
  to sail-sg/metaformer's ``metaformer_baselines.py``.
- FastViT (timm ``FastVit``): every depthwise 7x7 with in == out == groups: the ConvFFN's conv in
  every block and the conditional positional encoding (``RepCPE.pe``) of the attention stage.  The 3x3
  depthwise convs of RepMixer and the stem are kept.  Source: ``replace_depthwise_dcls`` (7x7 only) in
  DCLS-GradCAM-Eval's ``models/fastvit/dcls_utils.py``, applied to Apple's FastViT code.

Positions: the authors' code creates a new ``P`` each time the channel count of the replaced convs
grows while walking the model, so every block of a stage (and FastViT's positional encoding, which
sits at the start of its stage) shares one ``P``.  Here the grouping is explicit: one ``P`` per
(stage, kernel shape), which is the same grouping for the published models and stays well defined
for members whose stages do not grow.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Iterator

from torch import nn
from timm.models import convnext, fastvit, metaformer, resnet

from ..layers import Dcls1d, Dcls2d, Dcls3d

DCLS_TYPES = (Dcls1d, Dcls2d, Dcls3d)


@dataclass(frozen=True)
class DclsDefaults:
    """A family's default DCLS settings: those of its smallest published model."""

    dilated_kernel_size: int
    kernel_count: int
    version: str

    def options(self) -> dict:
        """The settings as ``convert_to_dcls`` keywords."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ConvSite:
    """One convolution that the family replaces: where it is, and which stage's positions it shares."""

    name: str
    conv: nn.Conv2d
    stage: int


@dataclass(frozen=True)
class Family:
    """How DCLS goes into one family of timm models and where Grad-CAM looks in it."""

    name: str
    model_types: tuple
    defaults: DclsDefaults
    weight_init: str  # "trunc_normal": std 0.02 and zero bias (as the family inits its convs); "reference"
    find_sites: Callable[[nn.Module], Iterator[ConvSite]]
    cam_layer: Callable[[nn.Module], str]

    def sites(self, model: nn.Module) -> list[ConvSite]:
        return list(self.find_sites(model))


def _plain_conv(module) -> bool:
    return isinstance(module, nn.Conv2d) and not isinstance(module, DCLS_TYPES)


def _is_depthwise(conv: nn.Conv2d) -> bool:
    return conv.groups == conv.in_channels == conv.out_channels


def _resnet_sites(model) -> Iterator[ConvSite]:
    for stage, layer_name in enumerate(("layer1", "layer2", "layer3", "layer4")):
        for block_name, block in getattr(model, layer_name).named_children():
            if isinstance(block, resnet.Bottleneck):
                names = ("conv2",)
            elif isinstance(block, resnet.BasicBlock):
                names = ("conv1", "conv2")
            else:
                continue
            for conv_name in names:
                conv = getattr(block, conv_name)
                if _plain_conv(conv) and conv.kernel_size == (3, 3):
                    yield ConvSite(f"{layer_name}.{block_name}.{conv_name}", conv, stage)


def _stage_blocks(model, stage: int) -> Iterator[tuple[str, nn.Module]]:
    """(name, block) for every block of stage ``stage`` of a model built of ``stages[i].blocks``."""
    for block_name, block in model.stages[stage].blocks.named_children():
        yield f"stages.{stage}.blocks.{block_name}", block


def _convnext_sites(model) -> Iterator[ConvSite]:
    for stage in range(len(model.stages)):
        for name, block in _stage_blocks(model, stage):
            conv = getattr(block, "conv_dw", None)
            if isinstance(block, convnext.ConvNeXtBlock) and _plain_conv(conv) and _is_depthwise(conv):
                yield ConvSite(f"{name}.conv_dw", conv, stage)


def _metaformer_sites(model) -> Iterator[ConvSite]:
    for stage in range(len(model.stages)):
        for name, block in _stage_blocks(model, stage):
            mixer = getattr(block, "token_mixer", None)
            if isinstance(mixer, metaformer.SepConv) and _plain_conv(mixer.dwconv) and _is_depthwise(mixer.dwconv):
                yield ConvSite(f"{name}.token_mixer.dwconv", mixer.dwconv, stage)


def _fastvit_sites(model) -> Iterator[ConvSite]:
    for stage, stage_module in enumerate(model.stages):
        pos_emb = getattr(stage_module, "pos_emb", None)
        if isinstance(pos_emb, fastvit.RepConditionalPosEnc):
            if pos_emb.reparam_conv is not None:
                raise ValueError(
                    f"stages.{stage}.pos_emb is reparameterized; convert FastViT to DCLS before reparameterize()"
                )
            conv = pos_emb.pos_enc
            if _plain_conv(conv) and _is_depthwise(conv) and conv.kernel_size == (7, 7):
                yield ConvSite(f"stages.{stage}.pos_emb.pos_enc", conv, stage)
        for name, block in _stage_blocks(model, stage):
            mlp = getattr(block, "mlp", None)
            if isinstance(mlp, fastvit.ConvMlp):
                conv = mlp.conv.conv
                if _plain_conv(conv) and _is_depthwise(conv) and conv.kernel_size == (7, 7):
                    yield ConvSite(f"{name}.mlp.conv.conv", conv, stage)


def _last_stage(model) -> str:
    return f"stages.{len(model.stages) - 1}"


FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family("resnet", (resnet.ResNet,), DclsDefaults(7, 5, "v0"), "reference", _resnet_sites, lambda m: "layer4"),
        Family("convnext", (convnext.ConvNeXt,), DclsDefaults(17, 34, "v0"), "trunc_normal", _convnext_sites, _last_stage),
        Family(
            "metaformer", (metaformer.MetaFormer,), DclsDefaults(17, 34, "v1"), "trunc_normal", _metaformer_sites, _last_stage
        ),
        Family(
            "fastvit", (fastvit.FastVit,), DclsDefaults(17, 34, "v1"), "trunc_normal", _fastvit_sites, lambda m: "final_conv"
        ),
    )
}


def detect_family(model: nn.Module) -> Family:
    """The family of a timm model, from its type; a clear error for models outside the four families."""
    for family in FAMILIES.values():
        if isinstance(model, family.model_types):
            return family
    supported = ", ".join(f"{f.name} ({'/'.join(t.__name__ for t in f.model_types)})" for f in FAMILIES.values())
    raise TypeError(f"{type(model).__name__} is not a model family that dcls_lib knows; supported: {supported}")
