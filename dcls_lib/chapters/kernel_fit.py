"""Learning tap positions by gradient descent: fit a DCLS layer's kernel to a target kernel.

The smallest experiment that shows positions being learned.  The loss is the squared distance
between the layer's dense kernel and a target; positions (and widths) follow the published recipe:
``position_lr_scale`` times the weights' learning rate, no weight decay, and ``clamp_parameters()``
after every step so that taps stay on the grid.  The history records every tap's path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..layers import DclsNd
from ..progress import progress_bar
from ..recipe import POSITION_LR_SCALE, clamp_positions, param_groups


@dataclass
class FitHistory:
    """Loss per step (steps + 1 values, the first before any step) and positions ``(steps + 1, *P.shape)``."""

    loss: Tensor
    positions: Tensor
    sigmas: Tensor | None

    @property
    def steps(self) -> int:
        return self.loss.numel() - 1


def kernel_loss(layer: DclsNd, target: Tensor) -> Tensor:
    """Sum of squared differences between the layer's dense kernel and ``target``."""
    kernel = layer.construct_kernel()
    if kernel.shape != target.shape:
        raise ValueError(f"target must have the kernel's shape {tuple(kernel.shape)}, got {tuple(target.shape)}")
    return ((kernel - target) ** 2).sum()


def fit_kernel(
    layer: DclsNd,
    target: Tensor,
    steps: int,
    lr: float = 0.01,
    position_lr_scale: float = POSITION_LR_SCALE,
    progress: bool = False,
) -> FitHistory:
    """Adam on ``kernel_loss(layer, target)`` for ``steps`` steps; returns the loss and tap paths."""
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    target = target.to(device=layer.weight.device, dtype=layer.weight.dtype)
    optimizer = torch.optim.Adam(param_groups(layer, lr, weight_decay=0.0, position_lr_scale=position_lr_scale))

    losses: list[float] = []
    positions = [layer.P.detach().cpu().clone()]
    sigmas = [layer.SIG.detach().cpu().clone()] if layer.SIG is not None else None
    for _ in progress_bar(range(steps), desc=f"fitting {layer.version}", disable=not progress):
        optimizer.zero_grad(set_to_none=True)
        loss = kernel_loss(layer, target)
        losses.append(float(loss.detach()))
        loss.backward()
        optimizer.step()
        clamp_positions(layer)
        positions.append(layer.P.detach().cpu().clone())
        if sigmas is not None:
            sigmas.append(layer.SIG.detach().cpu().clone())
    with torch.no_grad():
        losses.append(float(kernel_loss(layer, target)))
    return FitHistory(
        loss=torch.tensor(losses),
        positions=torch.stack(positions),
        sigmas=torch.stack(sigmas) if sigmas is not None else None,
    )
