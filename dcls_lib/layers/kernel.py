"""Building the dense DCLS kernel from tap weights, positions and widths.

For tap ``k`` of filter ``n`` the kernel gets ``weight[n, k] * prod_d g_d[n, k, i_d]`` on cell ``i``,
where ``g_d`` is the 1-D profile of axis ``d`` (see ``interpolation``), and taps are summed.  Two
builders use that separability:

* ``DenseProfiles`` (gauss, max): one (taps x size_d) profile table per axis and filter, contracted
  with a batched matrix product.  A 17x17 kernel of 34 taps needs two (34 x 17) tables per filter
  instead of the (34 x 17 x 17 x 2) tensors a direct construction builds and keeps for backward.
* ``Corners`` (v0, v1): a bilinear tap touches two cells per axis, so each tap scatters its 2^D
  corners into the kernel; backward gathers them.  Its cost does not grow with the kernel size,
  which matters for the dense (groups=1) layers of ResNet.

``DclsKernel`` is a custom autograd function: it saves only its inputs (the layer's parameters) and
recomputes what it needs in backward, so building a kernel keeps no extra memory for backward.  Large
layers are processed in chunks of filters so that transient memory stays bounded too.  The kernel
never holds denormal floats (``flush_denormals_``).
"""

from __future__ import annotations

import contextlib
import math
from typing import Optional, Sequence

import torch
from torch import Tensor

from .interpolation import Interpolation, get_interpolation

NORMALIZATION_EPS = 1e-7
CHUNK_ELEMENTS = 1 << 22  # transient tensor elements per chunk of filters (16 MiB in float32)
_AXES = "zyx"


def _normalizer(sums: list[Tensor]) -> Tensor:
    """prod_d sums_d + eps: the total of each tap's weights over the whole grid."""
    return math.prod(sums[1:], start=sums[0]) + NORMALIZATION_EPS


def _normalization_backward(grad_w: Tensor, w: Tensor, norm: Tensor, sums: list[Tensor], grad_gs: list[Tensor]):
    """Through w = weight / norm: the weight's gradient, and each axis' share added to ``grad_gs``."""
    grad_norm = -grad_w * w / norm
    for d in range(len(sums)):
        others = math.prod((s for e, s in enumerate(sums) if e != d), start=torch.ones_like(norm))
        grad_gs[d] = grad_gs[d] + (grad_norm * others).unsqueeze(-1)
    return grad_w / norm


class DenseProfiles:
    """Kernel = sum over taps of weight x outer product of full 1-D profiles (any interpolation)."""

    @staticmethod
    def row_cost(sizes: Sequence[int], taps: int) -> int:
        cells = math.prod(sizes)
        return taps * (4 * sum(sizes) + cells // min(sizes)) + cells

    @staticmethod
    def _profiles(interp: Interpolation, sizes, P: Tensor, SIG: Optional[Tensor]):
        """Per axis: the profile (rows, taps, size_d) and its derivatives w.r.t. position and SIG."""
        out = []
        for d, size in enumerate(sizes):
            idx = torch.arange(size, device=P.device, dtype=P.dtype)
            sig = None if SIG is None else SIG[d].unsqueeze(-1)
            out.append(interp.profile(idx, P[d].unsqueeze(-1) + (size // 2), sig))
        return out

    @staticmethod
    def _contract(w: Tensor, gs: list[Tensor]) -> Tensor:
        """sum_k w[n, k] prod_d g_d[n, k, i_d]  ->  (rows, *sizes)."""
        acc = w.unsqueeze(-1) * gs[0]
        if len(gs) == 1:
            return acc.sum(1)
        for g in gs[1:-1]:
            acc = (acc.unsqueeze(-1) * g.unsqueeze(2)).flatten(2)
        out = torch.bmm(acc.transpose(1, 2), gs[-1])
        return out.view(w.shape[0], *(g.shape[-1] for g in gs))

    @staticmethod
    def _leave_one_out(grad: Tensor, gs: list[Tensor], d: int) -> Tensor:
        """sum over all cells but axis d of grad * prod_{e != d} g_e  ->  (rows, taps, size_d)."""
        if len(gs) == 1:
            return grad.unsqueeze(1).expand_as(gs[0])
        axes = _AXES[-len(gs):]
        operands = [grad] + [g for e, g in enumerate(gs) if e != d]
        spec = "n" + axes + "".join(f",nk{a}" for e, a in enumerate(axes) if e != d)
        return torch.einsum(f"{spec}->nk{axes[d]}", *operands)

    @classmethod
    def forward(cls, interp, sizes, weight, P, SIG):
        gs = [g for g, _, _ in cls._profiles(interp, sizes, P, SIG)]
        w = weight / _normalizer([g.sum(-1) for g in gs]) if interp.normalized else weight
        return cls._contract(w, gs)

    @classmethod
    def backward(cls, interp, sizes, weight, P, SIG, grad_kernel):
        profiles = cls._profiles(interp, sizes, P, SIG)
        gs = [g for g, _, _ in profiles]
        sums = [g.sum(-1) for g in gs]
        norm = _normalizer(sums) if interp.normalized else None
        w = weight / norm if interp.normalized else weight
        partial = [cls._leave_one_out(grad_kernel, gs, d) for d in range(len(gs))]
        grad_w = (partial[0] * gs[0]).sum(-1)
        grad_gs = [w.unsqueeze(-1) * h for h in partial]
        grad_weight = _normalization_backward(grad_w, w, norm, sums, grad_gs) if interp.normalized else grad_w
        grad_P = torch.stack([(gg * dq).sum(-1) for gg, (_, dq, _) in zip(grad_gs, profiles)])
        grad_SIG = None
        if SIG is not None:
            grad_SIG = torch.stack([(gg * ds).sum(-1) for gg, (_, _, ds) in zip(grad_gs, profiles)])
        return grad_weight, grad_P, grad_SIG


class Corners:
    """Kernel = each tap's 2^D bilinear corners scattered into the grid (v0, v1)."""

    @staticmethod
    def row_cost(sizes: Sequence[int], taps: int) -> int:
        return taps * (2 ** len(sizes)) * 8 + math.prod(sizes)

    @staticmethod
    def _axes(interp: Interpolation, sizes, P: Tensor):
        """Per axis: the two cells' weights and slopes (0 off the grid) and their flat-index offsets."""
        weights, slopes, offsets = [], [], []
        stride = math.prod(sizes)
        for d, size in enumerate(sizes):
            stride //= size
            first, w, s = interp.corners(P[d] + (size // 2))
            cells = first.long().unsqueeze(-1) + torch.arange(2, device=P.device)
            on_grid = ((cells >= 0) & (cells < size)).to(P.dtype)
            weights.append(w * on_grid)
            slopes.append(s * on_grid)
            offsets.append(cells.clamp(0, size - 1) * stride)
        return weights, slopes, offsets

    @staticmethod
    def _outer(parts: list[Tensor], combine) -> Tensor:
        """(rows, taps, 2) per axis -> (rows, taps, 2, ..., 2) combined over every corner."""
        acc = parts[0]
        for part in parts[1:]:
            acc = combine(acc.unsqueeze(-1), part.view(*part.shape[:2], *([1] * (acc.dim() - 2)), 2))
        return acc

    @classmethod
    def forward(cls, interp, sizes, weight, P, SIG):
        weights, _, offsets = cls._axes(interp, sizes, P)
        w = weight / _normalizer([g.sum(-1) for g in weights]) if interp.normalized else weight
        values = (w.view(*w.shape, *([1] * len(sizes))) * cls._outer(weights, torch.mul)).flatten(1)
        index = cls._outer(offsets, torch.add).flatten(1)
        kernel = weight.new_zeros(weight.shape[0], math.prod(sizes))
        return kernel.scatter_add_(1, index, values).view(weight.shape[0], *sizes)

    @classmethod
    def backward(cls, interp, sizes, weight, P, SIG, grad_kernel):
        D = len(sizes)
        weights, slopes, offsets = cls._axes(interp, sizes, P)
        rows, taps = weight.shape
        index = cls._outer(offsets, torch.add)
        corner_grad = grad_kernel.reshape(rows, -1).gather(1, index.flatten(1)).view(index.shape)
        sums = [g.sum(-1) for g in weights]
        norm = _normalizer(sums) if interp.normalized else None
        w = weight / norm if interp.normalized else weight
        grad_w = (corner_grad * cls._outer(weights, torch.mul)).flatten(2).sum(-1)
        grad_gs = []
        for d in range(D):
            others = [g if e != d else torch.ones_like(g) for e, g in enumerate(weights)]
            summed = corner_grad * cls._outer(others, torch.mul)
            other_axes = [a for a in range(2, 2 + D) if a != 2 + d]
            grad_gs.append(w.unsqueeze(-1) * (summed.sum(other_axes) if other_axes else summed))
        grad_weight = _normalization_backward(grad_w, w, norm, sums, grad_gs) if interp.normalized else grad_w
        grad_P = torch.stack([(gg * s).sum(-1) for gg, s in zip(grad_gs, slopes)])
        return grad_weight, grad_P, None


def flush_denormals_(kernel: Tensor) -> Tensor:
    """Set cells below the dtype's smallest normal number to exactly 0, in place.

    A Gaussian's tails reach denormal floats (2,794 of the 27,744 cells of a C=96, 17x17, 34-tap
    kernel in float32), and CPUs compute on denormals many times slower: a convolution with such a
    kernel ran 1.5x slower on an Intel Xeon.  The change is below any float tolerance, and gradients
    do not see it: backward recomputes from the parameters.
    """
    return kernel.masked_fill_(kernel.abs() < torch.finfo(kernel.dtype).tiny, 0)


def _autocast_off(device_type: str):
    """Build in the parameters' dtype; devices without autocast (``meta``) need nothing."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def _builder(interp: Interpolation):
    return Corners if interp.corners is not None else DenseProfiles


def _chunks(builder, rows: int, sizes: Sequence[int], taps: int) -> list[slice]:
    step = max(1, CHUNK_ELEMENTS // builder.row_cost(sizes, taps))
    return [slice(start, min(start + step, rows)) for start in range(0, rows, step)]


class DclsKernel(torch.autograd.Function):
    """weight (rows, taps), P and SIG (ndim, rows, taps) -> dense kernel (rows, *sizes)."""

    @staticmethod
    def forward(ctx, weight, P, SIG, sizes, version):
        interp = get_interpolation(version)
        builder = _builder(interp)
        ctx.save_for_backward(weight, P, SIG)
        ctx.sizes, ctx.version = sizes, version
        rows, taps = weight.shape
        with _autocast_off(weight.device.type):
            parts = _chunks(builder, rows, sizes, taps)
            if len(parts) == 1:
                return flush_denormals_(builder.forward(interp, sizes, weight, P, SIG))
            out = weight.new_empty(rows, *sizes)
            for sl in parts:
                sig = None if SIG is None else SIG[:, sl]
                out[sl] = builder.forward(interp, sizes, weight[sl], P[:, sl], sig)
            return flush_denormals_(out)

    @staticmethod
    def backward(ctx, grad_kernel):
        weight, P, SIG = ctx.saved_tensors
        interp = get_interpolation(ctx.version)
        builder = _builder(interp)
        grad_kernel = grad_kernel.to(weight.dtype)
        rows, taps = weight.shape
        grad_weight, grad_P = torch.empty_like(weight), torch.empty_like(P)
        grad_SIG = None if SIG is None else torch.empty_like(SIG)
        with _autocast_off(weight.device.type):
            for sl in _chunks(builder, rows, ctx.sizes, taps):
                sig = None if SIG is None else SIG[:, sl]
                gw, gp, gs = builder.backward(interp, ctx.sizes, weight[sl], P[:, sl], sig, grad_kernel[sl])
                grad_weight[sl], grad_P[:, sl] = gw, gp
                if gs is not None:
                    grad_SIG[:, sl] = gs
        return grad_weight, grad_P, grad_SIG, None, None


def construct_kernel(
    weight: Tensor, P: Tensor, SIG: Optional[Tensor], dilated_kernel_size: Sequence[int], version: str
) -> Tensor:
    """The dense kernel ``(out, in/groups, *dilated_kernel_size)`` of a DCLS layer's parameters.

    ``weight`` is ``(out, in/groups, taps)``; ``P`` and ``SIG`` are ``(ndim, out, in/groups, taps)``
    with ``P[d]`` the offset from the kernel centre along spatial axis ``d``.
    """
    interp = get_interpolation(version)
    sizes = tuple(int(s) for s in dilated_kernel_size)
    out_ch, in_ch, taps = weight.shape
    if P.shape != (len(sizes), out_ch, in_ch, taps):
        raise ValueError(f"P must have shape {(len(sizes), out_ch, in_ch, taps)}, got {tuple(P.shape)}")
    if interp.has_sigma:
        if SIG is None or SIG.shape != P.shape:
            raise ValueError(f"version {interp.name!r} needs SIG of shape {tuple(P.shape)}")
        SIG = SIG.reshape(len(sizes), -1, taps)
    else:
        SIG = None
    kernel = DclsKernel.apply(weight.reshape(-1, taps), P.reshape(len(sizes), -1, taps), SIG, sizes, interp.name)
    return kernel.view(out_ch, in_ch, *sizes)
