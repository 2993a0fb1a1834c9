"""Applying a dense kernel: ``F.convNd`` with dilation 1, by the fastest exact method for the case.

Every DCLS layer (and the dense convolutions ``to_dense`` makes) ends in ``convolve``.  It gives the
same result as ``F.convNd(input, kernel, bias, stride, padding, 1, groups)`` to float tolerance, in
forward and backward, and chooses how:

1. **Crop** the kernel to the cells that can touch an input cell at all (always, on every device:
   exact).  A late ConvNeXt stage convolves a 7x7 map with a 17x17 kernel: only its central 13x13
   reaches the input.
2. **FFT** (``fft_conv``) when ``uses_fft`` says so: CPU, float32/float64, 2-D, depthwise (one input
   channel per group), stride 1 and a (cropped) kernel of at least ``FFT_MIN_CELLS`` cells.  Measured
   on 2 CPU cores (batch 4, depthwise, forward+backward): at 17x17 the FFT is 5-15x faster than
   PyTorch's direct depthwise convolution in either memory format at 56x56 and 28x28 and faster at
   14x14; at 7x7 to 11x11 on 56x56, the direct convolution in channels-last is faster.  Without a
   gradient (inference) the direct convolution in channels-last is faster at 17x17 too, at every
   ConvNeXt-T stage (forward only, batch 4: 3.4 against 10-13 ms at 96x56x56, 0.6 against 3.1 ms
   at 768x7x7): its backward is what is slow.  CUDA keeps cuDNN (not measured here).
3. Otherwise ``F.convNd``; on the CPU a float32 ``conv3d`` with a stride above 1 runs with oneDNN
   off, forward and backward: oneDNN's weight gradient is garbage there in torch 2.14 (NaN, 1e32).
"""

from __future__ import annotations

import contextlib
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .fft_conv import depthwise_fft_conv

FFT_MIN_CELLS = 13 * 13
_CONVS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}

Pads = Sequence[tuple[int, int]]


def pads_from_reversed(reversed_pads: Sequence[int]) -> list[tuple[int, int]]:
    """nn.ConvNd's ``_reversed_padding_repeated_twice`` (last axis first) as (left, right) per axis."""
    pairs = [(reversed_pads[i], reversed_pads[i + 1]) for i in range(0, len(reversed_pads), 2)]
    return pairs[::-1]


def crop_to_reach(kernel: Tensor, in_sizes: Sequence[int], stride: Sequence[int], pads: Pads):
    """The kernel cut to the cells some output reads from the input, and the pads that keep the outputs.

    Output ``o`` reads input cell ``o * stride - left + k``; cells ``k`` that no output places inside
    ``[0, in)`` only ever meet padding zeros.
    """
    nd = len(in_sizes)
    cuts, new_pads = [], []
    for d in range(nd):
        size, k, s, (left, right) = in_sizes[d], kernel.shape[2 + d], stride[d], pads[d]
        outputs = (size + left + right - k) // s + 1
        first = max(0, left - (outputs - 1) * s)
        last = min(k - 1, size - 1 + left)
        cuts.append(slice(first, last + 1))
        new_pads.append((left - first, right - (k - 1 - last)))
    if all(c.start == 0 and c.stop == kernel.shape[2 + d] for d, c in enumerate(cuts)):
        return kernel, list(pads)
    return kernel[(slice(None), slice(None), *cuts)], new_pads


def _is_channels_last(input: Tensor) -> bool:
    """Strictly channels-last (a tensor with one channel or one pixel is both formats: not counted)."""
    return input.is_contiguous(memory_format=torch.channels_last) and not input.is_contiguous()


def needs_grad(*tensors: Tensor) -> bool:
    """Whether autograd records an op on ``tensors`` (grad mode on and one of them requires a gradient)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def uses_fft(input: Tensor, kernel: Tensor, stride: Sequence[int], groups: int) -> bool:
    """The measured rule for the FFT path (see the module docstring)."""
    channels_last_inference = input.dim() == 4 and _is_channels_last(input) and not needs_grad(input, kernel)
    return (
        not channels_last_inference
        and input.device.type == "cpu"
        and input.dtype in (torch.float32, torch.float64)
        and kernel.dtype == input.dtype
        and kernel.dim() == 4
        and kernel.shape[1] == 1
        and groups == input.shape[1]
        and all(s == 1 for s in stride)
        and kernel.shape[2] * kernel.shape[3] >= FFT_MIN_CELLS
    )


@contextlib.contextmanager
def _onednn_off():
    """oneDNN off and nothing else changed (``torch.backends.mkldnn.flags`` also resets TF32 and precision)."""
    was = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = was


class _Conv3dWithoutOneDNN(torch.autograd.Function):
    """conv3d whose forward and backward both run with oneDNN off (the backend is chosen at each)."""

    @staticmethod
    def forward(ctx, input, kernel, stride, groups):
        ctx.save_for_backward(input, kernel)
        ctx.stride, ctx.groups = stride, groups
        with _onednn_off():
            return F.conv3d(input, kernel, None, stride, 0, 1, groups)

    @staticmethod
    def backward(ctx, grad_out):
        input, kernel = ctx.saved_tensors
        wanted = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], False)
        with _onednn_off():
            grad_input, grad_kernel, _ = torch.ops.aten.convolution_backward(
                grad_out, input, kernel, None, ctx.stride, (0, 0, 0), (1, 1, 1), False, (0, 0, 0), ctx.groups, wanted
            )
        return grad_input, grad_kernel, None, None


def _avoids_onednn(input: Tensor, stride: Sequence[int]) -> bool:
    return (
        input.dim() == 5
        and input.device.type == "cpu"
        and input.dtype == torch.float32
        and any(s > 1 for s in stride)
        and not torch.compiler.is_compiling()
    )


def convolve_padded(
    input: Tensor,
    kernel: Tensor,
    bias: Optional[Tensor],
    stride: Sequence[int],
    reversed_pads: Sequence[int],
    padding_mode: str,
    groups: int,
) -> Tensor:
    """``convolve`` with nn.ConvNd's padding: ``_reversed_padding_repeated_twice`` and ``padding_mode``."""
    if padding_mode != "zeros":
        input = F.pad(input, list(reversed_pads), mode=padding_mode)
        return convolve(input, kernel, bias, stride, [(0, 0)] * (kernel.dim() - 2), groups)
    return convolve(input, kernel, bias, stride, pads_from_reversed(reversed_pads), groups)


def convolve(
    input: Tensor, kernel: Tensor, bias: Optional[Tensor], stride: Sequence[int], pads: Pads, groups: int
) -> Tensor:
    """``F.convNd(input, kernel, bias, stride, padding, 1, groups)`` with zero ``pads`` ((left, right) per axis).

    ``input`` is ``(N, C, *S)`` or unbatched ``(C, *S)``; the output keeps the input's memory format.
    """
    nd = kernel.dim() - 2
    if input.dim() == nd + 1:
        return convolve(input.unsqueeze(0), kernel, bias, stride, pads, groups).squeeze(0)
    kernel, pads = crop_to_reach(kernel, input.shape[2:], stride, pads)
    if uses_fft(input, kernel, stride, groups):
        out = depthwise_fft_conv(input, kernel, pads)
        if bias is not None:
            out = out + bias.view(-1, *([1] * nd))
        if _is_channels_last(input):
            out = out.contiguous(memory_format=torch.channels_last)
        return out
    symmetric = all(left == right for left, right in pads)
    if not symmetric or _avoids_onednn(input, stride):
        input = F.pad(input, [p for pair in reversed(pads) for p in pair])
        pads = [(0, 0)] * nd
    if _avoids_onednn(input, stride):
        out = _Conv3dWithoutOneDNN.apply(input, kernel, tuple(stride), groups)
        return out if bias is None else out + bias.view(-1, 1, 1, 1)
    return _CONVS[nd](input, kernel, bias, stride, [left for left, _ in pads], 1, groups)
