"""Dcls1d, Dcls2d and Dcls3d: convolutions whose kernel taps have learnable positions.

A drop-in for the reference library's modules (same arguments, parameter names, shapes and
initialisation), with one axis convention everywhere: ``P[d]`` is a tap's offset from the kernel
centre along spatial axis ``d`` (for 2-D: rows, then columns).  The kernel is built densely, as the
reference does, and applied by ``convolve``: ``F.convNd`` with dilation 1, or an exact faster method
where one was measured to be faster (FFT for large depthwise kernels on the CPU).

In eval mode without gradients (inference) the kernel is built once and kept until a parameter
changes (autograd's version counter: optimiser steps, ``load_state_dict``, ``nn.init`` and edits
under ``torch.no_grad()`` all count; edits through ``.data`` do not, so make them in train mode).
Built anew in every forward it cost 40 of 356 ms of a ConvNeXt-T-DCLS inference on 2 CPU cores.

Non-finite positions or widths raise a ValueError where parameters change: at construction, in
``load_state_dict`` and in ``clamp_parameters`` (which training calls after every optimiser step),
never in ``forward``, which stays free of device synchronisation (CUDA graphs, the ``meta`` device).
"""

from __future__ import annotations

import math
from typing import Union

import torch
from torch import Tensor, nn
from torch.nn import init

from .convolve import convolve_padded, needs_grad
from .fast_conv import FastConv1d, FastConv2d, FastConv3d
from .interpolation import get_interpolation
from .kernel import construct_kernel

_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
_DENSE = {1: FastConv1d, 2: FastConv2d, 3: FastConv3d}
_SPATIAL = {1: "L", 2: "H, W", 3: "D, H, W"}


def position_limits(size: int) -> tuple[int, int]:
    """The offsets from the centre (size // 2) that keep a tap on the grid of ``size`` cells."""
    return -(size // 2), (size - 1) - size // 2


def _per_axis(value, ndim: int, name: str) -> tuple[int, ...]:
    values = tuple(value) if isinstance(value, (tuple, list)) else (value,) * ndim
    if len(values) != ndim or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ValueError(f"{name} must be an int or a tuple of {ndim} ints, got {value!r}")
    return values


def _positive_int(value, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _unchanged(seen: tuple[Tensor, int], param: Tensor) -> bool:
    """Whether ``param`` is the tensor ``seen`` holds, at the version it had then."""
    held, version = seen
    return (held.data_ptr() == param.data_ptr() and held.device == param.device and held.shape == param.shape
            and held.dtype == param.dtype and version == param._version)


def _check_loaded(module: "DclsNd", incompatible_keys) -> None:
    """After ``load_state_dict``: the loaded parameters must fit the layer (a module-level function,
    so that a layer pickles: whole-model ``torch.save``, worker processes)."""
    module._check_parameters()


class DclsNd(nn.Module):
    """The base of Dcls1d/2d/3d (use it for isinstance checks); ``ndim`` is set by each subclass.

    State dicts carry the layer's convention in their metadata: ``model.state_dict()`` records
    ``version`` 2 for these layers (``_version``).  A state dict whose metadata records an older
    version was saved by a DCLS layer that predates the marker, the reference library's (whose axis
    conventions differ) or this library's before it had one; the two cannot be told apart, so loading
    it is refused and the message says how to load either.  A state dict without metadata (built by
    hand, by ``from_reference_state_dict`` or the published-checkpoint loaders, read from safetensors)
    is taken to be in this library's convention.
    """

    ndim: int
    _version = 2  # 1 (and the reference library's modules): positions of unknown convention

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_count: int,
        stride=1,
        padding: Union[int, tuple, str] = 0,
        dilated_kernel_size=1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        version: str = "gauss",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        nd = self.ndim
        self.in_channels = _positive_int(in_channels, "in_channels")
        self.out_channels = _positive_int(out_channels, "out_channels")
        self.kernel_count = _positive_int(kernel_count, "kernel_count")
        self.groups = _positive_int(groups, "groups")
        if in_channels % groups:
            raise ValueError(f"in_channels ({in_channels}) must be divisible by groups ({groups})")
        if out_channels % groups:
            raise ValueError(f"out_channels ({out_channels}) must be divisible by groups ({groups})")
        self.dilated_kernel_size = _per_axis(dilated_kernel_size, nd, "dilated_kernel_size")
        if min(self.dilated_kernel_size) < 1:
            raise ValueError(f"dilated_kernel_size must be >= 1 on every axis, got {dilated_kernel_size!r}")
        self.stride = _per_axis(stride, nd, "stride")
        if min(self.stride) < 1:
            raise ValueError(f"stride must be >= 1 on every axis, got {stride!r}")
        if padding_mode not in _PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {_PADDING_MODES}, got {padding_mode!r}")
        self.padding_mode = padding_mode
        self.padding = self._check_padding(padding)
        self.version = get_interpolation(version).name

        factory = {"device": device, "dtype": dtype}
        taps = (out_channels, in_channels // groups, kernel_count)
        self.weight = nn.Parameter(torch.empty(taps, **factory))
        self.P = nn.Parameter(torch.empty((nd, *taps), **factory))
        if get_interpolation(self.version).has_sigma:
            self.SIG = nn.Parameter(torch.empty((nd, *taps), **factory))
        else:
            self.register_parameter("SIG", None)
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self._inference_kernel = None  # (parameters it was built from, kernel); see _kernel
        self.reset_parameters()
        self.register_load_state_dict_post_hook(_check_loaded)

    def _check_padding(self, padding):
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"padding must be 'same', 'valid', an int or a tuple of ints, got {padding!r}")
            if padding == "same" and any(s != 1 for s in self.stride):
                raise ValueError("padding='same' needs stride 1 on every axis")
            if padding == "valid":
                padding = (0,) * self.ndim
            else:
                total = [k - 1 for k in self.dilated_kernel_size]
                self._reversed_padding_repeated_twice = [p for t in reversed(total) for p in (t // 2, t - t // 2)]
                return padding
        padding = _per_axis(padding, self.ndim, "padding")
        if min(padding) < 0:
            raise ValueError(f"padding must be >= 0 on every axis, got {padding!r}")
        self._reversed_padding_repeated_twice = [p for p in reversed(padding) for _ in range(2)]
        return padding

    @property
    def interpolation(self):
        return get_interpolation(self.version)

    def reset_parameters(self) -> None:
        """The reference's initialisation: weights as nn.Conv, positions N(0, 0.5) clamped to the grid."""
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight.shape[1] * self.weight.shape[2]
            bound = 1 / math.sqrt(fan_in)
            init.uniform_(self.bias, -bound, bound)
        with torch.no_grad():
            init.normal_(self.P, 0.0, 0.5)
            if self.SIG is not None:
                init.constant_(self.SIG, self.interpolation.sigma_init)
        self.clamp_parameters()

    @torch.no_grad()
    def clamp_parameters(self) -> None:
        """Keep every tap on the kernel grid; call after each optimiser step, as the reference does."""
        for d, size in enumerate(self.dilated_kernel_size):
            self.P[d].clamp_(*position_limits(size))
        self._check_parameters()

    @torch.no_grad()
    def _check_parameters(self) -> None:
        """Raise if a position or width is NaN or inf (one device synchronisation; not on ``meta``)."""
        for pname in ("P", "SIG"):
            param = getattr(self, pname)
            if param is not None and param.device.type != "meta" and not bool(torch.isfinite(param).all()):
                raise ValueError(f"{type(self).__name__}: parameter {pname} has non-finite values (NaN or inf)")

    def construct_kernel(self) -> Tensor:
        """The dense kernel ``(out, in/groups, *dilated_kernel_size)``, differentiable in every parameter."""
        return construct_kernel(self.weight, self.P, self.SIG, self.dilated_kernel_size, self.version)

    def _check_input(self, input: Tensor) -> None:
        nd = self.ndim
        name = type(self).__name__
        if input.dim() not in (nd + 1, nd + 2) or input.shape[-nd - 1] != self.in_channels:
            raise ValueError(
                f"{name} expects input of shape (N, C, {_SPATIAL[nd]}) or (C, {_SPATIAL[nd]}) with "
                f"C = in_channels = {self.in_channels}; got shape {tuple(input.shape)}"
            )

    def _conv(self, input: Tensor, kernel: Tensor) -> Tensor:
        return convolve_padded(
            input, kernel, self.bias, self.stride, self._reversed_padding_repeated_twice, self.padding_mode, self.groups
        )

    def _kernel(self) -> Tensor:
        """The kernel for this forward: built anew while training, recording autograd or compiling;
        in inference, cached until a parameter changes (see the module docstring)."""
        params = [p for p in (self.weight, self.P, self.SIG) if p is not None]
        if self.training or needs_grad(*params) or torch.compiler.is_compiling() or torch.jit.is_tracing():
            self._inference_kernel = None
            return self.construct_kernel()
        cached = self._inference_kernel
        if cached is None or not all(map(_unchanged, cached[0], params)):
            # holding the parameters' storages keeps their addresses from being reused by others
            cached = self._inference_kernel = ([(p.detach(), p._version) for p in params], self.construct_kernel())
        return cached[1]

    def forward(self, input: Tensor) -> Tensor:
        self._check_input(input)
        return self._conv(input, self._kernel())

    @torch.no_grad()
    def to_dense(self) -> nn.Module:
        """An equivalent ``nn.ConvNd`` (same outputs), for inference and export.

        A ``FastConv1d/2d/3d``: an ``nn.ConvNd`` that applies its kernel as this layer does, so it runs
        as fast (TorchScript gets a plain ``nn.ConvNd``).
        """
        dense = _DENSE[self.ndim](
            self.in_channels,
            self.out_channels,
            self.dilated_kernel_size,
            stride=self.stride,
            padding=self.padding,
            groups=self.groups,
            bias=self.bias is not None,
            padding_mode=self.padding_mode,
            device=self.weight.device,
            dtype=self.weight.dtype,
        )
        dense.weight.copy_(self.construct_kernel())
        if self.bias is not None:
            dense.bias.copy_(self.bias)
        return dense

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        version = local_metadata.get("version")
        if version is not None and version < self._version and any(prefix + p in state_dict for p in ("P", "SIG")):
            raise ValueError(
                f"{prefix or 'the state dict'}: saved by a DCLS layer of state-dict version {version}, which "
                f"this {type(self).__name__} (version {self._version}) cannot read as it is: from the reference "
                "library `dcls`, convert it with dcls_lib.from_reference_state_dict(state_dict, version, ndim) "
                "(or layer.load_reference_state_dict); saved by dcls_lib before the marker, load dict(state_dict), "
                "which drops the metadata"
            )
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def __prepare_scriptable__(self):
        """Refuse ``torch.jit.script`` with the way that works (TorchScript cannot compile the kernel's construction).

        Models made by ``timm.create_model("<name>_dcls")`` script as their dense equivalent instead.
        """
        raise NotImplementedError(
            f"torch.jit.script cannot compile {type(self).__name__} (its kernel construction uses Python that "
            "TorchScript lacks); script the equivalent dense model, dcls_lib.models.to_dense(copy.deepcopy(model)) "
            "(inference, taps frozen), or use torch.export, which traces DCLS layers as they are"
        )

    def load_reference_state_dict(self, state_dict, strict: bool = True):
        """Load a state dict saved by the reference library (its axis convention) into this layer."""
        from .reference import from_reference_state_dict

        converted = from_reference_state_dict(state_dict, self.version, self.ndim, self.dilated_kernel_size)
        return self.load_state_dict(converted, strict=strict)

    def extra_repr(self) -> str:
        s = (
            f"{self.in_channels}, {self.out_channels}, kernel_count={self.kernel_count}, "
            f"dilated_kernel_size={self.dilated_kernel_size}, version={self.version} "
            f"({self.interpolation.description})"
        )
        if any(st != 1 for st in self.stride):
            s += f", stride={self.stride}"
        if self.padding != (0,) * self.ndim:
            s += f", padding={self.padding}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode}"
        return s


class Dcls1d(DclsNd):
    """DCLS over (N, C, L) inputs: ``kernel_count`` taps per filter, placed in ``dilated_kernel_size`` cells."""

    ndim = 1


class Dcls2d(DclsNd):
    """DCLS over (N, C, H, W) inputs; ``P[0]`` moves taps along rows, ``P[1]`` along columns."""

    ndim = 2


class Dcls3d(DclsNd):
    """DCLS over (N, C, D, H, W) inputs; ``P[d]`` moves taps along spatial axis ``d``."""

    ndim = 3
