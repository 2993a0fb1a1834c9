"""Leaky integrate-and-fire neurons with a surrogate gradient, over ``(batch, neurons, time)``.

The dynamics are those of SpikingJelly's ``LIFNode(decay_input=False, v_reset=0)``, which the
published delay models use, in discrete time with ``beta = 1 - 1 / tau``:

    H[t] = beta * V[t-1] + X[t]           (charge; V[-1] = 0)
    S[t] = 1 if H[t] >= threshold else 0  (fire)
    V[t] = H[t] * (1 - S[t])              (reset to zero; or H[t] - threshold * S[t], "subtract")

The spike's derivative is replaced in backward by the arctangent surrogate
``alpha / 2 / (1 + (pi / 2 * alpha * (H - threshold))^2)``, and the reset is detached from the graph
by default (``detach_reset``), as in the published models.

Why not snntorch: its neurons keep their state in module attributes, delay the reset by one step
by default and register every neuron ever built in a class-level list; a 40-line loop is easier to
check against the equations above.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..validation import check_choice

RESETS = ("zero", "subtract")


class ATanSpike(torch.autograd.Function):
    """Heaviside step forward, arctangent surrogate derivative backward."""

    @staticmethod
    def forward(ctx, x: Tensor, alpha: float) -> Tensor:
        ctx.save_for_backward(x)
        ctx.alpha = alpha
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        (x,) = ctx.saved_tensors
        alpha = ctx.alpha
        surrogate = (alpha / 2) / (1 + (math.pi / 2 * alpha * x) ** 2)
        return grad_output * surrogate, None


def spike(x: Tensor, alpha: float = 5.0) -> Tensor:
    """``1`` where ``x >= 0``; its gradient is the arctangent surrogate of slope ``alpha``."""
    return ATanSpike.apply(x, alpha)


def _check_tau(tau: float) -> float:
    """``tau`` in time steps: 1 forgets everything after a step, ``math.inf`` never forgets."""
    tau = float(tau)
    if math.isnan(tau) or tau < 1:
        raise ValueError(f"tau must be a number of time steps >= 1 (math.inf: no leak), got {tau!r}")
    return tau


def _check_input(input: Tensor, name: str) -> None:
    if input.dim() != 3:
        raise ValueError(f"{name} expects input of shape (batch, neurons, time), got {tuple(input.shape)}")


def lif_dynamics(
    input: Tensor,
    tau: float,
    threshold: float = 1.0,
    reset: str = "zero",
    alpha: float = 5.0,
    detach_reset: bool = True,
) -> tuple[Tensor, Tensor]:
    """Run LIF neurons over ``input`` ``(batch, neurons, time)``.

    Returns the spikes and the membrane potential ``H`` before reset (what is compared with the
    threshold), both ``(batch, neurons, time)``.
    """
    _check_input(input, "lif_dynamics")
    check_choice("reset", reset, RESETS)
    beta = 1.0 - 1.0 / _check_tau(tau)
    v = torch.zeros_like(input[..., 0])
    spikes, potentials = [], []
    for x_t in input.unbind(-1):
        h = beta * v + x_t
        s = spike(h - threshold, alpha)
        r = s.detach() if detach_reset else s
        v = h * (1 - r) if reset == "zero" else h - threshold * r
        spikes.append(s)
        potentials.append(h)
    return torch.stack(spikes, -1), torch.stack(potentials, -1)


class LIF(nn.Module):
    """A layer of leaky integrate-and-fire neurons: input currents ``(batch, neurons, time)`` -> spikes.

    ``tau`` is the membrane time constant in time steps (``tau = 1`` forgets everything after a step;
    the published SHD models use 10.05 ms at 10 ms steps).
    """

    def __init__(
        self, tau: float = 2.0, threshold: float = 1.0, reset: str = "zero", alpha: float = 5.0, detach_reset: bool = True
    ) -> None:
        super().__init__()
        check_choice("reset", reset, RESETS)
        self.tau = _check_tau(tau)
        self.threshold = float(threshold)
        self.reset = reset
        self.alpha = float(alpha)
        self.detach_reset = detach_reset

    def forward(self, input: Tensor) -> Tensor:
        spikes, _ = lif_dynamics(input, self.tau, self.threshold, self.reset, self.alpha, self.detach_reset)
        return spikes

    def extra_repr(self) -> str:
        return f"tau={self.tau}, threshold={self.threshold}, reset={self.reset}, alpha={self.alpha}"


class LeakyReadout(nn.Module):
    """Output neurons that never fire: their membrane potential ``V[t] = beta V[t-1] + X[t]`` is the
    network's output over time (the published models use LIF outputs with an unreachable threshold)."""

    def __init__(self, tau: float = 2.0) -> None:
        super().__init__()
        self.tau = _check_tau(tau)

    def forward(self, input: Tensor) -> Tensor:
        _check_input(input, "LeakyReadout")
        beta = 1.0 - 1.0 / self.tau
        v = torch.zeros_like(input[..., 0])
        trace = []
        for x_t in input.unbind(-1):
            v = beta * v + x_t
            trace.append(v)
        return torch.stack(trace, -1)

    def extra_repr(self) -> str:
        return f"tau={self.tau}"
