"""The published DCLS training recipe, written once for images (``dcls_lib.train``) and delays (``dcls_lib.snn``).

What the recipe does around a plain optimiser (ConvNeXt-dcls and DCLS-Audio training code, the DCLS
thesis): positions ``P`` (and the Gaussian widths ``SIG`` when they are learned) without weight decay
at a multiple of the learning rate; ``clamp_positions`` after every optimiser step; widths that are
not learned follow a ``SigmaSchedule``; optionally the ConvNeXt-dcls repulsion loss between the taps
of a kernel.  A spiking delay layer is a ``Dcls1d`` inside, so every function here works on both.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .layers import DclsNd
from .validation import check_choice, check_positive_int

FINAL_SIGMA = 0.23  # where the published schedules end (Gaussian width |SIG| + 0.27 = 0.5 cell)
POSITION_LR_SCALE = 5.0  # positions learn at 5x the weights' rate in the recipe published with the image models
DECAYS = ("exponential", "linear")


@dataclass(frozen=True)
class RecipeConfig:
    """The optimisation settings every DCLS run has; ``TrainConfig`` and ``DelayRunConfig`` add theirs."""

    epochs: int = 4
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    position_lr_scale: float = POSITION_LR_SCALE
    seed: int = 0
    amp: bool = False  # bfloat16 autocast on CUDA

    def __post_init__(self) -> None:
        check_positive_int(epochs=self.epochs, batch_size=self.batch_size)
        if self.lr <= 0 or self.weight_decay < 0 or self.position_lr_scale <= 0:
            raise ValueError("lr and position_lr_scale must be > 0 and weight_decay >= 0")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def dcls_layers(model: nn.Module) -> list[DclsNd]:
    """Every distinct DCLS layer of ``model`` (those inside ``SynapticDelays`` included)."""
    return [m for m in model.modules() if isinstance(m, DclsNd)]


def position_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Every distinct P and SIG of the model (shared ones once), by the name of their first owner."""
    found: dict[int, tuple[str, nn.Parameter]] = {}
    for name, module in model.named_modules():
        if isinstance(module, DclsNd):
            for attr in ("P", "SIG"):
                param = getattr(module, attr)
                if param is not None and id(param) not in found:
                    found[id(param)] = (f"{name}.{attr}", param)
    return dict(found.values())


def param_groups(
    model: nn.Module, lr: float, weight_decay: float, position_lr_scale: float, learn_sigma: bool = True
) -> list[dict]:
    """Optimiser groups: ``decay`` (weights, with ``weight_decay``), ``no_decay`` (biases and norms),
    ``positions`` (P, and SIG when ``learn_sigma``, at ``position_lr_scale`` x lr without decay).
    Frozen parameters (fixed delays, a SIG that does not require grad) are left out; empty groups too."""
    positions = position_parameters(model)
    special = {id(p) for p in positions.values()}
    decay, no_decay = [], []
    for param in model.parameters():
        if id(param) in special or not param.requires_grad:
            continue
        (no_decay if param.dim() <= 1 else decay).append(param)
    moving = [p for n, p in positions.items() if p.requires_grad and (learn_sigma or not n.endswith(".SIG"))]
    groups = [
        {"params": decay, "lr": lr, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": "no_decay"},
        {"params": moving, "lr": lr * position_lr_scale, "weight_decay": 0.0, "name": "positions"},
    ]
    return [g for g in groups if g["params"]]


def clamp_positions(model: nn.Module) -> None:
    """The reference's clamp after each optimiser step, once per distinct layer: taps stay on the grid."""
    for layer in dcls_layers(model):
        layer.clamp_parameters()


@torch.no_grad()
def set_sigma(model: nn.Module, value: float) -> None:
    """Set every ``SIG`` of ``model`` to ``value`` (a schedule's width for the epoch)."""
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"sigma must be a finite number >= 0, got {value!r}")
    for name, param in position_parameters(model).items():
        if name.endswith(".SIG"):
            param.fill_(value)


def repulsion_loss(model: nn.Module) -> torch.Tensor:
    """ConvNeXt-dcls' repulsion: mean over tap pairs of clamp_min(1 - distance, 0), squared, per P."""
    terms = []
    for name, P in position_parameters(model).items():
        if not name.endswith(".P"):
            continue
        taps = P.flatten(1, -2).permute(1, 2, 0)  # (ndim, filters, taps) -> (filters, taps, ndim)
        distances = torch.cdist(taps, taps)
        pairs = ~torch.eye(taps.shape[1], dtype=torch.bool, device=P.device)
        terms.append(F.relu(1 - distances[:, pairs]).mean() ** 2)
    return torch.stack(terms).sum() if terms else torch.zeros(())


@dataclass(frozen=True)
class SigmaSchedule:
    """``SIG`` per epoch: from ``start`` to ``end`` over ``decay_epochs``, then ``end``; ``decay`` is
    ``"exponential"`` (the thesis, for learned delays) or ``"linear"``.

    A schedule whose ``start <= end`` never decays (as the authors' code, which decays only while
    ``SIG > 0.23``).
    """

    start: float
    end: float = FINAL_SIGMA
    decay_epochs: int = 0
    decay: str = "exponential"

    def __post_init__(self):
        if self.start < 0 or self.end < 0 or self.decay_epochs < 0:
            raise ValueError(f"SigmaSchedule needs start, end, decay_epochs >= 0, got {self}")
        check_choice("SigmaSchedule decay", self.decay, DECAYS)

    @classmethod
    def exponential(cls, dilated_kernel_size: int, epochs: int) -> "SigmaSchedule":
        """The thesis: from ``dilated_kernel_size // 2`` to 0.23, exponentially, over the first
        ``epochs // 4`` epochs (at least one)."""
        return cls(float(dilated_kernel_size // 2), FINAL_SIGMA, max(1, epochs // 4), "exponential")

    @classmethod
    def linear(cls, dilated_kernel_size: int, epochs: int) -> "SigmaSchedule":
        """The vision runs' schedule: from ``dilated_kernel_size // 2`` to 0.23, linearly, over the
        first ``ceil(epochs / 4)`` epochs (at least one)."""
        return cls(float(dilated_kernel_size // 2), FINAL_SIGMA, max(1, math.ceil(epochs / 4)), "linear")

    @classmethod
    def constant(cls, value: float) -> "SigmaSchedule":
        return cls(float(value), float(value), 0)

    def __call__(self, epoch: int) -> float:
        if self.decay_epochs == 0 or self.start <= self.end:
            return self.start
        if epoch >= self.decay_epochs:
            return self.end
        fraction = epoch / self.decay_epochs
        if self.decay == "linear":
            return self.start + (self.end - self.start) * fraction
        return self.start * (self.end / self.start) ** fraction


def sigma_schedule(decay: str, dilated_kernel_size: int, epochs: int) -> SigmaSchedule:
    """The decaying schedule named ``decay`` (one of ``DECAYS``) for a kernel size and run length."""
    check_choice("sigma schedule", decay, DECAYS)
    return getattr(SigmaSchedule, decay)(dilated_kernel_size, epochs)
