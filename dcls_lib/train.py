"""Training small family members on SynthClick with the published DCLS recipe.

The recipe (:mod:`dcls_lib.recipe`): AdamW; positions ``P`` and widths ``SIG`` without weight decay
at 5x the learning rate; taps clamped after every optimiser step; optionally, the ConvNeXt-dcls
repulsion loss between the taps of a kernel.  For the Gaussian version, ``SIG`` is learned with the
positions as published, or (``sigma="linear"`` or ``"exponential"``) not learned and decayed from
half the model's dilated kernel size to 0.23 over the first quarter of training: ``"exponential"``
is the thesis' schedule for learned delays, ``"linear"`` the one these runs have used.

Runs are resumable: with ``out_dir`` every epoch ends with an atomic checkpoint, a JSON log (losses,
accuracies, confusion matrices, learning rates, timings, what ran it) and the positions of every
stage.  Calling ``train`` again with the same configuration continues where it stopped, or loads the
finished run (without generating its data).  The log's ``curve`` has ``curve_points`` points per epoch
(training loss and accuracy since the previous point, accuracy on the first ``curve_val_size``
validation images), so that short runs still show how they learn.

    python -m dcls_lib.train --family convnext --variant dcls --profile cpu --out runs/convnext-dcls
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import time
from contextlib import nullcontext
from functools import lru_cache
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from .progress import note, progress_bar

from .data.synthclick import SynthClick
from .files import save_torch, write_json
from .models.small import SMALL_FAMILIES, VARIANTS, create_small_model
from .recipe import (
    DECAYS,
    RecipeConfig,
    SigmaSchedule,
    clamp_positions,
    dcls_layers,
    param_groups,
    position_parameters,
    repulsion_loss,
    set_sigma,
    sigma_schedule,
)
from .runtime import current_profile, resolve_device, run_info
from .transforms import PixelNormalize
from .validation import check_choice, check_positive_int

SIGMA_MODES = ("learned", *DECAYS)


@dataclass(frozen=True)
class TrainConfig(RecipeConfig):
    """Everything that decides a training run; saved with it and checked on resume."""

    family: str = "convnext"
    variant: str = "dcls"
    profile: str = "custom"  # the profile these settings came from, for labels
    width: int = 32
    image_size: int = 64
    train_size: int = 12000
    val_size: int = 1200
    warmup_steps: int = 100
    sigma: str = "learned"  # learned with the positions, or not learned and decayed by a schedule of DECAYS
    repulsion_weight: float = 0.0
    repulsion_from_epoch: int = 0
    dilated_kernel_size: Optional[int] = None  # None: the family's default
    kernel_count: Optional[int] = None
    version: Optional[str] = None
    data_seed: int = 0
    num_workers: int = 0  # processes that generate the SynthClick images
    curve_points: int = 10  # points of the training curve per epoch
    curve_val_size: int = 240  # validation images scored at each curve point (the full set ends each epoch)
    channels_last: bool = True  # model and images NHWC: 0.6-0.8x the CPU step time of NCHW for the small models

    def __post_init__(self) -> None:
        check_choice("family", self.family, sorted(SMALL_FAMILIES))
        check_choice("variant", self.variant, VARIANTS)
        check_choice("sigma", self.sigma, SIGMA_MODES)
        check_positive_int(train_size=self.train_size, val_size=self.val_size, curve_points=self.curve_points,
                           curve_val_size=self.curve_val_size)
        super().__post_init__()


# Per profile: how big and how long.  smoke: seconds, for the tests; cpu: the book on 2 cores;
# gpu: full size on one GPU.
PROFILE_SETTINGS = {
    "smoke": dict(width=8, image_size=64, train_size=64, val_size=32, epochs=2, batch_size=32, warmup_steps=2),
    "cpu": dict(width=8, image_size=112, train_size=4800, val_size=480, epochs=3, batch_size=32, warmup_steps=30,
                curve_points=5),
    "gpu": dict(width=32, image_size=112, train_size=48000, val_size=2400, epochs=10, batch_size=128,
                warmup_steps=300, amp=True, num_workers=8),
}


def profile_config(profile: Optional[str] = None, **overrides) -> TrainConfig:
    """The configuration of ``profile`` (default: ``current_profile()``) with ``overrides``."""
    profile = profile or current_profile()
    check_choice("profile", profile, sorted(PROFILE_SETTINGS))
    return TrainConfig(**{**PROFILE_SETTINGS[profile], "profile": profile, **overrides})


# --- the schedules --------------------------------------------------------------------------------

def run_sigma_schedule(config: TrainConfig, model: nn.Module) -> Optional[SigmaSchedule]:
    """The ``SIG`` schedule of a run whose widths are not learned (None when they are, or without
    DCLS layers), from half the model's own dilated kernel size (the family default unless set)."""
    layers = dcls_layers(model)
    if config.sigma == "learned" or not layers:
        return None
    return sigma_schedule(config.sigma, max(layers[0].dilated_kernel_size), config.epochs)


def warmup_cosine(warmup_steps: int, total_steps: int):
    """Learning-rate factor: linear warm-up, then cosine decay to 0."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


# --- one run -------------------------------------------------------------------------------------

@dataclass
class TrainRun:
    model: nn.Module
    config: TrainConfig
    log: dict
    out_dir: Optional[Path]

    @property
    def final(self) -> dict:
        return self.log["epochs"][-1]


normalize_synthclick = PixelNormalize(SynthClick.mean, SynthClick.std)  # what every SynthClick model is fed


def _autocast(config: TrainConfig, device: torch.device):
    if config.amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


@lru_cache(maxsize=4)
def synthclick_tensors(split: str, image_size: int, seed: int, size: int, workers: int = 0):
    """A SynthClick split as uint8 images (N, 3, H, W) and labels, generated once per process.

    The images are exact in 8 bits, so every run of a study trains on the same pixels without
    generating them again."""
    dataset = SynthClick(split, image_size=image_size, seed=seed, size=size)
    loader = DataLoader(dataset, batch_size=256, num_workers=workers)
    images, labels = [], []
    for x, y, _ in progress_bar(loader, desc=f"generating SynthClick {split} ({size} images, {image_size} px)", leave=False):
        images.append((x * 255).round().to(torch.uint8))
        labels.append(y)
    return torch.cat(images), torch.cat(labels)


def _memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def _batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int, device, order=None,
             channels_last: bool = False):
    """Float images in [0, 1] and labels on ``device``, in ``order`` (default: as stored)."""
    order = torch.arange(len(labels)) if order is None else order
    memory_format = _memory_format(channels_last)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        x = images[idx].to(device, non_blocking=True).float().div_(255)
        yield x.contiguous(memory_format=memory_format), labels[idx].to(device, non_blocking=True)


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, device: torch.device,
                      batch_size: int = 256, amp=None, channels_last: bool = False):
    """Mean loss, accuracy and the confusion matrix (rows: true class) of ``model`` on uint8 ``images``
    (fed NHWC when ``channels_last``, as a model trained that way was)."""
    model.eval()
    num_classes = SynthClick.num_classes
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    total_loss = 0.0
    for x, y in _batches(images, labels, batch_size, device, channels_last=channels_last):
        with amp or nullcontext():
            logits = model(normalize_synthclick(x)).float()
        total_loss += F.cross_entropy(logits, y, reduction="sum").item()
        pairs = y.cpu() * num_classes + logits.argmax(1).cpu()
        confusion += torch.bincount(pairs, minlength=num_classes**2).view(num_classes, num_classes)
    return total_loss / len(labels), (confusion.diag().sum() / len(labels)).item(), confusion


def curve_step_numbers(steps_per_epoch: int, points: int) -> list[int]:
    """The steps (1-based, within an epoch) after which the curve gets a point: ``points`` evenly
    spaced ones ending with the epoch's last step (fewer when the epoch has fewer steps)."""
    return sorted({max(1, round(steps_per_epoch * k / points)) for k in range(1, points + 1)})


class _CurvePoint:
    """Training loss and accuracy summed since the previous point of the curve."""

    def __init__(self):
        self.seen, self.loss, self.correct = 0, 0.0, 0

    def add(self, count: int, loss_sum: float, correct: int) -> None:
        self.seen += count
        self.loss += loss_sum
        self.correct += correct

    def row(self, epoch: float, val_acc: float) -> dict:
        seen = max(self.seen, 1)
        return {"epoch": round(epoch, 4), "train_loss": self.loss / seen, "train_acc": self.correct / seen,
                "val_acc": val_acc}


def position_snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu().clone() for name, p in position_parameters(model).items() if name.endswith(".P")}


def _build(config: TrainConfig, device: torch.device) -> nn.Module:
    torch.manual_seed(config.seed)
    model = create_small_model(
        config.family, config.variant, num_classes=SynthClick.num_classes, width=config.width,
        dilated_kernel_size=config.dilated_kernel_size, kernel_count=config.kernel_count, version=config.version,
    )
    return model.to(device, memory_format=_memory_format(config.channels_last))


def train(
    config: TrainConfig, out_dir: Optional[os.PathLike] = None, device=None, progress: bool = True
) -> TrainRun:
    """Train (or resume, or load the finished) run of ``config``; see the module docstring."""
    device = resolve_device(device)
    out = Path(out_dir) if out_dir is not None else None
    model = _build(config, device)
    schedule = run_sigma_schedule(config, model)
    optimizer = torch.optim.AdamW(
        param_groups(model, config.lr, config.weight_decay, config.position_lr_scale, learn_sigma=schedule is None)
    )
    steps_per_epoch = config.train_size // config.batch_size or 1
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(config.warmup_steps, config.epochs * steps_per_epoch)
    )
    log = {"config": config.to_dict(), "run": run_info(device, config.profile), "epochs": [], "curve": []}
    positions = {"init": position_snapshot(model)}
    start = 0
    checkpoint = out / "checkpoint.pt" if out else None
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        if state["config"] != config.to_dict():
            raise ValueError(
                f"{checkpoint} holds a run with another configuration; use another out_dir or delete it.\n"
                f"saved: {state['config']}\nasked: {config.to_dict()}"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        log, positions, start = state["log"], state["positions"], state["epoch"] + 1
        if start >= config.epochs:  # finished: nothing to train, so no data to generate
            model.eval()
            return TrainRun(model, config, log, out)

    images, labels = synthclick_tensors("train", config.image_size, config.data_seed, config.train_size,
                                        config.num_workers)
    val_images, val_labels = synthclick_tensors("val", config.image_size, config.data_seed, config.val_size,
                                                config.num_workers)
    amp = _autocast(config, device)
    curve_steps = set(curve_step_numbers(steps_per_epoch, config.curve_points))
    for epoch in range(start, config.epochs):
        if schedule is not None:
            set_sigma(model, schedule(epoch))
        shuffle = torch.Generator().manual_seed(config.seed * 1000 + epoch)
        order = torch.randperm(len(labels), generator=shuffle)[: steps_per_epoch * config.batch_size]
        model.train()
        started, seen, loss_sum, correct = time.perf_counter(), 0, 0.0, 0
        point = _CurvePoint()
        bar = progress_bar(_batches(images, labels, config.batch_size, device, order, config.channels_last),
                           total=steps_per_epoch, desc=f"{config.family}-{config.variant} epoch {epoch + 1}/{config.epochs}",
                           disable=not progress, leave=False)
        for step, (x, y) in enumerate(bar, start=1):
            with amp:
                logits = model(normalize_synthclick(x))
                loss = F.cross_entropy(logits.float(), y)
                if config.repulsion_weight and epoch >= config.repulsion_from_epoch:
                    loss = loss + config.repulsion_weight * repulsion_loss(model)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            clamp_positions(model)
            batch_loss, batch_correct = loss.item() * y.numel(), (logits.argmax(1) == y).sum().item()
            seen += y.numel()
            loss_sum += batch_loss
            correct += batch_correct
            point.add(y.numel(), batch_loss, batch_correct)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
            if step in curve_steps and step != steps_per_epoch:  # the epoch's end is logged with the full set
                _, curve_acc, _ = evaluate_accuracy(model, val_images[:config.curve_val_size],
                                                    val_labels[:config.curve_val_size], device, amp=amp,
                                                    channels_last=config.channels_last)
                log["curve"].append(point.row(epoch + step / steps_per_epoch, curve_acc))
                point = _CurvePoint()
                model.train()
        val_loss, val_acc, confusion = evaluate_accuracy(model, val_images, val_labels, device, amp=amp,
                                                         channels_last=config.channels_last)
        log["curve"].append(point.row(epoch + 1.0, val_acc))
        log["epochs"].append({
            "epoch": epoch + 1, "train_loss": loss_sum / seen, "train_acc": correct / seen,
            "val_loss": val_loss, "val_acc": val_acc, "val_confusion": confusion.tolist(),
            "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - started,
        })
        positions[f"epoch {epoch + 1}"] = position_snapshot(model)
        if progress:
            note(f"{config.family}-{config.variant} epoch {epoch + 1}: train loss {loss_sum / seen:.3f}, "
                       f"val acc {val_acc:.3f}")
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            save_torch(checkpoint, {"config": config.to_dict(), "epoch": epoch, "model": model.state_dict(),
                                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                    "log": log, "positions": positions})
            write_json(out / "log.json", log)
    model.eval()
    return TrainRun(model, config, log, out)


def load_run(out_dir: os.PathLike, device=None) -> TrainRun:
    """A finished (or interrupted) run from its checkpoint, without training."""
    device = resolve_device(device)
    checkpoint = Path(out_dir) / "checkpoint.pt"
    if not checkpoint.exists():
        raise FileNotFoundError(f"no training checkpoint in {out_dir}")
    state = torch.load(checkpoint, map_location=device, weights_only=False)
    config = TrainConfig(**state["config"])
    model = _build(config, device)
    model.load_state_dict(state["model"])
    model.eval()
    return TrainRun(model, config, state["log"], Path(out_dir))


def load_positions(out_dir: os.PathLike) -> dict[str, dict[str, torch.Tensor]]:
    """The positions of every stage at the start and after each epoch of a saved run."""
    return torch.load(Path(out_dir) / "checkpoint.pt", map_location="cpu", weights_only=False)["positions"]


# --- command line --------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dcls_lib.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=sorted(SMALL_FAMILIES), default="convnext")
    parser.add_argument("--variant", choices=VARIANTS, default="dcls")
    parser.add_argument("--profile", choices=sorted(PROFILE_SETTINGS), default=None,
                        help="sizes and lengths (default: DCLS_PROFILE, else gpu with CUDA, else cpu)")
    parser.add_argument("--out", required=True, help="run folder: checkpoint, log.json; resumed when it exists")
    parser.add_argument("--device", default="auto")
    for field in dataclasses.fields(TrainConfig):
        if field.name in ("family", "variant", "profile"):
            continue
        kind = {"bool": None, "int": int, "float": float, "str": str}.get(
            field.type.replace("Optional[", "").rstrip("]") if isinstance(field.type, str) else "str", str)
        flag = "--" + field.name.replace("_", "-")
        if kind is None:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            parser.add_argument(flag, type=kind, default=None)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> TrainRun:
    args = build_parser().parse_args(argv)
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                 if f.name != "profile" and getattr(args, f.name, None) is not None}
    config = profile_config(args.profile, **overrides)
    run = train(config, args.out, device=args.device)
    final = run.final
    print(f"{config.family}-{config.variant}: val accuracy {final['val_acc']:.3f} after {final['epoch']} epochs; "
          f"log in {Path(args.out) / 'log.json'}")
    return run


if __name__ == "__main__":
    main()
