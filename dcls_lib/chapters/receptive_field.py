"""Receptive fields: how far a stack of convolutions can see, and how far it actually looks.

The *theoretical* receptive field (TRF) of a stack is the set of input pixels that can influence
one output pixel: ``1 + sum_l (footprint_l - 1) * prod_{m<l} stride_m`` pixels wide.  The *effective*
receptive field (ERF, Luo et al., 2016) measures how strongly each input pixel does influence it:
the magnitude of the gradient of the centre output with respect to the input, averaged over random
inputs (and weights).  Stacks of small kernels have a Gaussian-like ERF that grows only like the
square root of the depth; dilated kernels see further but on a regular grid with holes; DCLS keeps
the few weights of a small kernel and learns where to put them in a large footprint.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ..layers import Dcls2d, position_limits
from ..validation import check_positive_int

IntOrSeq = Union[int, Sequence[int]]


def footprint(kernel_size: int, dilation: int = 1) -> int:
    """Width in pixels covered by a kernel of ``kernel_size`` taps spaced ``dilation`` apart."""
    check_positive_int(kernel_size=kernel_size, dilation=dilation)
    return dilation * (kernel_size - 1) + 1


def theoretical_receptive_field(kernel_sizes: Sequence[int], dilations: IntOrSeq = 1, strides: IntOrSeq = 1) -> int:
    """Width of the input region that can influence one output pixel of a stack of convolutions."""
    depth = len(kernel_sizes)
    dilations = [dilations] * depth if isinstance(dilations, int) else list(dilations)
    strides = [strides] * depth if isinstance(strides, int) else list(strides)
    if len(dilations) != depth or len(strides) != depth:
        raise ValueError(f"need one dilation and one stride per layer ({depth}), got {dilations} and {strides}")
    width, jump = 1, 1
    for k, d, s in zip(kernel_sizes, dilations, strides):
        check_positive_int(stride=s)
        width += (footprint(k, d) - 1) * jump
        jump *= s
    return width


def conv_stack(
    depth: int,
    channels: int,
    kernel_size: int = 3,
    dilation: int = 1,
    taps: Optional[int] = None,
    version: str = "gauss",
    positions: str = "reference",
    seed: int = 0,
) -> nn.Sequential:
    """``depth`` same-padded 2-D convolutions with ReLUs between them, randomly initialised.

    With ``taps`` set, each layer is a ``Dcls2d`` with that many taps in a ``kernel_size`` footprint
    (``dilation`` must then be 1); ``positions="reference"`` keeps the reference initialisation
    (taps near the centre, N(0, 0.5)) and ``"uniform"`` spreads them uniformly over the footprint,
    as learned positions tend to end up.  Otherwise each layer is an ``nn.Conv2d``.
    """
    check_positive_int(depth=depth, channels=channels)
    if positions not in ("reference", "uniform"):
        raise ValueError(f"positions must be 'reference' or 'uniform', got {positions!r}")
    if taps is not None and dilation != 1:
        raise ValueError("a DCLS stack sets its footprint with kernel_size; dilation must be 1")
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        layers: list[nn.Module] = []
        for i in range(depth):
            if taps is None:
                conv = nn.Conv2d(channels, channels, kernel_size, padding="same", dilation=dilation, bias=False)
            else:
                conv = Dcls2d(channels, channels, taps, dilated_kernel_size=kernel_size, padding="same",
                              bias=False, version=version)
                if positions == "uniform":
                    low, high = position_limits(kernel_size)
                    with torch.no_grad():
                        conv.P.uniform_(low, high)
            layers.append(conv)
            if i < depth - 1:
                layers.append(nn.ReLU())
        return nn.Sequential(*layers)
    finally:
        torch.random.set_rng_state(generator_state)


def effective_receptive_field(
    model: nn.Module,
    in_channels: int,
    size: int,
    samples: int = 16,
    device: Optional[torch.device] = None,
    seed: int = 0,
) -> Tensor:
    """The ERF of ``model`` at the centre of a ``size`` x ``size`` input, normalised to sum to 1.

    Mean over ``samples`` random inputs of |d y_centre / d x|, summed over channels, where
    y_centre is the sum over output channels of the centre pixel.  Returns a (size, size) tensor
    on the CPU.  The model must keep the spatial size (same padding, stride 1).
    """
    check_positive_int(size=size, samples=samples)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    generator = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(samples, in_channels, size, size, generator=generator).to(device).requires_grad_(True)
    y = model(x)
    if y.dim() != 4 or y.shape[-2:] != x.shape[-2:]:
        raise ValueError(f"the model must keep the spatial size {tuple(x.shape[-2:])}, got output {tuple(y.shape)}")
    centre = y[:, :, size // 2, size // 2].sum()
    (grad,) = torch.autograd.grad(centre, x)
    erf = grad.abs().sum(dim=1).mean(dim=0).detach().float().cpu()
    total = erf.sum()
    if total <= 0:
        raise ValueError("the centre output does not depend on the input (all gradients are zero)")
    return erf / total


def mass_radius(erf: Tensor, fraction: float = 0.9) -> float:
    """Radius (pixels) of the smallest disc around the centre that holds ``fraction`` of the ERF's mass."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if erf.dim() != 2:
        raise ValueError(f"erf must be a 2-D map, got shape {tuple(erf.shape)}")
    h, w = erf.shape
    rows = torch.arange(h, dtype=torch.float64) - h // 2
    cols = torch.arange(w, dtype=torch.float64) - w // 2
    radius = torch.sqrt(rows[:, None] ** 2 + cols[None, :] ** 2).flatten()
    mass = erf.double().flatten()
    order = torch.argsort(radius, stable=True)
    cumulative = torch.cumsum(mass[order], 0) / mass.sum()
    index = int(torch.searchsorted(cumulative, torch.tensor([fraction - 1e-12], dtype=torch.float64)))
    return float(radius[order][min(index, radius.numel() - 1)])
