"""Turning a timm model into its DCLS version (or a dilated baseline), and back into plain convolutions.

``convert_to_dcls`` swaps exactly the convolutions that the published DCLS models swap (see
``families``) for ``Dcls2d`` layers and leaves every other module untouched.  Positions are shared by
the replaced convolutions of a stage, as published; weights stay per layer.  ``convert_to_dilated``
swaps the same convolutions for dilated ones with the same parameters, the "dilated convolution"
baseline of the DCLS paper.  ``to_dense`` turns every DCLS layer into the ``nn.Conv2d`` it equals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import nn
from timm.layers import trunc_normal_

from ..layers import Dcls2d, get_interpolation
from ..validation import check_positive_int
from .families import DCLS_TYPES, ConvSite, Family, detect_family


@dataclass(frozen=True)
class DclsSpec:
    """What ``convert_to_dcls`` did to a model; kept as ``model.dcls_spec``."""

    family: str
    dilated_kernel_size: int
    kernel_count: int
    version: str
    share_positions: bool
    layers: tuple[str, ...]
    position_groups: tuple[tuple[str, ...], ...]  # layers that share one P (and SIG)


def parameter_count(model: nn.Module) -> int:
    """Trainable-or-not parameters, each shared tensor counted once (as ``model.parameters()`` yields them)."""
    return sum(p.numel() for p in model.parameters())


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def _sites_or_fail(model: nn.Module, family: Family) -> list[ConvSite]:
    sites = family.sites(model)
    if not sites:
        raise ValueError(
            f"{type(model).__name__} has no convolution that DCLS replaces in the {family.name} family "
            "(already converted, or reparameterized?)"
        )
    return sites


def _group_key(site: ConvSite, share_positions: bool):
    conv = site.conv
    shape = (conv.out_channels, conv.in_channels // conv.groups)
    return (site.stage, shape) if share_positions else site.name


def iso_kernel_count(model: nn.Module, version: Optional[str] = None, share_positions: bool = True) -> int:
    """The largest tap count that keeps the converted model at or below the baseline's parameter count.

    Counts what replacing costs: per layer ``out * in/groups * taps`` weights, per shared group
    ``ndim * out * in/groups * taps`` positions (twice that for versions with a learnable sigma).
    """
    family = detect_family(model)
    return _iso_kernel_count(_sites_or_fail(model, family), version or family.defaults.version, share_positions)


def _iso_kernel_count(sites: list[ConvSite], version: str, share_positions: bool) -> int:
    budget = sum(site.conv.weight.numel() for site in sites)
    per_tap = sum(site.conv.out_channels * site.conv.in_channels // site.conv.groups for site in sites)
    position_arrays = 2 if get_interpolation(version).has_sigma else 1
    groups = {_group_key(site, share_positions): site for site in sites}
    per_tap += sum(2 * position_arrays * s.conv.out_channels * s.conv.in_channels // s.conv.groups for s in groups.values())
    return max(1, budget // per_tap)


def _check_odd(size: int) -> int:
    if not isinstance(size, int) or isinstance(size, bool) or size < 1 or size % 2 == 0:
        raise ValueError(
            f"dilated_kernel_size must be a positive odd int (the output keeps its size with padding size // 2), got {size!r}"
        )
    return size


def convert_to_dcls(
    model: nn.Module,
    dilated_kernel_size: Optional[int] = None,
    kernel_count: Union[int, str, None] = None,
    version: Optional[str] = None,
    share_positions: bool = True,
) -> nn.Module:
    """Replace, in place, the convolutions that the published DCLS models replace; returns ``model``.

    Args:
        model: a timm ResNet, ConvNeXt, MetaFormer (ConvFormer/CAFormer) or FastViT, any size.
        dilated_kernel_size: odd size of the dense kernel the taps move in (family default if None).
        kernel_count: taps per kernel; an int, None for the family default, or ``"iso"`` for the
            largest count that keeps the parameter count at or below the original model's.
        version: interpolation (``"v0"``, ``"v1"``/``"bilinear"``, ``"gauss"``, ``"max"``); family default if None.
        share_positions: one ``P`` (and ``SIG``) per stage, as published; False gives every layer its own.

    Each new layer keeps its convolution's channels, groups, stride, bias and device/dtype, and pads
    ``dilated_kernel_size // 2``.  Weights start as the family initialises its convolutions
    (ConvNeXt, MetaFormer, FastViT: normal std 0.02 and zero bias; ResNet: the reference DCLS init,
    as its published training did), positions as the reference does.
    """
    family = detect_family(model)
    defaults = family.defaults
    size = _check_odd(defaults.dilated_kernel_size if dilated_kernel_size is None else dilated_kernel_size)
    version = get_interpolation(defaults.version if version is None else version).name
    if kernel_count is None:
        kernel_count = defaults.kernel_count
    sites = _sites_or_fail(model, family)
    if kernel_count == "iso":
        kernel_count = _iso_kernel_count(sites, version, share_positions)
    else:
        check_positive_int(kernel_count=kernel_count)
    for site in sites:
        if site.conv.dilation != (1, 1):
            raise ValueError(f"{site.name} is a dilated convolution (dilation={site.conv.dilation}); DCLS replaces undilated ones")
        if site.conv.padding_mode != "zeros":
            raise ValueError(f"{site.name} pads with {site.conv.padding_mode!r}; only zero padding is supported")

    shared: dict = {}
    for site in sites:
        conv = site.conv
        layer = Dcls2d(
            conv.in_channels,
            conv.out_channels,
            kernel_count,
            stride=conv.stride,
            padding=size // 2,
            dilated_kernel_size=size,
            groups=conv.groups,
            bias=conv.bias is not None,
            version=version,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        if family.weight_init == "trunc_normal":
            with torch.no_grad():
                trunc_normal_(layer.weight, std=0.02)
                if layer.bias is not None:
                    layer.bias.zero_()
        key = _group_key(site, share_positions)
        if key in shared:
            layer.P, layer.SIG = shared[key]
        else:
            shared[key] = (layer.P, layer.SIG)
        layer.train(conv.training)
        _replace(model, site.name, layer)

    groups: dict = {}
    for site in sites:
        groups.setdefault(_group_key(site, share_positions), []).append(site.name)
    model.dcls_spec = DclsSpec(
        family.name, size, kernel_count, version, share_positions, tuple(s.name for s in sites),
        tuple(tuple(names) for names in groups.values()),
    )
    return model


def tie_positions(model: nn.Module) -> nn.Module:
    """Make the layers of each position group share one ``P`` (and ``SIG``) again; returns ``model``.

    ``Module.to_empty()`` (after building on the ``meta`` device) gives every module its own copy of
    a shared parameter; this restores the sharing that ``convert_to_dcls`` set up, keeping the first
    layer's tensors.  ``.to()``, ``.cuda()``, ``.half()`` and ``deepcopy`` keep sharing by themselves.
    """
    spec = getattr(model, "dcls_spec", None)
    if spec is None:
        raise ValueError(f"{type(model).__name__} was not made by convert_to_dcls (it has no dcls_spec)")
    for names in spec.position_groups:
        first = model.get_submodule(names[0])
        for name in names[1:]:
            layer = model.get_submodule(name)
            layer.P, layer.SIG = first.P, first.SIG
    return model


def default_dilation(model: nn.Module, kernel_size: int) -> int:
    """The largest dilation whose span fits in the family's default DCLS kernel: ConvNeXt 7x7 -> 2, ResNet 3x3 -> 3."""
    return _default_dilation(detect_family(model), kernel_size)


def _default_dilation(family: Family, kernel_size: int) -> int:
    size = family.defaults.dilated_kernel_size
    return max(1, (size - 1) // (kernel_size - 1)) if kernel_size > 1 else 1


def convert_to_dilated(model: nn.Module, dilation: Optional[int] = None) -> nn.Module:
    """Replace, in place, the same convolutions by dilated ones with the same weights; returns ``model``.

    The "dilated convolution" baseline: same parameters (the weights are copied), taps on a regular
    grid ``dilation`` apart, padding ``dilation * (k - 1) // 2`` so shapes stay.  ``dilation=None``
    uses ``default_dilation``.
    """
    family = detect_family(model)
    if dilation is not None:
        check_positive_int(dilation=dilation)
    for site in _sites_or_fail(model, family):
        conv = site.conv
        k = conv.kernel_size[0]
        if conv.kernel_size[0] != conv.kernel_size[1] or k % 2 == 0:
            raise ValueError(f"{site.name} has kernel {conv.kernel_size}; dilating needs a square odd kernel")
        d = _default_dilation(family, k) if dilation is None else dilation
        dilated = nn.Conv2d(
            conv.in_channels,
            conv.out_channels,
            k,
            stride=conv.stride,
            padding=d * (k - 1) // 2,
            dilation=d,
            groups=conv.groups,
            bias=conv.bias is not None,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        with torch.no_grad():
            dilated.weight.copy_(conv.weight)
            if conv.bias is not None:
                dilated.bias.copy_(conv.bias)
        dilated.train(conv.training)
        _replace(model, site.name, dilated)
    return model


def to_dense(model: nn.Module) -> nn.Module:
    """Replace, in place, every DCLS layer by the ``nn.ConvNd`` it equals (same outputs); returns ``model``.

    For inference and export: the dense kernel is built once instead of at every forward.
    """
    if isinstance(model, DCLS_TYPES):
        return model.to_dense()
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, DCLS_TYPES)]
    for name, layer in layers:
        dense = layer.to_dense()
        dense.train(layer.training)
        _replace(model, name, dense)
    if hasattr(model, "dcls_spec"):
        del model.dcls_spec
    return model
