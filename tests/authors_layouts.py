"""The key layouts of the published checkpoints, written out from the authors' model code.

These generators describe, key by key, the state dicts that the authors' code saves, so the tests
can build files in exactly that layout (random values) without the real downloads.  They are written
from the authors' module definitions, independently of dcls_lib's mapping (which goes through timm's
checkpoint filters):

- ConvNeXt: facebookresearch/ConvNeXt ``models/convnext.py`` and K-H-Ismail/ConvNeXt-dcls
  ``models/convnext_dcls.py`` (``Block``: dwconv, norm, pwconv1, pwconv2, gamma; ``downsample_layers``
  as Sequential(Conv, LayerNorm) then Sequential(LayerNorm, Conv); ``norm``; ``head``).
- ResNet-50: torchvision/timm ``ResNet`` names, as in K-H-Ismail/pytorch-image-models
  ``timm/models/resnet_dcls.py`` (Bottleneck conv1/bn1/conv2/bn2/conv3/bn3, downsample.0/1, fc).
- CAFormer/ConvFormer: sail-sg/metaformer ``metaformer_baselines.py`` (Downsampling with
  pre_norm/conv/post_norm, SepConv with Linear pwconv1/pwconv2 and StarReLU act1, Attention with
  qkv/proj and no biases, Mlp fc1/act/fc2 without bias, Scale ``res_scale`` in the last two stages,
  LayerNormWithoutBias norms, MlpHead fc1/norm/fc2).
- FastViT-SA: apple/ml-fastvit ``models/fastvit.py`` and ``models/modules/mobileone.py``,
  ``replknet.py`` (MobileOneBlock se/rbr_skip/rbr_conv/rbr_scale, RepMixer norm/mixer/layer_scale,
  ConvFFN conv.conv/conv.bn/fc1/fc2, AttentionBlock norm/token_mixer/layer_scale_1/2, PatchEmbed
  proj.0 lkb_origin/small_conv and proj.1, RepCPE pe, conv_exp with SE, head).

Each generator returns a list of ``Entry(key, shape, group)``; ``group`` names the stage whose
positions a DCLS ``P`` shares (the authors' checkpoints repeat the same tensor under every block).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class Entry:
    key: str
    shape: tuple
    group: Optional[str] = None


def _bn(prefix: str, c: int) -> list[Entry]:
    return [
        Entry(f"{prefix}.weight", (c,)),
        Entry(f"{prefix}.bias", (c,)),
        Entry(f"{prefix}.running_mean", (c,)),
        Entry(f"{prefix}.running_var", (c,)),
        Entry(f"{prefix}.num_batches_tracked", ()),
    ]


def _dcls_or_conv(prefix: str, cout: int, cin_per_group: int, k: int, taps: Optional[int], group: str) -> list[Entry]:
    """A conv's weight, or a reference-library Dcls2d's weight and (shared) P."""
    if taps is None:
        return [Entry(f"{prefix}.weight", (cout, cin_per_group, k, k))]
    return [Entry(f"{prefix}.weight", (cout, cin_per_group, taps)), Entry(f"{prefix}.P", (2, cout, cin_per_group, taps), group)]


def convnext_layout(depths, dims, taps: Optional[int] = None, num_classes: int = 1000) -> list[Entry]:
    out = [
        Entry("downsample_layers.0.0.weight", (dims[0], 3, 4, 4)),
        Entry("downsample_layers.0.0.bias", (dims[0],)),
        Entry("downsample_layers.0.1.weight", (dims[0],)),
        Entry("downsample_layers.0.1.bias", (dims[0],)),
    ]
    for i in range(1, 4):
        out += [
            Entry(f"downsample_layers.{i}.0.weight", (dims[i - 1],)),
            Entry(f"downsample_layers.{i}.0.bias", (dims[i - 1],)),
            Entry(f"downsample_layers.{i}.1.weight", (dims[i], dims[i - 1], 2, 2)),
            Entry(f"downsample_layers.{i}.1.bias", (dims[i],)),
        ]
    for i, (depth, d) in enumerate(zip(depths, dims)):
        for j in range(depth):
            p = f"stages.{i}.{j}"
            out += _dcls_or_conv(f"{p}.dwconv", d, 1, 7, taps, f"stage{i}")
            out += [
                Entry(f"{p}.dwconv.bias", (d,)),
                Entry(f"{p}.norm.weight", (d,)),
                Entry(f"{p}.norm.bias", (d,)),
                Entry(f"{p}.pwconv1.weight", (4 * d, d)),
                Entry(f"{p}.pwconv1.bias", (4 * d,)),
                Entry(f"{p}.pwconv2.weight", (d, 4 * d)),
                Entry(f"{p}.pwconv2.bias", (d,)),
                Entry(f"{p}.gamma", (d,)),
            ]
    out += [
        Entry("norm.weight", (dims[-1],)),
        Entry("norm.bias", (dims[-1],)),
        Entry("head.weight", (num_classes, dims[-1])),
        Entry("head.bias", (num_classes,)),
    ]
    return out


def resnet50_layout(taps: Optional[int] = None, num_classes: int = 1000) -> list[Entry]:
    out = [Entry("conv1.weight", (64, 3, 7, 7))] + _bn("bn1", 64)
    inplanes = 64
    for s, (planes, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3))):
        for b in range(blocks):
            p = f"layer{s + 1}.{b}"
            out += [Entry(f"{p}.conv1.weight", (planes, inplanes, 1, 1))] + _bn(f"{p}.bn1", planes)
            out += _dcls_or_conv(f"{p}.conv2", planes, planes, 3, taps, f"layer{s + 1}") + _bn(f"{p}.bn2", planes)
            out += [Entry(f"{p}.conv3.weight", (4 * planes, planes, 1, 1))] + _bn(f"{p}.bn3", 4 * planes)
            if b == 0:
                out += [Entry(f"{p}.downsample.0.weight", (4 * planes, inplanes, 1, 1))] + _bn(f"{p}.downsample.1", 4 * planes)
            inplanes = 4 * planes
    return out + [Entry("fc.weight", (num_classes, 2048)), Entry("fc.bias", (num_classes,))]


def metaformer_s18_layout(kind: str, taps: Optional[int] = None, num_classes: int = 1000) -> list[Entry]:
    """sail-sg caformer_s18 / convformer_s18: depths (3, 3, 9, 3), dims (64, 128, 320, 512)."""
    depths, dims = (3, 3, 9, 3), (64, 128, 320, 512)
    mixers = ("sepconv",) * 4 if kind == "convformer" else ("sepconv", "sepconv", "attention", "attention")
    out = [
        Entry("downsample_layers.0.conv.weight", (64, 3, 7, 7)),
        Entry("downsample_layers.0.conv.bias", (64,)),
        Entry("downsample_layers.0.post_norm.weight", (64,)),
    ]
    for i in range(1, 4):
        out += [
            Entry(f"downsample_layers.{i}.pre_norm.weight", (dims[i - 1],)),
            Entry(f"downsample_layers.{i}.conv.weight", (dims[i], dims[i - 1], 3, 3)),
            Entry(f"downsample_layers.{i}.conv.bias", (dims[i],)),
        ]
    for i, (depth, d) in enumerate(zip(depths, dims)):
        for j in range(depth):
            p = f"stages.{i}.{j}"
            out.append(Entry(f"{p}.norm1.weight", (d,)))
            if mixers[i] == "sepconv":
                out += [
                    Entry(f"{p}.token_mixer.pwconv1.weight", (2 * d, d)),
                    Entry(f"{p}.token_mixer.act1.scale", (1,)),
                    Entry(f"{p}.token_mixer.act1.bias", (1,)),
                ]
                out += _dcls_or_conv(f"{p}.token_mixer.dwconv", 2 * d, 1, 7, taps, f"stage{i}")
                out.append(Entry(f"{p}.token_mixer.pwconv2.weight", (d, 2 * d)))
            else:
                out += [Entry(f"{p}.token_mixer.qkv.weight", (3 * d, d)), Entry(f"{p}.token_mixer.proj.weight", (d, d))]
            if i >= 2:
                out.append(Entry(f"{p}.res_scale1.scale", (d,)))
            out += [
                Entry(f"{p}.norm2.weight", (d,)),
                Entry(f"{p}.mlp.fc1.weight", (4 * d, d)),
                Entry(f"{p}.mlp.act.scale", (1,)),
                Entry(f"{p}.mlp.act.bias", (1,)),
                Entry(f"{p}.mlp.fc2.weight", (d, 4 * d)),
            ]
            if i >= 2:
                out.append(Entry(f"{p}.res_scale2.scale", (d,)))
    return out + [
        Entry("norm.weight", (512,)),
        Entry("norm.bias", (512,)),
        Entry("head.fc1.weight", (2048, 512)),
        Entry("head.fc1.bias", (2048,)),
        Entry("head.norm.weight", (2048,)),
        Entry("head.norm.bias", (2048,)),
        Entry("head.fc2.weight", (num_classes, 2048)),
        Entry("head.fc2.bias", (num_classes,)),
    ]


def _conv_bn(prefix: str, cout: int, cin_per_group: int, k: int) -> list[Entry]:
    return [Entry(f"{prefix}.conv.weight", (cout, cin_per_group, k, k))] + _bn(f"{prefix}.bn", cout)


def _mobileone(prefix, cin, cout, k, stride=1, groups=1, use_se=False, scale_branch=True, branches=1) -> list[Entry]:
    out = []
    if use_se:
        r = int(cout * 0.0625)
        out += [
            Entry(f"{prefix}.se.reduce.weight", (r, cout, 1, 1)),
            Entry(f"{prefix}.se.reduce.bias", (r,)),
            Entry(f"{prefix}.se.expand.weight", (cout, r, 1, 1)),
            Entry(f"{prefix}.se.expand.bias", (cout,)),
        ]
    if cin == cout and stride == 1:
        out += _bn(f"{prefix}.rbr_skip", cin)
    for b in range(branches):
        out += _conv_bn(f"{prefix}.rbr_conv.{b}", cout, cin // groups, k)
    if k > 1 and scale_branch:
        out += _conv_bn(f"{prefix}.rbr_scale", cout, cin // groups, 1)
    return out


def _convffn(prefix: str, d: int, taps: Optional[int], group: str) -> list[Entry]:
    return (
        _dcls_or_conv(f"{prefix}.conv.conv", d, 1, 7, taps, group)
        + _bn(f"{prefix}.conv.bn", d)
        + [
            Entry(f"{prefix}.fc1.weight", (4 * d, d, 1, 1)),
            Entry(f"{prefix}.fc1.bias", (4 * d,)),
            Entry(f"{prefix}.fc2.weight", (d, 4 * d, 1, 1)),
            Entry(f"{prefix}.fc2.bias", (d,)),
        ]
    )


def fastvit_sa_layout(layers, taps: Optional[int] = None, num_classes: int = 1000) -> list[Entry]:
    """Apple's FastViT-SA (training form): dims (64, 128, 256, 512), RepMixer x3 then attention, RepCPE."""
    dims = (64, 128, 256, 512)
    out = _mobileone("patch_embed.0", 3, 64, 3, stride=2)
    out += _mobileone("patch_embed.1", 64, 64, 3, stride=2, groups=64)
    out += _mobileone("patch_embed.2", 64, 64, 1)
    idx = 0
    for i, d in enumerate(dims):
        if i == 3:
            out += _dcls_or_conv(f"network.{idx}.pe", d, 1, 7, taps, "stage3") + [Entry(f"network.{idx}.pe.bias", (d,))]
            idx += 1
        for j in range(layers[i]):
            p = f"network.{idx}.{j}"
            if i < 3:
                out += _mobileone(f"{p}.token_mixer.norm", d, d, 3, groups=d, scale_branch=False, branches=0)
                out += _mobileone(f"{p}.token_mixer.mixer", d, d, 3, groups=d)
                out.append(Entry(f"{p}.token_mixer.layer_scale", (d, 1, 1)))
                out += _convffn(f"{p}.convffn", d, taps, f"stage{i}")
                out.append(Entry(f"{p}.layer_scale", (d, 1, 1)))
            else:
                out += _bn(f"{p}.norm", d)
                out += [
                    Entry(f"{p}.token_mixer.qkv.weight", (3 * d, d)),
                    Entry(f"{p}.token_mixer.proj.weight", (d, d)),
                    Entry(f"{p}.token_mixer.proj.bias", (d,)),
                ]
                out += _convffn(f"{p}.convffn", d, taps, f"stage{i}")
                out += [Entry(f"{p}.layer_scale_1", (d, 1, 1)), Entry(f"{p}.layer_scale_2", (d, 1, 1))]
        idx += 1
        if i < 3:
            nxt = dims[i + 1]
            p = f"network.{idx}.proj"
            out += _conv_bn(f"{p}.0.lkb_origin", nxt, 1, 7) + _conv_bn(f"{p}.0.small_conv", nxt, 1, 3)
            out += _mobileone(f"{p}.1", nxt, nxt, 1)
            idx += 1
    out += _mobileone("conv_exp", 512, 1024, 3, groups=512, use_se=True)
    return out + [Entry("head.weight", (num_classes, 1024)), Entry("head.bias", (num_classes,))]


def make_state_dict(entries: list[Entry], seed: int = 0, positions_limit: float = 8.0) -> dict[str, torch.Tensor]:
    """Random tensors in the given layout; every key of a ``group`` holds the same positions, as saved."""
    generator = torch.Generator().manual_seed(seed)
    shared: dict[str, torch.Tensor] = {}
    state = {}
    for entry in entries:
        if entry.key.endswith("num_batches_tracked"):
            state[entry.key] = torch.tensor(1000, dtype=torch.long)
        elif entry.group is not None:
            if entry.group not in shared:
                shared[entry.group] = (torch.rand(entry.shape, generator=generator) * 2 - 1) * positions_limit
            state[entry.key] = shared[entry.group].clone()
        elif entry.key.endswith("running_var"):
            state[entry.key] = torch.rand(entry.shape, generator=generator) + 0.5
        else:
            state[entry.key] = torch.randn(entry.shape, generator=generator) * 0.05
    return state


def timm_training_checkpoint(state_dict_ema: dict, state_dict: Optional[dict] = None, arch: str = "model") -> dict:
    """What timm's train.py saves (CheckpointSaver): the model, its EMA, and the run's arguments."""
    return {
        "epoch": 299,
        "arch": arch,
        "state_dict": state_dict if state_dict is not None else state_dict_ema,
        "state_dict_ema": state_dict_ema,
        "version": 2,
        "args": argparse.Namespace(model=arch, lr=4e-3, epochs=300),
        "metric": 82.5,
    }
