"""Figures and tables of the training runs and the study (chapters 4 and 6 of the book).

Each function takes what ``dcls_lib.study`` and ``dcls_lib.train`` saved and returns a matplotlib
figure or rows for ``dcls_lib.viz.markdown_table``; the notebooks add the label saying what produced it.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.ticker import MaxNLocator

from ..cam import EXPLAINERS, StudyCAM
from ..data.synthclick import CLASSES, ORIENTATIONS, SPANS, SynthClick, factor_accuracy
from ..metrics import spearman
from ..models import cam_target, parameter_count
from ..models.small import create_small_model
from ..recipe import param_groups
from ..study import StudyResults, claim_counts, load_study, paired_difference_rows
from ..train import load_positions, load_run
from ..transforms import PixelNormalize
from .heatmap_plots import METHOD_NAMES, plot_heatmap_grid

VARIANT_COLOURS = {"baseline": "tab:grey", "dilated": "tab:orange", "dcls": "tab:blue"}


def training_curves(results: StudyResults) -> plt.Figure:
    """Training loss and validation accuracy along training (the log's curve: several points per
    epoch), one colour per variant, a row per family."""
    families = list(dict.fromkeys(r["family"] for r in results.rows))
    fig, axes = plt.subplots(len(families), 2, figsize=(10, 3.2 * len(families)), squeeze=False)
    for row, family in zip(axes, families):
        for entry in (r for r in results.rows if r["family"] == family):
            log = load_run_log(results, entry)
            points = log.get("curve") or log["epochs"]  # runs logged before the curve: one point per epoch
            epochs = [p["epoch"] for p in points]
            style = dict(color=VARIANT_COLOURS[entry["variant"]], marker=".", alpha=0.85,
                         label=entry["variant"] if entry["seed"] == results.plan.seeds_of(family)[0] else None)
            row[0].plot(epochs, [p["train_loss"] for p in points], **style)
            row[1].plot(epochs, [p["val_acc"] for p in points], **style)
        row[0].set(title=f"{family}: training loss", xlabel="epoch", ylabel="cross-entropy")
        row[1].axhline(1 / len(CLASSES), color="black", lw=0.8, ls=":", label="chance")
        row[1].set(title=f"{family}: validation accuracy", xlabel="epoch", ylabel="accuracy", ylim=(0, 1))
        row[1].legend(fontsize=8)
        for ax in row:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return fig


def load_run_log(results: StudyResults, row: dict) -> dict:
    return json.loads((results.run_dir(row["family"], row["variant"], row["seed"]) / "log.json").read_text())


def accuracy_rows(results: StudyResults) -> list[dict]:
    """Per run: test accuracy, accuracy on each SynthClick factor, parameters and training time."""
    rows = []
    for entry in results.rows:
        factors = factor_accuracy(entry["test_confusion"])
        run = load_run(results.run_dir(entry["family"], entry["variant"], entry["seed"]), device="cpu")
        seconds = sum(e["seconds"] for e in run.log["epochs"])
        images = run.config.train_size // run.config.batch_size * run.config.batch_size * run.config.epochs
        rows.append({
            "family": entry["family"], "variant": entry["variant"], "seed": entry["seed"],
            "test accuracy": f"{entry['test_acc']:.1%}",
            f"span ({len(SPANS)} ways)": f"{factors['span']:.1%}",
            f"orientation ({len(ORIENTATIONS)} ways)": f"{factors['orientation']:.1%}",
            **{f"{span} classes": f"{factors[span]:.1%}" for span in SPANS},
            "training": f"{seconds / 60:.1f} min ({images / seconds:.0f} images/s)",
        })
    return rows


def _grid_counts(P: torch.Tensor, size: int) -> np.ndarray:
    """How many taps sit nearest to each cell of a size x size grid (P: (2, ..., taps) offsets)."""
    cells = (P.reshape(2, -1).round() + size // 2).clamp(0, size - 1).long()
    counts = np.zeros((size, size))
    for (r, c), n in Counter(map(tuple, cells.T.tolist())).items():
        counts[r, c] = n
    return counts


def position_maps(run_dir, size: int, snapshots: Sequence[str] = ("init", None)) -> plt.Figure:
    """Where the taps of each stage sit (nearest cell, all filters pooled) at the start and the end."""
    positions = load_positions(run_dir)
    names = [s or list(positions)[-1] for s in snapshots]
    stages = list(positions["init"])
    fig, axes = plt.subplots(len(names), len(stages), figsize=(1.9 * len(stages), 2.1 * len(names)), squeeze=False)
    for i, snapshot in enumerate(names):
        for j, stage in enumerate(stages):
            counts = _grid_counts(positions[snapshot][stage], size)
            ax = axes[i][j]
            ax.imshow(counts / counts.sum(), cmap="viridis")
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_title(f"{stage.removesuffix('.P')}\n{snapshot}", fontsize=7)
    fig.tight_layout()
    return fig


def spread_over_training(run_dir) -> plt.Figure:
    """Mean distance of the taps from the kernel centre per stage, at each snapshot."""
    positions = load_positions(run_dir)
    snapshots = list(positions)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for stage in positions["init"]:
        spread = [positions[s][stage].norm(dim=0).mean().item() for s in snapshots]
        ax.plot(range(len(snapshots)), spread, marker="o", label=stage.removesuffix(".P"))
    ax.set_xticks(range(len(snapshots)), snapshots, fontsize=8)
    ax.set(ylabel="mean |P| (cells)", title="How far taps sit from the kernel centre")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def alignment_bars(results: StudyResults) -> plt.Figure:
    """The study's comparison: alignment per family and variant, one panel per explainer."""
    summary = results.summary
    families = list(dict.fromkeys(e["family"] for e in summary))
    variants = list(dict.fromkeys(e["variant"] for e in summary))
    fig, axes = plt.subplots(1, len(EXPLAINERS), figsize=(5 * len(EXPLAINERS), 3.4), sharey=True)
    width = 0.8 / len(variants)
    for ax, explainer in zip(axes, EXPLAINERS):
        for k, variant in enumerate(variants):
            entries = [next(e for e in summary if e["family"] == f and e["variant"] == variant) for f in families]
            x = np.arange(len(families)) + (k - (len(variants) - 1) / 2) * width
            errors = [e[f"{explainer} std"] or 0 for e in entries]
            ax.bar(x, [e[explainer] for e in entries], width, yerr=errors, capsize=3,
                   color=VARIANT_COLOURS.get(variant), label=variant)
        ax.set_xticks(range(len(families)), families)
        ax.axhline(0, color="black", lw=0.6)
        ax.set(title=METHOD_NAMES[explainer], ylabel="alignment (Spearman / human ceiling)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def per_image_scores(results: StudyResults, explainer: str) -> dict[tuple[str, str, int], dict[str, float]]:
    """Each run's per-image Spearman correlations (image id -> rho), read from its results file.

    A constant map (stored as None) counts as 0, the study's default policy (``dcls_lib.metrics``)."""
    scores = {}
    for row in results.rows:
        folder = results.run_dir(row["family"], row["variant"], row["seed"])
        path = folder / f"alignment-{explainer}.jsonl"
        if not path.exists():  # the ClickMe study keeps one file per model name
            name = row["family"] if row["variant"] == "baseline" else f"{row['family']}_dcls"
            path = results.out_dir / f"{name}-{explainer}.jsonl"
        entries = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
        scores[row["family"], row["variant"], row["seed"]] = {
            e["id"]: e["spearman"] or 0.0 for e in entries if e.get("type") == "image"
        }
    return scores


def paired_differences(results: StudyResults, explainer: str, against: str = "baseline", variant: str = "dcls") -> list[dict]:
    """Per family: the paired per-image difference in alignment with its bootstrap interval over
    seeds and images (:func:`dcls_lib.study.paired_difference_rows`)."""
    return paired_difference_rows(results, explainer, variant=variant, against=against)


def score_distributions(results: StudyResults) -> plt.Figure:
    """Per-image Spearman correlations of every variant, one panel per explainer (seeds pooled)."""
    fig, axes = plt.subplots(1, len(EXPLAINERS), figsize=(5 * len(EXPLAINERS), 3.4), sharey=True)
    for ax, explainer in zip(axes, EXPLAINERS):
        scores = per_image_scores(results, explainer)
        groups: dict[tuple[str, str], list[float]] = {}
        for (family, variant, _), values in scores.items():
            groups.setdefault((family, variant), []).extend(values.values())
        labels = [f"{f}\n{v}" for f, v in groups]
        parts = ax.violinplot(list(groups.values()), showmedians=True)
        for body, (_, variant) in zip(parts["bodies"], groups):
            body.set_facecolor(VARIANT_COLOURS.get(variant, "tab:blue"))
        ax.set_xticks(range(1, len(labels) + 1), labels, fontsize=7)
        ax.axhline(0, color="black", lw=0.6)
        ax.set(title=METHOD_NAMES[explainer], ylabel="Spearman with the human map, per image")
    fig.tight_layout()
    return fig


def example_heatmaps(results: StudyResults, images: torch.Tensor, labels: torch.Tensor, human: torch.Tensor,
                     explainer: str, seed: int = 0, device="cpu") -> plt.Figure:
    """Columns: images; rows: the image, its human map, and each trained model's map (with its Spearman),
    drawn by ``dcls_lib.heatmaps.plot_heatmap_grid`` like chapter 5's figures."""
    normalize = PixelNormalize(SynthClick.mean, SynthClick.std)
    rows, scores = {}, {}
    for row in (r for r in results.rows if r["seed"] == seed):
        model = load_run(results.run_dir(row["family"], row["variant"], row["seed"]), device=device).model
        target = cam_target(model)
        cam = StudyCAM(model, target.layer, target.reshape_transform, explainer=explainer,
                       threshold=results.plan.threshold)
        name = f"{row['family']} {row['variant']}"
        rows[name] = cam(normalize(images.to(device)), labels.to(device)).cpu()
        scores[name] = spearman(rows[name], human).tolist()
    fig = plot_heatmap_grid(images, human, rows, scores, column_titles=[CLASSES[int(c)] for c in labels])
    fig.suptitle(METHOD_NAMES[explainer], fontsize=10, y=1.01)
    return fig


def variant_rows(plan) -> list[dict]:
    """Per family and variant of a study plan: parameters and convolutions of the untrained model."""
    rows = []
    for family in plan.families:
        config = next(c for c in plan.configs() if c.family == family)
        for variant in plan.variants:
            model = create_small_model(family, variant, width=config.width)
            convs = sum(type(m).__name__ in ("Conv2d", "Dcls2d") for m in model.modules())
            rows.append({"family": family, "variant": variant, "width": config.width,
                         "parameters": f"{parameter_count(model):,}", "convolutions": convs})
    return rows


def param_group_rows(model: torch.nn.Module, config) -> list[dict]:
    """The optimiser groups the DCLS recipe gives ``model`` under ``config``'s learning rates."""
    groups = param_groups(model, config.lr, config.weight_decay, config.position_lr_scale)
    return [{"group": g["name"], "tensors": len(g["params"]),
             "numbers": f"{sum(p.numel() for p in g['params']):,}",
             "learning rate": f"{g['lr']:.0e}", "weight decay": g["weight_decay"]} for g in groups]


def not_learned_rows(results: StudyResults, factor: float = 2.0) -> list[dict]:
    """The rows of runs whose test accuracy is below ``factor`` times chance."""
    chance = 1 / len(CLASSES)
    return [r for r in results.rows if r.get("test_acc") is not None and r["test_acc"] < factor * chance]


def near_chance(results: StudyResults, factor: float = 2.0) -> list[str]:
    """The (family-variant-seed) runs whose test accuracy is below ``factor`` times chance: runs
    that have not learned the task, whose heatmaps are no evidence."""
    return [f"{r['family']}-{r['variant']}-seed{r['seed']}" for r in not_learned_rows(results, factor)]


def learned_rows(results: StudyResults, factor: float = 2.0) -> list[dict]:
    """The rows of the families whose every run learned the task (accuracy at least ``factor`` times
    chance): the published claim's count compares a family's variants, which means nothing when
    one of them has not learned."""
    failed = {r["family"] for r in not_learned_rows(results, factor)}
    return [r for r in results.rows if r["family"] not in failed]


def learned_claim_counts(results: StudyResults) -> list[dict]:
    """:func:`dcls_lib.study.claim_counts` over the families whose runs all learned the task."""
    return claim_counts(learned_rows(results))


def finding_text(results: StudyResults) -> str:
    """One sentence of what the study found in this build: the claim's count per explainer over the
    families that learned the task, and which runs did not (the front page quotes it)."""
    counts = "; ".join(f"{METHOD_NAMES[c['explainer']]}: {c['families rose']} of {c['families']} "
                       f"families ({c['runs rose']} of {c['runs']} runs)" for c in learned_claim_counts(results))
    failed = near_chance(results)
    if not failed:
        return f"DCLS raised the alignment score in {counts}; every run learned the task (accuracy above twice chance)."
    left_out = sorted({r["family"] for r in not_learned_rows(results)})
    return (f"Among the families whose runs all learned the task, DCLS raised the alignment score in {counts}; "
            f"{len(failed)} of {len(results.rows)} runs stayed below twice chance accuracy "
            f"({', '.join(failed)}), so {', '.join(left_out)} {'is' if len(left_out) == 1 else 'are'} left out "
            "of the count.")


def accuracy_text(results: StudyResults) -> str:
    """Test accuracy of every family and variant (mean over seeds), as one sentence for the prose."""
    parts = []
    for family in results.plan.families:
        values = []
        for variant in results.plan.variants:
            accs = [r["test_acc"] for r in results.rows if (r["family"], r["variant"]) == (family, variant)]
            if accs:
                values.append(f"{variant} {100 * float(np.mean(accs)):.0f}%")
        parts.append(f"{family}: {', '.join(values)}")
    return "Test accuracy (chance 8%): " + "; ".join(parts) + "."


def kept_gpu_study(folder: str = "results/study-gpu"):
    """The gpu-profile study committed under ``folder`` (relative to the repository), or None."""
    path = Path(__file__).resolve().parents[2] / folder
    if not (path / "study.json").is_file():
        return None
    return load_study(path)


def study_label(study: StudyResults) -> str:
    """What ran a saved study: device, profile, commit and date, from its run information."""
    info = study.info
    return f"Computed on {info['device']}, profile {study.plan.profile}, commit {info['commit']}, {info['date']}"


def percent_rows(rows: list[dict]) -> list[dict]:
    """Rows with their fractions (accuracies, bounds, chance) written as percentages, for a table."""
    return [{k: f"{v:.1%}" if isinstance(v, float) else v for k, v in row.items()} for row in rows]
