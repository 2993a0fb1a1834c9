"""The study on SynthClick: train each family member as baseline, dilated and DCLS, then score how
well their Grad-CAM and Threshold-Grad-CAM maps align with the known "human" maps.

Each (family, variant, seed) is one training run (``dcls_lib.train``), kept under
``<runs>/study-<profile>-<library digest>/`` so that a rerun resumes or reloads it and a change of the
library retrains.  Scores come from ``dcls_lib.evaluate.evaluate_alignment`` on held-out test images
(per-image results are kept beside each run).  The table and the files the book's figures are drawn
from are written to ``study.json`` and ``study.md`` in the same folder.

Over seeds: :func:`aggregate` (mean and spread per family and variant, accuracy per span beside
every alignment score), :func:`claim_counts` (the published claim's count: models whose score rose
with DCLS) and :func:`paired_differences` (per-image differences, paired on the same images and
seed, with bootstrap intervals that resample seeds and images).

    python -m dcls_lib.study --profile cpu
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import statistics
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .cam import EXPLAINERS
from .data.clickme import ClickMe, clickme_val
from .data.synthclick import SPANS, SynthClick, factor_accuracy
from .evaluate import ExplainerSettings, evaluate_alignment
from .metrics import HUMAN_CEILING
from .transforms import PixelNormalize
from .files import write_json, write_text
from .models import STUDY_MODELS, cam_target, create_study_model, input_transform
from .models.small import VARIANTS
from .progress import progress_bar
from .runtime import current_profile, resolve_device, results_digest, run_info, runs_dir
from .tables import table_text
from .train import TrainConfig, TrainRun, evaluate_accuracy, load_run, profile_config, train
from .validation import check_choice, check_positive_int


@dataclass(frozen=True)
class StudyPlan:
    """Which runs the study trains and how many test images score them."""

    profile: str
    families: tuple[str, ...]
    variants: tuple[str, ...] = VARIANTS
    seeds: tuple[int, ...] = (0,)
    family_seeds: dict = field(default_factory=dict)  # family -> its seeds, where they are not ``seeds``
    test_size: int = 600
    threshold: float = 0.3
    train_overrides: dict = field(default_factory=dict)
    family_overrides: dict = field(default_factory=dict)  # family -> its training settings, where they differ

    def __post_init__(self) -> None:
        for name, table in (("family_seeds", self.family_seeds), ("family_overrides", self.family_overrides)):
            unknown = sorted(set(table) - set(self.families))
            if unknown:
                raise ValueError(f"{name} names families the plan does not train: {unknown}")

    def seeds_of(self, family: str) -> tuple[int, ...]:
        return tuple(self.family_seeds.get(family, self.seeds))

    def configs(self) -> list[TrainConfig]:
        """Every run, seed by seed (every family's first seed first) and a seed's variants together, so
        that an interrupted study already holds paired runs of every family."""
        seeds = sorted({s for f in self.families for s in self.seeds_of(f)})
        return [profile_config(self.profile, family=f, variant=v, seed=s,
                               **{**self.train_overrides, **self.family_overrides.get(f, {})})
                for s in seeds for f in self.families if s in self.seeds_of(f) for v in self.variants]


ALL_FAMILIES = ("resnet", "convnext", "fastvit", "convformer")
PLANS = {
    "smoke": StudyPlan("smoke", families=("resnet",), test_size=16),
    # the book on 2 cores: three seeds of the ResNet and the ConvNeXt, one of the others.  Epochs per
    # family, all three variants alike, from single runs (December 2026, validation accuracy): the
    # ResNet and the ConvFormer the profile's 3 (in a 2-epoch schedule the ResNet's baseline reached 72%
    # and its DCLS variant 69%, the DCLS ConvFormer 75%); the FastViT 2 (every variant 100% after 2);
    # the ConvNeXt 6 (its DCLS variant's loss stays at chance for 2-3 epochs: 40% and 75% after 3 of 3,
    # 91% and 100% after 5 of 5, 100% after 6 of 6).
    "cpu": StudyPlan("cpu", families=ALL_FAMILIES, seeds=(0,), family_seeds={"resnet": (0, 1, 2), "convnext": (0, 1, 2)},
                     family_overrides={"convnext": {"epochs": 6}, "fastvit": {"epochs": 2}}, test_size=240),
    "gpu": StudyPlan("gpu", families=ALL_FAMILIES, seeds=(0, 1, 2), test_size=2400),
}


def study_dir(profile: str) -> Path:
    return runs_dir() / f"study-{profile}-{results_digest()}"


def _run_name(config: TrainConfig) -> str:
    return f"{config.family}-{config.variant}-seed{config.seed}"


def test_split(config: TrainConfig, size: int) -> SynthClick:
    """The SynthClick test split that scores a run of ``config``: ``size`` images at its image size and data seed."""
    return SynthClick("test", image_size=config.image_size, seed=config.data_seed, size=size)


@lru_cache(maxsize=2)
def _rendered_test_split(image_size: int, data_seed: int, size: int) -> TensorDataset:
    """The test split's images, labels and human maps, rendered once for every run that shares them."""
    test = SynthClick("test", image_size=image_size, seed=data_seed, size=size)
    return TensorDataset(*test.batch())


def _score_run(run: TrainRun, plan: StudyPlan, device, progress: bool) -> dict:
    config = run.config
    test = _rendered_test_split(config.image_size, config.data_seed, plan.test_size)
    images, labels, _ = test.tensors
    pixels = (images * 255).round().to(torch.uint8)  # accuracy is measured on 8-bit images, as in training
    _, test_acc, confusion = evaluate_accuracy(run.model, pixels, labels, device,
                                              channels_last=config.channels_last)
    row = {"family": config.family, "variant": config.variant, "seed": config.seed,
           "val_acc": run.final["val_acc"], "test_acc": test_acc, "test_confusion": confusion.tolist()}
    row.update({f"{factor} acc": value for factor, value in factor_accuracy(confusion.numpy()).items()})
    target = cam_target(run.model)
    for explainer in EXPLAINERS:
        summary = evaluate_alignment(
            run.model, target.layer, test, reshape_transform=target.reshape_transform,
            preprocess=PixelNormalize(SynthClick.mean, SynthClick.std),
            settings=ExplainerSettings(explainer, plan.threshold), batch_size=config.batch_size, device=device,
            results_path=run.out_dir / f"alignment-{explainer}.jsonl", progress=progress,
        )
        row[explainer] = summary.alignment
        row[f"{explainer} sem"] = summary.alignment_sem
        row[f"{explainer} constant maps"] = summary.constant_model_maps
        row.update({f"{explainer} {span}": value for span, value in _alignment_by_span(results_rho(run.out_dir, explainer),
                                                                                         labels).items()})
    return row


def results_rho(run_dir: os.PathLike, explainer: str) -> dict[str, float]:
    """A run's per-image Spearman correlations (image id -> rho) from its results file; a constant map
    (stored as None) counts as 0, the study's policy (:mod:`dcls_lib.metrics`)."""
    path = Path(run_dir) / f"alignment-{explainer}.jsonl"
    entries = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return {e["id"]: e["spearman"] or 0.0 for e in entries if e.get("type") == "image"}


def _alignment_by_span(rho: dict[str, float], labels: torch.Tensor) -> dict[str, float]:
    """Alignment (mean rho / ceiling) over the test images of each span; image ids are test indices."""
    spans = list(SPANS)
    per_span: dict[str, list[float]] = {span: [] for span in spans}
    for image_id, value in rho.items():
        per_span[spans[int(labels[int(image_id)]) // (SynthClick.num_classes // len(spans))]].append(value)
    return {span: statistics.fmean(v) / HUMAN_CEILING for span, v in per_span.items() if v}


# What the study reports per (family, variant): accuracy overall and per span (the far-evidence
# classes apart), beside each explainer's alignment, overall and per span.
SUMMARY_KEYS = ("test_acc", "span acc", "orientation acc", *(f"{s} acc" for s in SPANS), *EXPLAINERS,
                *(f"{e} {s}" for e in EXPLAINERS for s in SPANS))


def aggregate(rows: list[dict]) -> list[dict]:
    """Mean and spread (sample standard deviation) over seeds, per family and variant, of SUMMARY_KEYS
    (keys a row lacks, such as accuracy on ClickMe, are None)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["family"], row["variant"]), []).append(row)
    out = []
    for (family, variant), members in groups.items():
        entry = {"family": family, "variant": variant, "seeds": len(members)}
        for key in SUMMARY_KEYS:
            values = [m[key] for m in members if m.get(key) is not None]
            entry[key] = statistics.fmean(values) if values else None
            entry[f"{key} std"] = statistics.stdev(values) if len(values) > 1 else None
        out.append(entry)
    return out


def _cell(entry: dict, key: str) -> str:
    if entry.get(key) is None:
        return "n/a"
    text = f"{entry[key] * 100:.1f}"
    if entry.get(f"{key} std") is not None:
        text += f" ± {entry[f'{key} std'] * 100:.1f}"
    return text


def markdown_table(summary: list[dict]) -> str:
    """The study's table: accuracy and alignment (mean, and spread over seeds where there are several)."""
    return table_text([{"family": e["family"], "variant": e["variant"], "seeds": e["seeds"],
                        "test accuracy (%)": _cell(e, "test_acc"), "Grad-CAM alignment (%)": _cell(e, "gradcam"),
                        "Threshold-Grad-CAM alignment (%)": _cell(e, "threshold-gradcam")} for e in summary])


def span_table(summary: list[dict]) -> str:
    """Accuracy and alignment per span (near: local evidence; mid and far: the two parts far apart)."""
    rows = []
    for e in summary:
        row = {"family": e["family"], "variant": e["variant"], "seeds": e["seeds"]}
        for span in SPANS:
            row[f"{span}: accuracy (%)"] = _cell(e, f"{span} acc")
            for explainer, label in zip(EXPLAINERS, ("Grad-CAM", "Threshold-Grad-CAM")):
                row[f"{span}: {label} (%)"] = _cell(e, f"{explainer} {span}")
        rows.append(row)
    return table_text(rows)


def claim_counts(rows: list[dict], variant: str = "dcls", against: str = "baseline") -> list[dict]:
    """The published claim's count ("DCLS raised the score in 7 of 8 models"), per explainer: of the
    families, how many whose mean score over seeds is higher as ``variant`` than as ``against``; and
    of the (family, seed) pairs, how many where it is."""
    out = []
    for explainer in EXPLAINERS:
        scores = {(r["family"], r["variant"], r["seed"]): r[explainer] for r in rows if r.get(explainer) is not None}
        pairs = [(f, s) for (f, v, s) in scores if v == against and (f, variant, s) in scores]
        families = list(dict.fromkeys(f for f, _ in pairs))
        rose = 0
        for family in families:
            seeds = [s for f, s in pairs if f == family]
            rose += statistics.fmean(scores[family, variant, s] for s in seeds) > statistics.fmean(
                scores[family, against, s] for s in seeds)
        out.append({"explainer": explainer, "comparison": f"{variant} vs {against}", "families rose": rose,
                    "families": len(families), "runs rose": sum(scores[f, variant, s] > scores[f, against, s]
                                                                for f, s in pairs), "runs": len(pairs)})
    return out


def paired_difference_rows(results: "StudyResults", explainer: str, variant: str = "dcls",
                           against: str = "baseline") -> list[dict]:
    """:func:`paired_differences` as table rows, in alignment points (percent of the human ceiling)."""
    rows = []
    for row in paired_differences(results, explainer, variant=variant, against=against):
        low, high = row.pop("low"), row.pop("high")
        row["mean difference"] = f"{row['mean difference'] * 100:+.1f}"
        row["95% interval"] = f"[{low * 100:+.1f}, {high * 100:+.1f}]"
        row[f"{variant} higher on"] = f"{row[f'{variant} higher on']:.0%}"
        rows.append(row)
    return rows


def paired_differences(results: "StudyResults", explainer: str, variant: str = "dcls", against: str = "baseline",
                       resamples: int = 2000, seed: int = 0) -> list[dict]:
    """Per family: the mean per-image difference in alignment (``variant`` - ``against``, rho / ceiling),
    paired on the same test image and training seed, with a 95% bootstrap interval that resamples
    seeds and, within them, images (both sources of spread), and the share of images where
    ``variant`` is higher."""
    check_choice("explainer", explainer, EXPLAINERS)
    rng = np.random.default_rng(seed)
    rows = []
    for family in dict.fromkeys(r["family"] for r in results.rows):
        seeds = sorted({r["seed"] for r in results.rows if r["family"] == family and r["variant"] == variant}
                       & {r["seed"] for r in results.rows if r["family"] == family and r["variant"] == against})
        if not seeds:
            continue
        per_seed = []
        for s in seeds:
            a = results_rho(results.run_dir(family, against, s), explainer)
            b = results_rho(results.run_dir(family, variant, s), explainer)
            ids = sorted(a.keys() & b.keys(), key=int)
            per_seed.append(np.array([b[i] - a[i] for i in ids]) / HUMAN_CEILING)
        if not all(len(d) for d in per_seed) or len({len(d) for d in per_seed}) != 1:
            raise ValueError(f"{family}: the runs of {seeds} were not scored on the same test images")
        d = np.stack(per_seed)  # (seeds, images)
        picks_seed = rng.integers(len(seeds), size=(resamples, len(seeds)))
        picks_image = rng.integers(d.shape[1], size=(resamples, d.shape[1]))
        boot = d[picks_seed[:, :, None], picks_image[:, None, :]].mean(axis=(1, 2))  # (resamples,)
        low, high = np.percentile(boot, [2.5, 97.5])
        rows.append({"family": family, "explainer": explainer, "comparison": f"{variant} - {against}",
                     "seeds": len(seeds), "images": d.shape[1], "mean difference": float(d.mean()),
                     "low": float(low), "high": float(high), f"{variant} higher on": float((d > 0).mean())})
    return rows


@dataclass
class StudyResults:
    plan: StudyPlan
    rows: list[dict]
    out_dir: Path
    info: dict

    @property
    def summary(self) -> list[dict]:
        return aggregate(self.rows)

    def table(self) -> str:
        return markdown_table(self.summary)

    def report(self) -> str:
        """Every table of the study: accuracy and alignment, per span, the claim's count and the
        paired differences (Markdown, as written to study.md)."""
        parts = [self.table(), span_table(self.summary), table_text(claim_counts(self.rows))]
        for variant in ("dcls", "dilated"):
            if variant not in self.plan.variants or "baseline" not in self.plan.variants:
                continue
            differences = [row for explainer in EXPLAINERS for row in paired_difference_rows(self, explainer, variant)]
            if differences:  # one table per variant: its columns name the variant
                parts.append(f"Paired per-image differences in alignment, {variant} - baseline (percentage points):"
                             f"\n\n{table_text(differences)}")
        return "\n\n".join(parts)

    def run_dir(self, family: str, variant: str, seed: int = 0) -> Path:
        return self.out_dir / f"{family}-{variant}-seed{seed}"

    def load_models(self, seed: int = 0, device=None) -> dict[tuple[str, str], TrainRun]:
        """The trained run of every (family, variant) of ``seed``, loaded on ``device``."""
        return {(r["family"], r["variant"]): load_run(self.run_dir(r["family"], r["variant"], seed), device=device)
                for r in self.rows if r["seed"] == seed}

    def test_split(self) -> SynthClick:
        """The SynthClick test split the study scored (all its runs share image size and data seed)."""
        if self.plan.profile not in PLANS:
            raise ValueError(f"a {self.plan.profile!r} study was not scored on SynthClick")
        return test_split(self.plan.configs()[0], self.plan.test_size)


def default_workers(device: torch.device) -> int:
    """Runs trained at once: one on a GPU; on a CPU one per core, up to four (small models use two
    cores badly: two runs side by side, one thread each, finish sooner than one after the other)."""
    return 1 if device.type != "cpu" else max(1, min(4, os.cpu_count() or 1))


def _train_and_score(config: TrainConfig, run_dir: Path, plan: StudyPlan, device: torch.device, threads: int,
                     progress: bool) -> dict:
    """One run of the study, trained (or reloaded) and scored: what each worker process does."""
    torch.set_num_threads(threads)
    run = train(config, run_dir, device=device, progress=progress)
    return _score_run(run, plan, device, progress)


def _run_job(job: tuple) -> dict:
    return _train_and_score(*job)


def run_study(
    profile: Optional[str] = None, out_dir: Optional[os.PathLike] = None, device=None, progress: bool = True,
    plan: Optional[StudyPlan] = None, workers: Optional[int] = None,
) -> StudyResults:
    """Train (or resume, or reload) every run of the plan, score it, and write study.json / study.md.

    ``workers`` processes train runs side by side (default: :func:`default_workers`), each with its
    share of the CPU threads; their rows come back in the plan's order."""
    if plan is None:
        profile = profile or current_profile()
        check_choice("profile", profile, sorted(PLANS))
        plan = PLANS[profile]
    profile = plan.profile
    out = Path(out_dir) if out_dir is not None else study_dir(profile)
    device = resolve_device(device)
    configs = plan.configs()
    workers = default_workers(device) if workers is None else workers
    check_positive_int(workers=workers)
    workers = min(workers, len(configs))
    if workers == 1:
        rows = [_train_and_score(c, out / _run_name(c), plan, device, torch.get_num_threads(), progress)
                for c in configs]
    else:
        threads = max(1, torch.get_num_threads() // workers)
        jobs = [(c, out / _run_name(c), plan, device, threads, False) for c in configs]
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            rows = list(progress_bar(pool.imap(_run_job, jobs), total=len(jobs),
                                     desc=f"study ({workers} runs at a time)", disable=not progress))
    info = run_info(device, profile)
    results = StudyResults(plan, rows, out, info)
    plan_dict = dataclasses.asdict(plan)
    write_json(out / "study.json", {"plan": plan_dict, "run": info, "rows": rows, "summary": results.summary})
    write_text(out / "study.md", results.report() + "\n")
    return results


def run_clickme_study(
    data: Optional[os.PathLike] = None,
    names: Sequence[str] = tuple(STUDY_MODELS),
    out_dir: Optional[os.PathLike] = None,
    cache_dir: Optional[os.PathLike] = None,
    limit: Optional[int] = None,
    threshold: float = 0.3,
    batch_size: int = 32,
    device=None,
    download: bool = False,
    progress: bool = True,
) -> StudyResults:
    """The published study itself: each of ``names`` (the study's eight base models) with its
    published weights, baseline and DCLS, scored on ClickMe with both explainers.

    ``data``: a folder of ClickMe validation shards (``None``: the cache, downloaded first when
    ``download``).  Weights come from ``cache_dir`` (``$DCLS_CACHE`` by default), downloaded when
    missing and online.  Rows have the same columns as the SynthClick study (no accuracy), so the same
    tables and figures apply.
    """
    dataset = ClickMe(data) if data is not None else clickme_val(download=download, progress=progress)
    out = Path(out_dir) if out_dir is not None else runs_dir() / f"clickme-{results_digest()}"
    rows = []
    for base in names:
        if base not in STUDY_MODELS:
            raise ValueError(f"{base!r} is not one of the study's models: {sorted(STUDY_MODELS)}")
        for variant, name in (("baseline", base), ("dcls", f"{base}_dcls")):
            model = create_study_model(name, pretrained=True, cache_dir=cache_dir, progress=progress)
            target = cam_target(model)
            row = {"family": base, "variant": variant, "seed": 0, "test_acc": None}
            for explainer in EXPLAINERS:
                summary = evaluate_alignment(
                    model, target.layer, dataset, reshape_transform=target.reshape_transform,
                    preprocess=input_transform(model), settings=ExplainerSettings(explainer, threshold),
                    batch_size=batch_size, device=device, limit=limit, progress=progress,
                    results_path=out / f"{name}-{explainer}.jsonl", metadata={"model": name, "data": "clickme"},
                )
                row[explainer] = summary.alignment
                row[f"{explainer} sem"] = summary.alignment_sem
                row[f"{explainer} constant maps"] = summary.constant_model_maps
            rows.append(row)
    plan = StudyPlan("clickme", families=tuple(names), variants=("baseline", "dcls"), test_size=limit or len(dataset),
                     threshold=threshold)
    results = StudyResults(plan, rows, out, run_info(device, "clickme"))
    write_json(out / "study.json",
               {"plan": dataclasses.asdict(plan), "run": results.info, "rows": rows, "summary": results.summary})
    return results


def load_study(path: os.PathLike) -> StudyResults:
    """A study written by ``run_study`` (a folder or its study.json), e.g. one copied from another machine."""
    path = Path(path)
    path = path / "study.json" if path.is_dir() else path
    data = json.loads(path.read_text())
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in data["plan"].items()}
    fields["family_seeds"] = {f: tuple(seeds) for f, seeds in fields.get("family_seeds", {}).items()}
    plan = StudyPlan(**fields)
    return StudyResults(plan, data["rows"], path.parent, data["run"])


def main(argv: Optional[Sequence[str]] = None) -> StudyResults:
    parser = argparse.ArgumentParser(prog="python -m dcls_lib.study", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", choices=sorted(PLANS), default=None)
    parser.add_argument("--clickme", metavar="DIR", nargs="?", const="",
                        help="instead: the published models on ClickMe shards in DIR (no DIR: the cache, downloaded)")
    parser.add_argument("--limit", type=int, default=None, help="with --clickme: the first N images only")
    parser.add_argument("--out", default=None, help="study folder (default: runs/study-<profile>-<digest>)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=None,
                        help="runs trained at once (default: one per CPU core up to four; one on a GPU)")
    args = parser.parse_args(argv)
    if args.clickme is not None:
        results = run_clickme_study(args.clickme or None, out_dir=args.out, limit=args.limit,
                                    device=args.device, download=not args.clickme)
    else:
        results = run_study(args.profile, args.out, device=args.device, workers=args.workers)
    print(results.report() if args.clickme is None else results.table())
    print(f"\n{json.dumps(results.info)}\nwritten to {results.out_dir}")
    return results


if __name__ == "__main__":
    main()
