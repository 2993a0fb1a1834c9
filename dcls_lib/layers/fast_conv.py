"""nn.Conv1d/2d/3d that apply their kernel through ``convolve``: what ``DclsNd.to_dense`` returns.

A dense copy of a DCLS layer keeps its large kernel, so it needs the same fast path as the layer to
run as fast.  These are still ``nn.ConvNd`` (isinstance, state dicts, ``torch.export``); for
TorchScript, ``__prepare_scriptable__`` hands over a plain ``nn.ConvNd`` with the same parameters.
"""

from __future__ import annotations

from torch import Tensor, nn

from .convolve import convolve_padded


class _ConvolveForward:
    """Replaces nn.ConvNd's ``_conv_forward`` (dilation 1 only; other dilations keep PyTorch's)."""

    def _conv_forward(self, input: Tensor, weight: Tensor, bias):
        if any(d != 1 for d in self.dilation):
            return super()._conv_forward(input, weight, bias)
        return convolve_padded(
            input, weight, bias, self.stride, self._reversed_padding_repeated_twice, self.padding_mode, self.groups
        )

    def __prepare_scriptable__(self) -> nn.Module:
        plain = self._plain_class.__new__(self._plain_class)
        plain.__dict__.update(self.__dict__)
        return plain


class FastConv1d(_ConvolveForward, nn.Conv1d):
    _plain_class = nn.Conv1d


class FastConv2d(_ConvolveForward, nn.Conv2d):
    _plain_class = nn.Conv2d


class FastConv3d(_ConvolveForward, nn.Conv3d):
    _plain_class = nn.Conv3d
