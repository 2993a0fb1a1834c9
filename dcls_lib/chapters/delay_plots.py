"""Figures and table rows for the delay chapter (8); the chapter labels each figure with ``viz.label_figure``."""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib import ticker

from ..recipe import SigmaSchedule
from ..snn.delays import SynapticDelays


def run_name(run: dict) -> str:
    if run["delays"] == "learned":
        return f"learned delays (sigma {run['sigma_schedule']})"
    return {"none": "no delays", "random": "fixed random delays"}[run["delays"]]


def plot_delay_kernel(max_delay: int, delay: float, sigmas: Sequence[float]):
    """One synapse's kernel while training (Gaussian of each ``SIG``) and at evaluation (rounded)."""
    layer = SynapticDelays(1, 1, max_delay)
    with torch.no_grad():
        layer.weight.fill_(1.0)
        layer.positions.fill_(layer.delay_offset - delay)
    steps = np.arange(max_delay)[::-1]  # kernel cell j carries delay max_delay - 1 - j
    fig, ax = plt.subplots(figsize=(7, 3))
    for sigma in sigmas:
        layer.set_sigma(sigma)
        ax.plot(steps, layer.kernel(discrete=False)[0, 0].detach(), marker=".", label=f"training, SIG = {sigma:g}")
    ax.bar(steps, layer.kernel(discrete=True)[0, 0].detach(), color="k", alpha=0.3, width=0.5,
           label=f"evaluation: delay {round(delay)}")
    ax.axvline(delay, color="k", lw=0.8, ls=":")
    ax.set(xlabel="delay (time steps)", ylabel="kernel weight", title=f"A synapse with delay {delay:g} as a 1-D DCLS tap")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_sigma_schedules(schedules: dict[str, SigmaSchedule], epochs: int):
    fig, ax = plt.subplots(figsize=(6, 2.8))
    for name, schedule in schedules.items():
        ax.plot(range(1, epochs + 1), [schedule(e) for e in range(epochs)], marker=".", label=name)
    ax.set(xlabel="epoch", ylabel="SIG", yscale="log", title="Interpolation width during training")
    ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_task_samples(x: torch.Tensor, y: torch.Tensor, n_classes: int):
    """One raster per class: spikes per channel over time."""
    fig, axes = plt.subplots(1, n_classes, figsize=(3 * n_classes, 2.6), sharey=True)
    for k, ax in enumerate(np.atleast_1d(axes)):
        sample = int(torch.nonzero(y == k)[0])
        channels, times = torch.nonzero(x[sample]).T
        ax.scatter(times, channels, marker="|", s=120, color=f"C{k}")
        ax.set(title=f"class {k}", xlabel="time step", xlim=(-0.5, x.shape[-1] - 0.5))
    np.atleast_1d(axes)[0].set_ylabel("input channel")
    fig.tight_layout()
    return fig


def results_rows(runs: Sequence[dict]) -> list[dict]:
    """A table row per run: its final accuracies and training time."""
    rows = []
    for run in runs:
        last = run["history"][-1]
        interpolated = last.get("test_acc_interpolated")
        rows.append({"synapses": run_name(run), "test accuracy (integer delays)": f"{run['test_acc']:.3f}",
                     "same, interpolated kernel": "-" if interpolated is None else f"{interpolated:.3f}",
                     "train accuracy": f"{last['train_acc']:.3f}", "minutes": f"{run['train_seconds'] / 60:.1f}"})
    return rows


def ablation_rows(ablation: dict[str, float]) -> list[dict]:
    """The rows of ``snn.train.delay_ablation``'s result: the learned network's delays as learned,
    shuffled among its synapses, and all zero."""
    names = {"learned": "as learned", "shuffled": "shuffled among synapses", "zero": "all zero"}
    return [{"the learned network's delays": names[key], "test accuracy": f"{acc:.3f}"} for key, acc in ablation.items()]


def plot_histories(runs: Sequence[dict], interpolated: bool = False):
    """Test accuracy per epoch (integer delays; dashed: the training interpolation)."""
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for i, run in enumerate(runs):
        epochs = [h["epoch"] for h in run["history"]]
        ax.plot(epochs, [h["test_acc"] for h in run["history"]], marker=".", color=f"C{i}", label=run_name(run))
        if interpolated and "test_acc_interpolated" in run["history"][0]:
            ax.plot(epochs, [h["test_acc_interpolated"] for h in run["history"]], ls="--", color=f"C{i}")
    ax.set(xlabel="epoch", ylabel="test accuracy", ylim=(0, 1.02))
    title = "Test accuracy (solid: integer delays" + ("; dashed: interpolated kernel)" if interpolated else ")")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_delay_histograms(run: dict, max_delay: int):
    """Histograms of every layer's integer delays at initialisation and after training."""
    layers = len(run["delays_final"])
    fig, axes = plt.subplots(1, layers, figsize=(4.5 * layers, 3), squeeze=False)
    bins = np.arange(max_delay + 1) - 0.5
    for i, ax in enumerate(axes[0]):
        ax.hist(np.ravel(run["delays_initial"][i]), bins=bins, alpha=0.5, label="initial")
        ax.hist(np.ravel(run["delays_final"][i]), bins=bins, alpha=0.6, label="learned")
        ax.set(xlabel="delay (time steps)", ylabel="synapses",
               title=f"layer {i + 1} ({'output' if i == layers - 1 else 'hidden'})")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
