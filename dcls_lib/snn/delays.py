"""Learnable synaptic delays: a 1-D DCLS across time with one tap per synapse.

A synapse from input ``i`` to neuron ``o`` delivers its input ``d[o, i]`` time steps late, scaled by
``w[o, i]``.  For a whole layer this is a 1-D convolution across time whose kernel for ``(o, i)`` is
zero except for one tap: learning the tap's position with DCLS learns the delay (Hammouamri,
Khalfaoui-Hassani and Masquelier, ICLR 2024; chapter 4 of the DCLS thesis).

Conventions of this module:

* Tensors are ``(batch, channels, time)``, as for ``nn.Conv1d``.
* A delay is an integer number of time steps in ``0 .. max_delay - 1``; the layer is causal:
  ``y[b, o, t] = sum_i w[o, i] * x[b, i, t - d[o, i]]`` (inputs before ``t = 0`` are zero).
* The input is padded with ``max_delay - 1`` zeros on the left, so the output has as many steps as
  the input (plus ``tail`` steps, see ``SynapticDelays``).  Because ``F.conv1d`` is a
  cross-correlation, kernel cell ``j`` carries delay ``max_delay - 1 - j``: the right end of the kernel
  is delay 0.  With the ``Dcls1d`` convention (``P`` = offset from the centre cell ``max_delay // 2``)
  this gives ``delay = (max_delay - 1 - max_delay // 2) - P``.  ``delays()`` and ``set_delays()``
  speak in delays so that nobody has to remember this.

The published recipe (:mod:`dcls_lib.recipe`, with ``position_lr_scale=100`` and
``SigmaSchedule.exponential``): positions learn with 100x the weights' learning rate and no weight
decay; the Gaussian's ``SIG`` is not learned but decays from ``max_delay // 2`` to 0.23 over the first
quarter of the epochs; at evaluation the kernel is a triangle of ``SIG = 0`` at positions rounded to
integers, i.e. every synapse has an exact integer delay.
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import recipe
from ..layers import Dcls1d, construct_kernel, position_limits
from ..validation import check_positive_int

TRAIN_VERSIONS = ("gauss", "max")


class SynapticDelays(nn.Module):
    """A fully connected layer whose every synapse has a weight and a learnable integer delay.

    Args:
        in_features, out_features: presynaptic and postsynaptic neurons.
        max_delay: delays are ``0 .. max_delay - 1`` steps; ``max_delay=1`` is a plain linear layer
            applied at every time step.
        version: interpolation while training, ``"gauss"`` (the recipe) or ``"max"`` (triangle).
        learn_delays: if False the delays are fixed integers (random at initialisation, see
            ``set_delays``) and the kernel is always the exact integer-delay kernel.
        discrete_eval: in ``eval()`` mode use the recipe's evaluation kernel (triangle, ``SIG = 0``,
            rounded positions) instead of the training interpolation.
        tail: extra output steps after the input's end, so that spikes delayed past the end still
            arrive (the published SHD models use ``(max_delay - 1) // 2``).
        bias: add a learnable bias per output neuron (the published models use none).
        factory: ``device=`` and ``dtype=`` of the parameters, passed to the ``Dcls1d`` that holds them.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        max_delay: int,
        version: str = "gauss",
        learn_delays: bool = True,
        discrete_eval: bool = True,
        tail: int = 0,
        bias: bool = False,
        **factory,
    ) -> None:
        super().__init__()
        if set(factory) - {"device", "dtype"}:
            raise TypeError(f"SynapticDelays got unexpected keyword arguments {sorted(set(factory) - {'device', 'dtype'})}")
        check_positive_int(max_delay=max_delay)
        if version not in TRAIN_VERSIONS:
            raise ValueError(f"version must be one of {TRAIN_VERSIONS} (interpolations with a SIG), got {version!r}")
        if not isinstance(tail, int) or isinstance(tail, bool) or tail < 0:
            raise ValueError(f"tail must be an int >= 0, got {tail!r}")
        self.in_features = in_features
        self.out_features = out_features
        self.max_delay = max_delay
        self.learn_delays = learn_delays
        self.discrete_eval = discrete_eval
        self.tail = tail
        self.dcls = Dcls1d(
            in_features, out_features, kernel_count=1, dilated_kernel_size=max_delay, bias=bias,
            version=version, **factory,
        )
        self.reset_parameters()

    # -- parameters -------------------------------------------------------------------------------
    @property
    def weight(self) -> nn.Parameter:
        """``(out, in, 1)``: one weight per synapse."""
        return self.dcls.weight

    @property
    def positions(self) -> nn.Parameter:
        """``(1, out, in, 1)``: the Dcls1d tap offsets from the kernel centre (see ``delays()``)."""
        return self.dcls.P

    @property
    def delay_offset(self) -> int:
        """``delay = delay_offset - P``: the delay of a tap at the kernel centre."""
        return self.max_delay - 1 - self.max_delay // 2

    @property
    def sigma(self) -> float:
        """The current ``SIG`` (the same for every synapse; the schedule sets it)."""
        return float(self.dcls.SIG.detach().flatten()[0])

    def reset_parameters(self) -> None:
        """As the published models: Kaiming-uniform weights (ReLU gain), delays uniform over the range,
        ``SIG = max_delay // 2`` and not learned."""
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.dcls.weight, nonlinearity="relu")
            if self.dcls.bias is not None:
                nn.init.zeros_(self.dcls.bias)
            low, high = position_limits(self.max_delay)
            if self.learn_delays:
                self.dcls.P.uniform_(low, high)
            else:
                self.dcls.P.copy_(torch.randint(low, high + 1, self.dcls.P.shape).to(self.dcls.P))
        self.dcls.P.requires_grad_(self.learn_delays)
        self.dcls.SIG.requires_grad_(False)
        self.set_sigma(self.max_delay // 2)

    def set_sigma(self, value: float) -> None:
        """Set the interpolation width ``SIG`` of every synapse (the recipe schedules it, see ``SigmaSchedule``)."""
        recipe.set_sigma(self, value)

    @torch.no_grad()
    def clamp_parameters(self) -> None:
        """Keep every delay in ``0 .. max_delay - 1``; call after each optimiser step."""
        self.dcls.clamp_parameters()

    @torch.no_grad()
    def round_positions(self) -> None:
        """Round every delay to an integer in place (for fine-tuning or exporting the discrete model)."""
        self.dcls.P.round_()
        self.dcls.clamp_parameters()

    def delays(self, rounded: bool = True) -> Tensor:
        """``(out, in)`` delays in time steps: integers (``long``) as evaluation uses them, or the raw
        real-valued delays while training."""
        delays = self.delay_offset - self.dcls.P.detach()[0, :, :, 0]
        if not rounded:
            return delays
        return torch.round(delays).clamp_(0, self.max_delay - 1).long()

    @torch.no_grad()
    def set_delays(self, delays: Tensor) -> None:
        """Set every synapse's delay from an ``(out, in)`` tensor of steps in ``0 .. max_delay - 1``."""
        delays = torch.as_tensor(delays)
        shape = (self.out_features, self.in_features)
        if tuple(delays.shape) != shape:
            raise ValueError(f"delays must have shape {shape} (out, in), got {tuple(delays.shape)}")
        if delays.numel() and (delays.min() < 0 or delays.max() > self.max_delay - 1):
            raise ValueError(f"delays must lie in 0 .. {self.max_delay - 1}, got {delays.min()} .. {delays.max()}")
        self.dcls.P.copy_((self.delay_offset - delays.to(self.dcls.P)).view_as(self.dcls.P))

    # -- forward ----------------------------------------------------------------------------------
    def uses_discrete_kernel(self) -> bool:
        return not self.learn_delays or (self.discrete_eval and not self.training)

    def kernel(self, discrete: bool | None = None) -> Tensor:
        """The ``(out, in, max_delay)`` convolution kernel: interpolated (training) or exact integer
        delays (triangle, ``SIG = 0``, rounded positions: one nonzero cell per synapse)."""
        if discrete is None:
            discrete = self.uses_discrete_kernel()
        if not discrete:
            return self.dcls.construct_kernel()
        low, high = position_limits(self.max_delay)
        rounded = self.dcls.P.detach().round().clamp(low, high)
        return construct_kernel(self.dcls.weight, rounded, torch.zeros_like(rounded), (self.max_delay,), "max")

    def forward(self, input: Tensor) -> Tensor:
        if input.dim() != 3 or input.shape[1] != self.in_features:
            raise ValueError(
                f"SynapticDelays expects input of shape (batch, in_features={self.in_features}, time), "
                f"got {tuple(input.shape)}"
            )
        padded = F.pad(input, (self.max_delay - 1, self.tail))
        return F.conv1d(padded, self.kernel(), self.dcls.bias)

    def extra_repr(self) -> str:
        s = f"{self.in_features}, {self.out_features}, max_delay={self.max_delay}, version={self.dcls.version}"
        if not self.learn_delays:
            s += ", learn_delays=False"
        if self.tail:
            s += f", tail={self.tail}"
        return s


def delay_layers(model: nn.Module) -> Iterator[SynapticDelays]:
    return (m for m in model.modules() if isinstance(m, SynapticDelays))
