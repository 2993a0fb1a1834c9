"""How a tap at a real-valued position spreads its weight over the integer cells of a kernel.

Every DCLS interpolation is separable: the share of a tap's weight that lands on cell
``(i_0, ..., i_{D-1})`` is a product of one 1-D *profile* per axis.  A profile maps the grid indices
``i`` of one axis and the tap's position ``q`` on that axis (in cells, ``q = centre + P``) to the
share of each cell, and also returns the derivatives with respect to ``q`` and to the width
parameter ``SIG``.  Returning derivatives lets the kernel's backward pass recompute the profiles
instead of keeping them in memory.

Profiles, as the reference library defines them (x = i - q):

* ``gauss``:  exp(-x^2 / (2 s^2)),  s = |SIG| + 0.27, normalised per tap;
* ``v1``:     max(0, 1 - |x|) (the bilinear "hat"), normalised per tap;
* ``max``:    max(0, s - |x|),  s = |SIG| + 1 (a triangle of learnable width), normalised per tap;
* ``v0``:     bilinear from floor(q): 1 - r on cell floor(q), r on the next cell (r = q - floor(q)),
  not normalised.  Equal to ``v1`` inside the grid; its derivative is taken from the right at
  integer positions, as the reference's autograd does.

The bilinear versions touch only two cells per axis, so besides the dense profile they have a
*corner* form: the first cell ``floor(q)`` and the weights of it and the next cell.  Kernels are
built from the corner form (a scatter of 2^D corners per tap instead of a dense profile).

Derivatives follow PyTorch's autograd conventions at the kinks of |x - q| and of the ReLU (0 there),
so position gradients equal the reference's everywhere.  One exception, on purpose: the derivative of
|SIG| at SIG = 0 is taken as 1, not 0.  The triangle starts at SIG = 0, where the reference's
gradient for SIG is exactly zero, so its width could never learn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

ProfileFn = Callable[[Tensor, Tensor, Optional[Tensor]], tuple[Tensor, Tensor, Optional[Tensor]]]
CornerFn = Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]


def _abs_slope(sig: Tensor) -> Tensor:
    """d|SIG|/dSIG, with 1 at SIG = 0 so that a width starting at zero can grow."""
    return torch.where(sig < 0, -1.0, 1.0).to(sig.dtype)


def _gauss(idx: Tensor, q: Tensor, sig: Optional[Tensor]):
    s = sig.abs() + 0.27
    z = (idx - q) / s
    g = torch.exp(-0.5 * z * z)
    dg_dq = g * z / s
    dg_dsig = g * z * z / s * _abs_slope(sig)
    return g, dg_dq, dg_dsig


def _hat(x: Tensor, half_width: Tensor | float):
    """max(0, w - |x|) and its derivative with respect to x (and w)."""
    h = half_width - x.abs()
    active = (h > 0).to(x.dtype)
    return h.clamp_min(0), -torch.sign(x) * active, active


def _bilinear(idx: Tensor, q: Tensor, sig: Optional[Tensor]):
    g, dg_dx, _ = _hat(idx - q, 1.0)
    return g, -dg_dx, None


def _triangle(idx: Tensor, q: Tensor, sig: Optional[Tensor]):
    g, dg_dx, dg_dw = _hat(idx - q, sig.abs() + 1.0)
    return g, -dg_dx, dg_dw * _abs_slope(sig)


def _bilinear_floor(idx: Tensor, q: Tensor, sig: Optional[Tensor]):
    first, weights, slopes = _floor_corners(q)
    on_first = (idx == first).to(q.dtype)
    on_next = (idx == first + 1).to(q.dtype)
    g = weights[..., 0] * on_first + weights[..., 1] * on_next
    return g, slopes[..., 0] * on_first + slopes[..., 1] * on_next, None


def _floor_corners(q: Tensor):
    """First cell floor(q), weights (1 - r, r) of it and the next cell, and their derivatives (-1, 1)."""
    first = torch.floor(q)
    r = q - first
    weights = torch.stack([1 - r, r], -1)
    slopes = torch.stack([-torch.ones_like(r), torch.ones_like(r)], -1)
    return first, weights, slopes


def _hat_corners(q: Tensor):
    """As ``_floor_corners``, with the hat's zero derivative when q sits exactly on a cell."""
    first, weights, slopes = _floor_corners(q)
    return first, weights, slopes * (weights[..., 1:2] != 0).to(q.dtype)


@dataclass(frozen=True)
class Interpolation:
    """One interpolation of DCLS: its profile, whether taps are normalised, how SIG starts."""

    name: str
    description: str
    profile: ProfileFn
    normalized: bool
    sigma_init: Optional[float]  # None: the version has no SIG parameter
    corners: Optional[CornerFn] = None  # the two-cell form of the bilinear versions

    @property
    def has_sigma(self) -> bool:
        return self.sigma_init is not None


INTERPOLATIONS: dict[str, Interpolation] = {
    "gauss": Interpolation("gauss", "Gaussian, width |SIG| + 0.27", _gauss, True, 0.23),
    "v1": Interpolation("v1", "bilinear (hat), normalised per tap", _bilinear, True, None, _hat_corners),
    "max": Interpolation("max", "triangle, half-width |SIG| + 1", _triangle, True, 0.0),
    "v0": Interpolation("v0", "bilinear from floor(P), not normalised", _bilinear_floor, False, None, _floor_corners),
}

ALIASES = {"gaussian": "gauss", "bilinear": "v1", "triangle": "max", "bilinear_v0": "v0"}


def get_interpolation(version: str) -> Interpolation:
    """Look up an interpolation by its reference name or readable alias."""
    name = ALIASES.get(version, version)
    if name not in INTERPOLATIONS:
        known = sorted(INTERPOLATIONS) + sorted(ALIASES)
        raise ValueError(f"version must be one of {known}, got {version!r}")
    return INTERPOLATIONS[name]


def profile(version: str, size: int, position: Tensor, sigma: Optional[Tensor] = None) -> Tensor:
    """The share of each of ``size`` cells for taps at ``position`` (offset from the centre).

    Returns a tensor of shape ``position.shape + (size,)``, normalised per tap where the version is.
    Handy for plotting and teaching; the layers use the same functions.
    """
    interp = get_interpolation(version)
    position = torch.as_tensor(position, dtype=torch.get_default_dtype())
    if interp.has_sigma and sigma is None:
        sigma = torch.full_like(position, interp.sigma_init)
    idx = torch.arange(size, dtype=position.dtype)
    sig = None if sigma is None else torch.as_tensor(sigma, dtype=position.dtype).unsqueeze(-1)
    g, _, _ = interp.profile(idx, position.unsqueeze(-1) + size // 2, sig)
    if interp.normalized:
        g = g / (g.sum(-1, keepdim=True) + 1e-7)
    return g
