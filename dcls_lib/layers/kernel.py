"""Building the dense DCLS kernel from tap weights, positions and widths.

For tap ``k`` of filter ``n`` the kernel gets ``weight[n, k] * prod_d g_d[n, k, i_d]`` on cell ``i``,
where ``g_d`` is the 1-D profile of axis ``d`` (see ``interpolation``), and taps are summed.  Written
this way, a 17x17 kernel of 34 taps needs two (34 x 17) profile tables per filter instead of the
(34 x 17 x 17 x 2) tensors that a direct construction builds and keeps for backward.

``DclsKernel`` is a custom autograd function: it saves only its inputs (the layer's parameters) and
recomputes the profiles in backward, so building a kernel keeps no extra memory for backward.  Large
layers are processed in chunks of filters so that transient memory stays bounded too.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from .interpolation import Interpolation, get_interpolation

NORMALIZATION_EPS = 1e-7
CHUNK_ELEMENTS = 1 << 22  # transient tensor elements per chunk of filters (16 MiB in float32)
_AXES = "zyx"


def _row_cost(sizes: Sequence[int], kernel_count: int) -> int:
    """Rough count of transient elements per filter, to size the chunks."""
    cells = 1
    for s in sizes:
        cells *= s
    return kernel_count * (4 * sum(sizes) + cells // min(sizes)) + cells


def _chunks(rows: int, sizes: Sequence[int], kernel_count: int) -> list[slice]:
    step = max(1, CHUNK_ELEMENTS // _row_cost(sizes, kernel_count))
    return [slice(start, min(start + step, rows)) for start in range(0, rows, step)]


def _profiles(interp: Interpolation, sizes, P: Tensor, SIG: Optional[Tensor]):
    """Per axis: the profile (rows, taps, size_d) and its derivatives w.r.t. position and SIG."""
    out = []
    for d, size in enumerate(sizes):
        idx = torch.arange(size, device=P.device, dtype=P.dtype)
        q = P[d].unsqueeze(-1) + (size // 2)
        sig = None if SIG is None else SIG[d].unsqueeze(-1)
        out.append(interp.profile(idx, q, sig))
    return out


def _normalizer(gs: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
    """prod_d sum_i g_d + eps (the sum of each tap's weights over the whole grid), and the per-axis sums."""
    sums = [g.sum(-1) for g in gs]
    norm = sums[0]
    for s in sums[1:]:
        norm = norm * s
    return norm + NORMALIZATION_EPS, sums


def _contract(w: Tensor, gs: list[Tensor]) -> Tensor:
    """sum_k w[n, k] prod_d g_d[n, k, i_d]  ->  (rows, *sizes)."""
    rows = w.shape[0]
    acc = w.unsqueeze(-1) * gs[0]
    if len(gs) == 1:
        return acc.sum(1)
    for g in gs[1:-1]:
        acc = (acc.unsqueeze(-1) * g.unsqueeze(2)).flatten(2)
    out = torch.bmm(acc.transpose(1, 2), gs[-1])
    return out.view(rows, *(g.shape[-1] for g in gs))


def _leave_one_out(grad: Tensor, gs: list[Tensor], d: int) -> Tensor:
    """sum over all cells but axis d of grad * prod_{e != d} g_e  ->  (rows, taps, size_d)."""
    if len(gs) == 1:
        return grad.unsqueeze(1).expand_as(gs[0])
    axes = _AXES[-len(gs):]
    operands = [grad] + [g for e, g in enumerate(gs) if e != d]
    spec = "n" + axes + "".join(f",nk{a}" for e, a in enumerate(axes) if e != d)
    return torch.einsum(f"{spec}->nk{axes[d]}", *operands)


def _build(interp: Interpolation, sizes, weight: Tensor, P: Tensor, SIG: Optional[Tensor]) -> Tensor:
    gs = [g for g, _, _ in _profiles(interp, sizes, P, SIG)]
    w = weight / _normalizer(gs)[0] if interp.normalized else weight
    return _contract(w, gs)


def _build_backward(interp: Interpolation, sizes, weight, P, SIG, grad_kernel):
    profiles = _profiles(interp, sizes, P, SIG)
    gs = [g for g, _, _ in profiles]
    if interp.normalized:
        norm, sums = _normalizer(gs)
        w = weight / norm
    else:
        w = weight
    partial = [_leave_one_out(grad_kernel, gs, d) for d in range(len(gs))]
    grad_w = (partial[0] * gs[0]).sum(-1)
    grad_gs = [w.unsqueeze(-1) * h for h in partial]
    if interp.normalized:
        grad_weight = grad_w / norm
        grad_norm = -grad_w * w / norm
        for d in range(len(gs)):
            others = torch.ones_like(norm)
            for e, s in enumerate(sums):
                if e != d:
                    others = others * s
            grad_gs[d] = grad_gs[d] + (grad_norm * others).unsqueeze(-1)
    else:
        grad_weight = grad_w
    grad_P = torch.stack([(gg * dq).sum(-1) for gg, (_, dq, _) in zip(grad_gs, profiles)])
    grad_SIG = None
    if SIG is not None:
        grad_SIG = torch.stack([(gg * ds).sum(-1) for gg, (_, _, ds) in zip(grad_gs, profiles)])
    return grad_weight, grad_P, grad_SIG


class DclsKernel(torch.autograd.Function):
    """weight (rows, taps), P and SIG (ndim, rows, taps) -> dense kernel (rows, *sizes)."""

    @staticmethod
    def forward(ctx, weight, P, SIG, sizes, version):
        interp = get_interpolation(version)
        ctx.save_for_backward(weight, P, SIG)
        ctx.sizes, ctx.version = sizes, version
        rows, taps = weight.shape
        with torch.autocast(device_type=weight.device.type, enabled=False):
            parts = _chunks(rows, sizes, taps)
            if len(parts) == 1:
                return _build(interp, sizes, weight, P, SIG)
            out = weight.new_empty(rows, *sizes)
            for sl in parts:
                out[sl] = _build(interp, sizes, weight[sl], P[:, sl], None if SIG is None else SIG[:, sl])
            return out

    @staticmethod
    def backward(ctx, grad_kernel):
        weight, P, SIG = ctx.saved_tensors
        interp = get_interpolation(ctx.version)
        grad_kernel = grad_kernel.to(weight.dtype)
        rows, taps = weight.shape
        grad_weight, grad_P = torch.empty_like(weight), torch.empty_like(P)
        grad_SIG = None if SIG is None else torch.empty_like(SIG)
        with torch.autocast(device_type=weight.device.type, enabled=False):
            for sl in _chunks(rows, ctx.sizes, taps):
                sig = None if SIG is None else SIG[:, sl]
                gw, gp, gs = _build_backward(interp, ctx.sizes, weight[sl], P[:, sl], sig, grad_kernel[sl])
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
