"""One tap on a kernel grid: its kernel, how the kernel changes when the tap moves, and the gradient.

A DCLS kernel is a sum of taps; everything about learning positions can be seen on a single tap of
weight 1 at position ``p = (row, col)`` (offsets from the kernel centre).  These functions build that
kernel with the library's own ``construct_kernel`` (so gradients come from the layers' backward
pass), and give the derivative of the kernel and of a loss with respect to ``p`` by autograd and by
central finite differences, to check one against the other and against a formula derived by hand.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from ..layers import construct_kernel, get_interpolation


def tap_kernel(version: str, size: int, position: Sequence[float] | Tensor, sigma: Optional[float] = None) -> Tensor:
    """The (size, size) kernel of one tap of weight 1 at ``position`` = (row, col) offset from the centre.

    ``position`` may be a tensor that requires grad: the kernel is differentiable in it.
    ``sigma`` is the SIG parameter (width = |SIG| + 0.27 for ``gauss``, |SIG| + 1 for ``max``);
    by default the layer's initial value.
    """
    p = position if isinstance(position, Tensor) else torch.tensor(position, dtype=torch.float64)
    if p.numel() != 2:
        raise ValueError(f"position must be (row, col), got {tuple(p.shape)} values")
    P = p.reshape(2, 1, 1, 1)
    weight = torch.ones(1, 1, 1, dtype=P.dtype, device=P.device)
    interp = get_interpolation(version)
    SIG = None
    if interp.has_sigma:
        SIG = torch.full_like(P.detach(), interp.sigma_init if sigma is None else float(sigma))
    return construct_kernel(weight, P, SIG, (size, size), version)[0, 0]


def kernel_position_derivative(version: str, size: int, position, sigma: Optional[float] = None) -> Tensor:
    """dK/dp: a (2, size, size) tensor, the change of every kernel cell per unit move along rows, columns."""
    p = torch.as_tensor(position, dtype=torch.float64).clone().requires_grad_(True)
    jac = torch.autograd.functional.jacobian(lambda q: tap_kernel(version, size, q, sigma), p)
    return jac.permute(2, 0, 1)


def tap_loss(version: str, size: int, position, target: Tensor, sigma: Optional[float] = None) -> Tensor:
    """||K(p) - target||^2, the loss a tap at ``position`` has against a ``target`` kernel."""
    kernel = tap_kernel(version, size, position, sigma)
    if target.shape != kernel.shape:
        raise ValueError(f"target must be {tuple(kernel.shape)}, got {tuple(target.shape)}")
    return ((kernel - target.to(kernel)) ** 2).sum()


def autograd_gradient(loss: Callable[[Tensor], Tensor], position) -> Tensor:
    """d loss / d p by backpropagation through the library's kernel construction."""
    p = torch.as_tensor(position, dtype=torch.float64).clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(p), p)
    return grad


def finite_difference_gradient(loss: Callable[[Tensor], Tensor], position, eps: float = 1e-6) -> Tensor:
    """d loss / d p by central differences in float64 (valid away from the profiles' kinks)."""
    p = torch.as_tensor(position, dtype=torch.float64)
    grad = torch.empty_like(p)
    with torch.no_grad():
        for d in range(p.numel()):
            step = torch.zeros_like(p)
            step[d] = eps
            grad[d] = (loss(p + step) - loss(p - step)) / (2 * eps)
    return grad


def loss_landscape(version: str, size: int, columns: Tensor, target: Tensor, row: float = 0.0,
                   sigma: Optional[float] = None) -> tuple[Tensor, Tensor]:
    """Loss and its derivative along columns for a tap moved along one row: two tensors like ``columns``."""
    losses, grads = [], []
    for c in columns.tolist():
        p = torch.tensor([row, c], dtype=torch.float64, requires_grad=True)
        loss = tap_loss(version, size, p, target, sigma)
        (g,) = torch.autograd.grad(loss, p)
        losses.append(float(loss.detach()))
        grads.append(float(g[1]))
    return torch.tensor(losses, dtype=torch.float64), torch.tensor(grads, dtype=torch.float64)
