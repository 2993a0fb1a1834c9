"""Chapter 5's sanity checks of the study's models: :func:`dcls_lib.sanity.sanity_report` per model,
the randomisation curves as a figure, the reports as one table, and what each check caught."""

from __future__ import annotations

import multiprocessing
from typing import Callable, Mapping, Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import Tensor, nn

from ..cam import DEFAULT_THRESHOLD, EXPLAINERS
from ..models import cam_target
from ..sanity import PERCENTILES, SanityReport, sanity_report
from ..sanity.randomisation import explainer_label
from ..study import default_workers

MODE_STYLES = {"cascading": "-", "independent": ":"}


def _sanity_job(job: tuple) -> SanityReport:
    model, images, labels, human, options, threads = job
    torch.set_num_threads(threads)
    target = cam_target(model)
    return sanity_report(model, target.layer, images, labels, human, reshape_transform=target.reshape_transform,
                         **options)


def study_sanity(models: Mapping[str, nn.Module], images: Tensor, labels: Tensor, human: Tensor,
                 preprocess: Optional[Callable[[Tensor], Tensor]] = None, road_images: int = 16,
                 road_percentiles: Sequence[float] = PERCENTILES,
                 threshold: float = DEFAULT_THRESHOLD, workers: Optional[int] = None) -> dict[str, SanityReport]:
    """The sanity report of every model (name -> model) on the same images, at its study target layer.

    ``workers`` processes check models side by side (default: one per CPU core up to four, one on a
    GPU): ROAD's sparse solves, most of the cost, use one core each.  Every report is seeded, so the
    reports are the same however many workers make them."""
    options = dict(preprocess=preprocess, road_images=road_images, road_percentiles=tuple(road_percentiles),
                   threshold=threshold)
    device = next(next(iter(models.values())).parameters()).device if models else torch.device("cpu")
    workers = max(1, min(len(models), default_workers(device) if workers is None else workers))
    threads = max(1, torch.get_num_threads() // workers)
    jobs = [(model, images, labels, human, options, threads) for model in models.values()]
    if workers == 1:
        reports = [_sanity_job(job) for job in jobs]
    else:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            reports = pool.map(_sanity_job, jobs)
    return dict(zip(models, reports))


def plot_randomisation(reports: Mapping[str, SanityReport]) -> plt.Figure:
    """Spearman between the trained and the randomised model's maps against the layers randomised
    (top first), one panel per model, one colour per map; solid: cascading (the k top layers),
    dotted: independent (layer k alone); bands: 95% bootstrap intervals of the cascading mean."""
    columns = min(2, len(reports))
    rows = -(-len(reports) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 4.2 * rows), squeeze=False, sharey=True)
    for ax in axes.flat[len(reports):]:
        ax.set_visible(False)
    for ax, (name, report) in zip(axes.flat, reports.items()):
        result = report.randomisation
        for k, explainer in enumerate(report.human_spearman):
            for mode, style in MODE_STYLES.items():
                rows = [r for r in result.rows if r["mode"] == mode and r["explainer"] == explainer]
                if not rows:
                    continue
                steps = [r["step"] for r in rows]
                reference = explainer not in EXPLAINERS  # drawn wide and pale: other lines may lie on it
                ax.plot(steps, [r["mean"] for r in rows], style, color=f"C{k}",
                        marker="o" if mode == "cascading" else None, markersize=3,
                        linewidth=4 - k if reference else 1.3, alpha=0.45 if reference or mode != "cascading" else 1,
                        label=explainer_label(explainer, report.threshold) if mode == "cascading" else None)
                if mode == "cascading":
                    ax.fill_between(steps, [r["ci low"] for r in rows], [r["ci high"] for r in rows],
                                    color=f"C{k}", alpha=0.15, linewidth=0)
        ax.axhline(0, color="0.6", linewidth=0.6)
        ax.set_xticks(range(1, len(result.layers) + 1), result.layers, rotation=60, ha="right", fontsize=7)
        ax.set_xlabel("layers randomised, from the top")
        ax.set_title(name, fontsize=10)
    for ax in axes[:, 0]:
        ax.set_ylabel("Spearman (trained, randomised)")
    axes[0, 0].set_ylim(-0.3, 1.05)
    axes[0, 0].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return fig


def sanity_rows(reports: Mapping[str, SanityReport]) -> list[dict]:
    """One row per model and map: alignment, Spearman with the randomised model (top layer, all
    layers; cascading), ROAD; cells are mean [95% bootstrap interval]."""
    def cell(stats, digits=2):
        if stats is None or np.isnan(stats["mean"]):
            return "n/a"
        return f"{stats['mean']:.{digits}f} [{stats['ci low']:.{digits}f}, {stats['ci high']:.{digits}f}]"

    return [{"model": name, "map": row["map"], "alignment (%)": f"{100 * row['alignment']:.1f}",
             "Spearman, top layer randomised": cell(row["randomised top layer"]),
             "Spearman, all layers randomised": cell(row["randomised all layers"]),
             "ROAD (LeRF - MoRF) / 2": cell(row["ROAD"], 3)}
            for name, report in reports.items() for row in report.rows()]


def check_verdicts(reports: Mapping[str, SanityReport], model_independent: float = 0.9) -> dict[str, dict]:
    """Per map, averaged over the models: its alignment, its Spearman after every layer is
    randomised, its ROAD score, and whether the randomisation test flags it (Spearman above
    ``model_independent``: the map barely depends on the weights)."""
    out: dict[str, dict] = {}
    for report in reports.values():
        for name, row in zip(report.human_spearman, report.rows()):
            entry = out.setdefault(explainer_label(name, report.threshold), {"alignment": [], "randomised": [],
                                                                             "road": []})
            entry["alignment"].append(row["alignment"])
            entry["randomised"].append(row["randomised all layers"]["mean"])
            entry["road"].append(np.nan if row["ROAD"] is None else row["ROAD"]["mean"])
    return {name: {"alignment": float(np.mean(e["alignment"])), "randomised": float(np.mean(e["randomised"])),
                   "road": float(np.nanmean(e["road"])) if not np.isnan(e["road"]).all() else float("nan"),
                   "flagged": float(np.mean(e["randomised"])) > model_independent}
            for name, e in out.items()}

