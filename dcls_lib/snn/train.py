"""Training spiking networks with learned, random or no delays, with the published recipe.

``run_delay_study`` trains the book's arms on the offline delay task (or on SHD, given its files) and
returns (and optionally writes as JSON) their histories, final accuracies and delays, with what
produced them.  Sizes come from the run profile (``DCLS_PROFILE``: smoke, cpu, gpu).

Command line::

    python -m dcls_lib.snn.train --profile cpu --out runs/delays.json
    python -m dcls_lib.snn.train --data shd --shd-root ~/data/shd --download --out runs/shd.json
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from dataclasses import dataclass, field, replace
from typing import NamedTuple, Optional, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from ..progress import progress_bar

from ..data.delay_task import DelayTaskSpec, make_splits
from ..files import write_json
from ..recipe import FINAL_SIGMA, RecipeConfig, SigmaSchedule, clamp_positions, param_groups, set_sigma
from ..runtime import current_profile, resolve_device, run_info, run_label
from .delays import delay_layers
from .model import DelaySNN, predict, readout_loss

# The sigma arms: the published recipe (exponential decay), and constant small or wide widths.
SIGMA_ARMS = ("recipe", "small", "wide")
# (delays, sigma schedule): the three arms, then the sigma ablation of the learned arm.
STUDY_RUNS = (("learned", "recipe"), ("none", "recipe"), ("random", "recipe"), ("learned", "small"), ("learned", "wide"))


@dataclass(frozen=True)
class DelayRunConfig(RecipeConfig):
    """Everything a run depends on (the data, the network, the optimisation)."""

    task: DelayTaskSpec = field(default_factory=DelayTaskSpec)
    n_train: int = 2048
    n_test: int = 1024
    n_hidden: int = 64
    n_hidden_layers: int = 1
    max_delay: int = 12
    tau: float = 1.0
    readout_tau: float = 1.0
    dropout: float = 0.0
    tail: int = 0
    epochs: int = 20
    lr: float = 1e-3
    weight_decay: float = 1e-5
    position_lr_scale: float = 100.0
    cpu_threads: int = 1  # on CPU; 0 keeps torch's setting (these small networks run fastest on one thread)


PROFILE_CONFIGS = {
    "smoke": DelayRunConfig(
        task=DelayTaskSpec(n_channels=6, n_classes=3, n_steps=24, max_lag=8, jitter_prob=0.0, noise_rate=0.0),
        n_train=256, n_test=96, n_hidden=24, max_delay=9, epochs=8, batch_size=32,
    ),
    "cpu": DelayRunConfig(),
    "gpu": DelayRunConfig(
        task=DelayTaskSpec(n_channels=12, n_classes=8, n_steps=64, max_lag=20),
        n_train=16384, n_test=4096, n_hidden=128, max_delay=25, epochs=40, batch_size=128, amp=True,
    ),
}


def delay_profile_config(profile: Optional[str] = None) -> DelayRunConfig:
    """The run settings of a profile (the current one by default)."""
    return PROFILE_CONFIGS[profile or current_profile()]


def shd_config(epochs: int = 150) -> DelayRunConfig:
    """The published SHD settings (2 hidden layers of 256 LIF, 25 delays of 10 ms, tau 10.05 ms,
    dropout 0.4, batch 256, Adam 1e-3, weight decay 1e-5); ``tail`` lets delayed spikes arrive late."""
    return DelayRunConfig(
        n_hidden=256, n_hidden_layers=2, max_delay=25, tau=1.005, readout_tau=1.005, dropout=0.4, tail=12,
        epochs=epochs, batch_size=256, lr=1e-3, weight_decay=1e-5, amp=True, cpu_threads=0,
    )


class RunData(NamedTuple):
    train: DataLoader
    test: DataLoader
    n_inputs: int
    n_classes: int
    description: str


def delay_task_data(config: DelayRunConfig) -> RunData:
    """Loaders for the offline delay task of ``config``."""
    splits = make_splits(config.task, config.n_train, config.n_test, seed=config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    train = DataLoader(TensorDataset(*splits["train"]), batch_size=config.batch_size, shuffle=True, generator=gen)
    test = DataLoader(TensorDataset(*splits["test"]), batch_size=max(config.batch_size, 256))
    t = config.task
    description = (
        f"delay task ({t.n_classes} classes, {t.n_channels} channels, {t.n_steps} steps, lags < {t.max_lag}, "
        f"task seed {t.seed}; {config.n_train} train / {config.n_test} test samples)"
    )
    return RunData(train, test, t.n_channels, t.n_classes, description)


def shd_data(config: DelayRunConfig, root: str | os.PathLike, download: bool = False, channel_pool: int = 5) -> RunData:
    """Loaders for the Spiking Heidelberg Digits files in ``root`` (10 ms frames, channels pooled by 5)."""
    from ..data.shd import N_CHANNELS, N_CLASSES, SHD, pad_collate

    train = SHD(root, "train", channel_pool=channel_pool, download=download)
    test = SHD(root, "test", channel_pool=channel_pool, download=download)
    gen = torch.Generator().manual_seed(config.seed)
    return RunData(
        DataLoader(train, batch_size=config.batch_size, shuffle=True, collate_fn=pad_collate, generator=gen),
        DataLoader(test, batch_size=config.batch_size, collate_fn=pad_collate),
        N_CHANNELS // channel_pool,
        N_CLASSES,
        f"SHD ({len(train)} train / {len(test)} test, 10 ms frames, channels pooled by {channel_pool})",
    )


def arm_schedule(arm: str, config: DelayRunConfig) -> SigmaSchedule:
    """The ``SIG`` schedule of a sigma arm of ``SIGMA_ARMS``."""
    if arm == "recipe":
        return SigmaSchedule.exponential(config.max_delay, config.epochs)
    if arm == "small":
        return SigmaSchedule.constant(FINAL_SIGMA)
    if arm == "wide":
        return SigmaSchedule.constant(config.max_delay // 2)
    raise ValueError(f"sigma schedule must be one of the arms {SIGMA_ARMS}, got {arm!r}")


def build_model(config: DelayRunConfig, delays: str, n_inputs: int, n_classes: int) -> DelaySNN:
    return DelaySNN(
        n_inputs, n_classes, n_hidden=config.n_hidden, n_hidden_layers=config.n_hidden_layers,
        max_delay=config.max_delay, delays=delays, tau=config.tau, readout_tau=config.readout_tau,
        dropout=config.dropout, tail=config.tail,
    )


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, discrete: bool = True, amp: bool = False) -> float:
    """Accuracy in ``eval()`` mode with exact integer delays (``discrete``) or with the training
    interpolation at the current ``SIG``."""
    model.eval()
    layers = list(delay_layers(model))
    saved = [layer.discrete_eval for layer in layers]
    for layer in layers:
        layer.discrete_eval = discrete
    correct = total = 0
    try:
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            with _autocast(device, amp):
                potentials = model(x)
            correct += int((predict(potentials.float()) == y).sum())
            total += y.numel()
    finally:
        for layer, flag in zip(layers, saved):
            layer.discrete_eval = flag
    return correct / max(total, 1)


@torch.no_grad()
def delay_ablation(model: nn.Module, loader: DataLoader, device: torch.device | str, seed: int = 0) -> dict[str, float]:
    """Test accuracy of a trained network as it is, with each layer's delays shuffled among its
    synapses (same delays, wrong synapses), and with every delay set to 0 (same weights, no delays)."""
    device = resolve_device(device)
    layers = list(delay_layers(model))
    saved = [layer.positions.detach().clone() for layer in layers]
    gen = torch.Generator().manual_seed(seed)
    results = {"learned": evaluate(model, loader, device)}
    try:
        for layer in layers:
            delays = layer.delays().flatten().cpu()
            layer.set_delays(delays[torch.randperm(delays.numel(), generator=gen)].view(layer.out_features, -1))
        results["shuffled"] = evaluate(model, loader, device)
        for layer in layers:
            layer.set_delays(torch.zeros(layer.out_features, layer.in_features))
        results["zero"] = evaluate(model, loader, device)
    finally:
        for layer, positions in zip(layers, saved):
            layer.positions.copy_(positions)
    return results


def layer_delays(model: nn.Module) -> list[list[list[int]]]:
    """Integer delays of every delay layer, ``[layer][out][in]``."""
    return [layer.delays().cpu().tolist() for layer in delay_layers(model)]


def train_run(
    config: DelayRunConfig,
    delays: str = "learned",
    sigma: str = "recipe",
    data: Optional[RunData] = None,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> dict:
    """Train one network and return its history, final test accuracy and delays."""
    device = resolve_device(device)
    schedule = arm_schedule(sigma, config)
    data = data or delay_task_data(config)
    with _cpu_threads(device, config.cpu_threads):
        return _train(config, delays, sigma, schedule, data, device, progress)


@contextlib.contextmanager
def _cpu_threads(device: torch.device, threads: int):
    """Run with ``threads`` intra-op threads on CPU (tiny ops pay more for threading than they gain)."""
    if device.type != "cpu" or not threads:
        yield
        return
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def _train(config, delays, sigma, schedule, data, device, progress) -> dict:
    torch.manual_seed(config.seed)
    model = build_model(config, delays, data.n_inputs, data.n_classes).to(device)
    optimizer = torch.optim.Adam(
        param_groups(model, config.lr, config.weight_decay, config.position_lr_scale)
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    learned = delays == "learned"
    initial = layer_delays(model)
    history = []
    start = time.perf_counter()
    bar = progress_bar(range(config.epochs), desc=f"{delays} delays, sigma {sigma}", disable=not progress, leave=False)
    for epoch in bar:
        if learned:
            set_sigma(model, schedule(epoch))
        model.train()
        loss_sum = correct = seen = 0
        for x, y in data.train:
            x, y = x.to(device), y.to(device)
            with _autocast(device, config.amp):
                potentials = model(x)
            loss = readout_loss(potentials.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            clamp_positions(model)
            loss_sum += float(loss.detach()) * y.numel()
            correct += int((predict(potentials.float()) == y).sum())
            seen += y.numel()
        scheduler.step()
        record = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / seen,
            "train_acc": correct / seen,
            "test_acc": evaluate(model, data.test, device, discrete=True, amp=config.amp),
            "sigma": next(iter(delay_layers(model))).sigma if learned else None,
        }
        if learned:
            record["test_acc_interpolated"] = evaluate(model, data.test, device, discrete=False, amp=config.amp)
        history.append(record)
        bar.set_postfix(loss=f"{record['train_loss']:.3f}", test=f"{record['test_acc']:.3f}")
    return {
        "delays": delays,
        "sigma_schedule": sigma if learned else None,
        "data": data.description,
        "config": config.to_dict(),
        "run_info": run_info(device),
        "history": history,
        "test_acc": history[-1]["test_acc"] if history else evaluate(model, data.test, device),
        "train_seconds": time.perf_counter() - start,
        "delays_initial": initial,
        "delays_final": layer_delays(model),
        "model": model,
    }


def run_delay_study(
    config: Optional[DelayRunConfig] = None,
    runs: Sequence[tuple[str, str]] = STUDY_RUNS,
    data: Optional[RunData] = None,
    device: torch.device | str | None = None,
    log_path: str | os.PathLike | None = None,
    progress: bool = True,
    profile: Optional[str] = None,
) -> dict:
    """Train each ``(delays, sigma schedule)`` of ``runs`` on the same data; optionally log to JSON.

    Returns ``{"runs": [...], "label": ..., "run_info": ...}``; each run as ``train_run`` returns it
    (the trained ``model`` is kept in memory, not in the JSON).
    """
    profile = profile or current_profile()
    config = config or delay_profile_config(profile)
    device = resolve_device(device)
    data = data or delay_task_data(config)
    results = []
    for delays, sigma in progress_bar(runs, desc="runs", disable=not progress):
        results.append(train_run(config, delays, sigma, data=data, device=device, progress=progress))
    threads = f"; trained on {config.cpu_threads} CPU thread(s)" if device.type == "cpu" and config.cpu_threads else ""
    study = {
        "runs": results,
        "data": data.description,
        "run_info": run_info(device, profile),
        "label": run_label(device, profile, data.description + threads),
    }
    if log_path is not None:
        write_json(log_path, {**study, "runs": [{k: v for k, v in r.items() if k != "model"} for r in results]})
    return study


def _parse_runs(text: str) -> list[tuple[str, str]]:
    runs = []
    for item in text.split(","):
        delays, _, sigma = item.strip().partition(":")
        runs.append((delays, sigma or "recipe"))
    return runs


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dcls_lib.snn.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", choices=sorted(PROFILE_CONFIGS), help="run size (default: DCLS_PROFILE)")
    parser.add_argument("--runs", default=",".join(f"{d}:{s}" for d, s in STUDY_RUNS),
                        help="comma-separated delays:sigma pairs; delays in learned/none/random, sigma in recipe/small/wide")
    parser.add_argument("--data", choices=("task", "shd"), default="task")
    parser.add_argument("--shd-root", help="folder holding (or receiving) shd_train.h5 and shd_test.h5")
    parser.add_argument("--download", action="store_true", help="download SHD into --shd-root if missing")
    parser.add_argument("--epochs", type=int, help="override the number of epochs")
    parser.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--out", required=True, help="JSON log to write")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    profile = args.profile or current_profile()
    if args.data == "shd":
        if not args.shd_root:
            parser.error("--data shd needs --shd-root")
        config = shd_config()
    else:
        config = delay_profile_config(profile)
    if args.epochs:
        config = replace(config, epochs=args.epochs)
    data = shd_data(config, args.shd_root, download=args.download) if args.data == "shd" else None
    study = run_delay_study(config, _parse_runs(args.runs), data=data, device=args.device, log_path=args.out,
                      progress=not args.no_progress, profile=profile)
    for run in study["runs"]:
        print(f"{run['delays']:>8} delays, sigma {run['sigma_schedule'] or '-':>6}: test accuracy {run['test_acc']:.3f}")
    print(study["label"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
