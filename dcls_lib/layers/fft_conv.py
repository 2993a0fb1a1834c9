"""Depthwise convolution through the FFT, for large kernels on the CPU.

PyTorch's CPU depthwise convolution costs in proportion to the kernel's area: a 17x17 kernel is
several times slower than a 7x7 one (and worse in channels-last), while a DCLS layer needs the
large grid.  Through the FFT the cost barely depends on the kernel size.

The convolution is a circular cross-correlation on a grid of ``n`` cells per axis, large enough that
nothing wraps onto an output: the input sits at the start of the grid, the zero padding is the
grid's tail, and the kernel is rolled so that its cell ``left`` (the left padding) sits at 0.  The
backward pass is written out with real FFTs (autograd through ``rfftn`` would use full complex
FFTs): ``grad_input`` is the grad's circular convolution with the kernel, ``grad_kernel`` the
input's circular correlation with the grad, summed over the batch.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def fft_size(minimum: int) -> int:
    """The smallest n >= minimum whose only prime factors are 2, 3 and 5 (fast for pocketfft)."""
    n = minimum
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def grid_sizes(in_sizes: Sequence[int], kernel_sizes: Sequence[int], pads: Sequence[tuple[int, int]]) -> list[int]:
    """Per axis, the FFT length that holds the kernel and every output, free of wrap-around.

    Output ``o`` reads input cells ``o - left + k``: those below 0 must land in the zero tail
    (n >= in + left) and the last one read must not wrap (n >= out + kernel - 1 - left = in + right).
    """
    return [
        fft_size(max(size + max(left, right), size + left + right - k + 1, k))
        for size, k, (left, right) in zip(in_sizes, kernel_sizes, pads)
    ]


class DepthwiseFFTConv(torch.autograd.Function):
    """input (N, C, *S), kernel (C*m, 1, *K), zero pads ((left, right) per axis), stride 1 -> (N, C*m, *O)."""

    @staticmethod
    def forward(ctx, input, kernel, pads):
        nd = kernel.dim() - 2
        dims = tuple(range(-nd, 0))
        in_sizes, k_sizes = input.shape[-nd:], kernel.shape[-nd:]
        out_sizes = [s + left + right - k + 1 for s, k, (left, right) in zip(in_sizes, k_sizes, pads)]
        grid = grid_sizes(in_sizes, k_sizes, pads)
        batch, channels = input.shape[:2]
        multiplier = kernel.shape[0] // channels
        spectrum = torch.fft.rfftn(input, s=grid, dim=dims).unsqueeze(2)  # (N, C, 1, *F)
        k_spectrum = _kernel_spectrum(kernel, grid, pads).view(channels, multiplier, *spectrum.shape[3:])
        out = torch.fft.irfftn(spectrum * k_spectrum.conj(), s=grid, dim=dims)  # (N, C, m, *grid)
        ctx.save_for_backward(spectrum, k_spectrum)
        ctx.shapes = (tuple(in_sizes), tuple(k_sizes), tuple(pads), grid)
        out = out[(..., *(slice(0, o) for o in out_sizes))]
        return out.reshape(batch, channels * multiplier, *out_sizes)

    @staticmethod
    def backward(ctx, grad_out):
        spectrum, k_spectrum = ctx.saved_tensors
        in_sizes, k_sizes, pads, grid = ctx.shapes
        nd = len(grid)
        dims = tuple(range(-nd, 0))
        batch, channels, multiplier = grad_out.shape[0], k_spectrum.shape[0], k_spectrum.shape[1]
        grad_spectrum = torch.fft.rfftn(grad_out, s=grid, dim=dims)
        grad_spectrum = grad_spectrum.view(batch, channels, multiplier, *grad_spectrum.shape[2:])
        grad_input = grad_kernel = None
        if ctx.needs_input_grad[0]:
            product = grad_spectrum * k_spectrum  # (N, C, m, *F)
            summed = product.sum(2) if multiplier > 1 else product.squeeze(2)  # (N, C, *F)
            grad_input = torch.fft.irfftn(summed, s=grid, dim=dims)[(..., *(slice(0, s) for s in in_sizes))]
        if ctx.needs_input_grad[1]:
            correlation = torch.fft.irfftn((spectrum * grad_spectrum.conj()).sum(0), s=grid, dim=dims)
            # cell k of the kernel sat at (k - left) mod n: roll it back and keep the first K cells
            rolled = correlation.roll([left for left, _ in pads], dims)
            grad_kernel = rolled[(..., *(slice(0, k) for k in k_sizes))].reshape(channels * multiplier, 1, *k_sizes)
        return grad_input, grad_kernel, None


def _kernel_spectrum(kernel: Tensor, grid: Sequence[int], pads: Sequence[tuple[int, int]]) -> Tensor:
    """rfftn of the kernel placed on the grid with its cell ``left`` at index 0 (C*m, *F)."""
    nd = len(grid)
    dims = tuple(range(-nd, 0))
    placed = kernel.new_zeros(kernel.shape[0], *grid)
    placed[(slice(None), *(slice(0, k) for k in kernel.shape[-nd:]))] = kernel[:, 0]
    placed = placed.roll([-left for left, _ in pads], dims)
    return torch.fft.rfftn(placed, dim=dims)


def depthwise_fft_conv(input: Tensor, kernel: Tensor, pads: Sequence[tuple[int, int]]) -> Tensor:
    """``F.convNd(input, kernel, padding=pads, groups=C)`` with stride 1 and dilation 1, through the FFT."""
    return DepthwiseFFTConv.apply(input, kernel, tuple(tuple(p) for p in pads))
