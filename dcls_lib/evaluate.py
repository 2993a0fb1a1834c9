"""Human-alignment evaluation: a model's heatmaps against human maps, one Spearman score per image.

:func:`evaluate_alignment` is model-agnostic: it takes the model, its target layer (and a
``reshape_transform`` for token or channels-last layers), a dataset and the explainer, and
streams one result per image to a JSON-lines file as it goes.  Run it again with the same file and
it carries on where it stopped: images already in the file are skipped, none is counted twice.

The dataset interface.  A map-style dataset whose items are ``(image, label, human_map)``:
``image`` a float tensor (3, H, W) with values in [0, 1] (as :class:`~dcls_lib.data.ClickMe` and
``SynthClick`` give them), ``label`` the class whose logit is explained, ``human_map`` (H', W')
float.  The
optional attribute ``image_ids`` (a sequence of unique strings) names the images in the results
file; without it the index is the name.  ``preprocess`` turns a batch of such images, already on
the device, into the model's input (for ImageNet models: ``PixelNormalize()``); with
``preprocess=None`` the images go to the model unchanged, for datasets that yield model-ready
tensors.  Heatmaps are resized to the human maps' size.

Besides the alignment score, every image gets Harmonization's Dice and IoU of the top 10% of pixels
(:func:`dcls_lib.metrics.top_fraction_overlap`).  A record the dataset reports as damaged
(:class:`~dcls_lib.data.tfrecords.TFRecordError`) stops the run after the rest of its batch is
saved, or, with ``skip_damaged=True``, is listed in the results and the summary and left out.

The command line (``python -m dcls_lib.evaluate --help``) adds the model zoo and the datasets.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from .cam import DEFAULT_THRESHOLD, EXPLAINERS, StudyCAM
from .data.tfrecords import TFRecordError
from .files import file_digest, write_json, write_text
from .metrics import (
    CONSTANT_POLICIES,
    HUMAN_CEILING,
    alignment_from_correlations,
    is_constant,
    spearman,
    top_fraction_overlap,
)
from .progress import progress_bar
from .runtime import device_name, resolve_device, run_info
from .sanity.checks import SANITY_METRICS, model_checks, parse_metrics
from .transforms import PixelNormalize

RESULTS_FORMAT = "dcls_lib.alignment/2"
AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class ExplainerSettings:
    """What heatmap is computed and at what precision; these settings define a results file.

    - ``explainer``: "threshold-gradcam" (with ``threshold``) or "gradcam" (:mod:`dcls_lib.cam`).
    - ``amp``: mixed precision for the forward pass: ``True`` (bfloat16), "bfloat16" or "float16";
      maps and scores are computed in float32 / float64 either way.
    - ``channels_last``: store the model and its inputs NHWC, which convolutions run faster in on
      CPUs and GPUs alike (1.7x for ResNet-18 on CPU); results change by float rounding only.
    """

    explainer: str = "threshold-gradcam"
    threshold: float = DEFAULT_THRESHOLD
    amp: Union[bool, str] = False
    channels_last: bool = True

    def __post_init__(self) -> None:
        if self.explainer not in EXPLAINERS:
            raise ValueError(f"explainer must be one of {EXPLAINERS}, got {self.explainer!r}")
        if self.amp is True:
            object.__setattr__(self, "amp", "bfloat16")
        if self.amp and self.amp not in AMP_DTYPES:
            raise ValueError(f"amp must be False, True or one of {tuple(AMP_DTYPES)}, got {self.amp!r}")

    @property
    def precision(self) -> str:
        return self.amp or "float32"

    def record(self) -> dict:
        """The settings as stored in a results file (those that change the scores)."""
        threshold = self.threshold if self.explainer == "threshold-gradcam" else None
        return {"explainer": self.explainer, "threshold": threshold, "precision": self.precision}


# --- results file ----------------------------------------------------------------------------------


class ResultsFile:
    """Per-image results and their bookkeeping: which images are done, and, with a path, a
    JSON-lines file that a later run resumes.

    Line 1 holds the settings (explainer, threshold, precision and the caller's ``metadata`` such
    as model, checkpoint digest and data); a run with other settings is refused rather than mixed
    in.  Then one ``session`` line per run (what ran it), one ``image`` line per image and one
    ``damaged`` line per record skipped as damaged.  Lines are appended a batch at a time and
    flushed to disk; a line cut short by a crash is dropped (the file is rewritten atomically
    without it) and that image is simply evaluated again.  ``path=None`` keeps everything in memory.
    """

    def __init__(self, path: Optional[Union[str, os.PathLike]], settings: dict) -> None:
        self.path = Path(path) if path is not None else None
        self.settings = json.loads(json.dumps({"format": RESULTS_FORMAT, **settings}))
        self.images: dict[str, dict] = {}
        self.damaged: dict[str, str] = {}
        if self.path is None:
            return
        if self.path.exists():
            self._load()
        else:
            write_text(self.path, json.dumps({"type": "settings", **self.settings}) + "\n")

    def _load(self) -> None:
        complete, _, tail = self.path.read_text().rpartition("\n")
        if tail:  # the last line was cut in the middle of a write: drop it, that image is evaluated again
            write_text(self.path, complete + "\n" if complete else "")
        entries = []
        for number, line in enumerate(complete.split("\n") if complete else [], start=1):
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{self.path}: line {number} is not valid JSON ({error})") from error
        header = entries[0] if entries else {}
        if header.get("type") != "settings":
            raise ValueError(f"{self.path}: not an alignment results file (no settings line); use another --results path")
        stored = {k: v for k, v in header.items() if k != "type"}
        if stored != self.settings:
            keys = sorted(k for k in set(stored) | set(self.settings) if stored.get(k) != self.settings.get(k))
            differences = ", ".join(f"{k}: file {stored.get(k)!r} vs now {self.settings.get(k)!r}" for k in keys)
            raise ValueError(f"{self.path} holds results of other settings ({differences}); use another --results path")
        for number, entry in enumerate(entries[1:], start=2):
            if entry.get("type") == "image":
                if entry["id"] in self.images:
                    raise ValueError(f"{self.path}: line {number}: image {entry['id']!r} is already in the file")
                self.images[entry["id"]] = entry
            elif entry.get("type") == "damaged":
                self.damaged[entry["id"]] = entry["error"]

    def todo(self, ids: list[str]) -> list[int]:
        """Positions in ``ids`` of the images not yet scored (damaged ones are tried again)."""
        return [i for i, image_id in enumerate(ids) if image_id not in self.images]

    def append(self, entries: list[dict]) -> None:
        for entry in entries:
            if entry.get("type") == "image":
                if entry["id"] in self.images:
                    raise ValueError(f"{self.path or 'results'}: image {entry['id']!r} is already in the file")
                self.images[entry["id"]] = entry
                self.damaged.pop(entry["id"], None)
            elif entry.get("type") == "damaged":
                self.damaged[entry["id"]] = entry["error"]
        if self.path is None:
            return
        with open(self.path, "a") as out:
            out.write("".join(json.dumps(entry) + "\n" for entry in entries))
            out.flush()
            os.fsync(out.fileno())

    def write_summary(self, summary: "AlignmentSummary") -> None:
        if self.path is not None:
            write_text(Path(f"{self.path}.summary.json"), json.dumps(asdict(summary), indent=2) + "\n")


# --- summary ---------------------------------------------------------------------------------------


def _mean_sem(values: Tensor) -> tuple[float, float]:
    if values.numel() == 0:
        return math.nan, math.nan
    sem = float(values.std() / math.sqrt(values.numel())) if values.numel() > 1 else math.nan
    return float(values.mean()), sem


@dataclass
class AlignmentSummary:
    """The score of a run: every image in the results (all sessions), under a constant-map policy.

    ``images`` were evaluated; ``scored`` of them count in the means (all of them with
    ``constant_policy="zero"``; without those whose model or human map is constant with "skip").
    Dice and IoU (top 10% of pixels) are averaged over the same images as the alignment score.
    """

    images: int
    scored: int
    alignment: float
    alignment_sem: float
    mean_spearman: float
    dice: float
    iou: float
    constant_model_maps: int
    constant_human_maps: int
    constant_policy: str
    settings: dict
    damaged: dict = field(default_factory=dict)
    images_this_run: int = 0
    images_per_second: Optional[float] = None
    device: str = ""
    results_path: Optional[str] = None
    ceiling: float = HUMAN_CEILING
    info: dict = field(default_factory=dict)

    @classmethod
    def from_results(cls, results: ResultsFile, constant: str = "zero", **extra) -> "AlignmentSummary":
        images = list(results.images.values())
        if not images:
            raise ValueError("no image was evaluated: the dataset (or its --limit) is empty")
        rho = torch.tensor([math.nan if e["spearman"] is None else e["spearman"] for e in images], dtype=torch.float64)
        dice = torch.tensor([e["dice"] for e in images], dtype=torch.float64)
        iou = torch.tensor([e["iou"] for e in images], dtype=torch.float64)
        counted = torch.ones_like(rho, dtype=torch.bool) if constant == "zero" else ~torch.isnan(rho)
        alignment = alignment_from_correlations(rho, constant=constant)
        _, sem = _mean_sem(torch.nan_to_num(rho, nan=0.0)[counted])
        return cls(
            images=len(images),
            scored=int(counted.sum()),
            alignment=alignment,
            alignment_sem=sem / HUMAN_CEILING,
            mean_spearman=alignment * HUMAN_CEILING,
            dice=_mean_sem(dice[counted])[0],
            iou=_mean_sem(iou[counted])[0],
            constant_model_maps=sum(bool(e["model_constant"]) for e in images),
            constant_human_maps=sum(bool(e["human_constant"]) for e in images),
            constant_policy=constant,
            settings=results.settings,
            damaged=dict(results.damaged),
            results_path=str(results.path) if results.path is not None else None,
            **extra,
        )

    def table(self) -> str:
        """A plain-text table for the terminal and logs."""
        s = self.settings
        left_out = self.images - self.scored
        rows = [
            ("model", s.get("model", "(given)")),
            ("checkpoint", s.get("checkpoint") or "(none)"),
            ("data", s.get("data", "(given)")),
            ("explainer", s["explainer"] + (f" (threshold {s['threshold']})" if s.get("threshold") is not None else "")),
            ("precision", s["precision"]),
            ("images", f"{self.images} evaluated, {self.scored} scored"
                       + (f" ({left_out} with a constant map left out)" if left_out else "")),
            ("alignment score", f"{self.alignment:.4f} +- {self.alignment_sem:.4f} (mean Spearman / {self.ceiling})"),
            ("mean Spearman", f"{self.mean_spearman:.4f}"),
            ("top-10% Dice", f"{self.dice:.4f}"),
            ("top-10% IoU", f"{self.iou:.4f}"),
            ("constant model maps", f"{self.constant_model_maps} (counted as {self.constant_policy})"),
            ("constant human maps", f"{self.constant_human_maps}"),
            ("damaged records", f"{len(self.damaged)} skipped" + "".join(f"\n    {k}: {v}" for k, v in self.damaged.items())
             if self.damaged else "0"),
            ("this run", f"{self.images_this_run} images" + (f", {self.images_per_second:.1f} images/s" if self.images_per_second else "")),
            ("device", self.device),
            ("results", self.results_path or "(not saved)"),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


# --- the engine -------------------------------------------------------------------------------------


class _Selected(Dataset):
    """The items ``indices`` of a dataset, each with its index in front; a damaged item becomes
    ``(index, error message)`` so that the rest of its batch is still scored."""

    def __init__(self, dataset: Dataset, indices: list[int]) -> None:
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int):
        index = self.indices[position]
        try:
            return (index, *self.dataset[index])
        except TFRecordError as error:
            return index, str(error)


def _collate(items: list[tuple]):
    """(indices, images, labels, human maps) of the readable items, and (index, error) of the damaged ones."""
    good = [item for item in items if len(item) == 4]
    damaged = [item for item in items if len(item) == 2]
    if not good:
        return None, damaged
    indices, images, labels, human = zip(*good)
    batch = (torch.tensor(indices), torch.stack(images), torch.as_tensor(labels), torch.stack([torch.as_tensor(h) for h in human]))
    return batch, damaged


def _image_ids(dataset: Dataset) -> list[str]:
    ids = getattr(dataset, "image_ids", None)
    ids = [str(i) for i in range(len(dataset))] if ids is None else [str(i) for i in ids]
    if len(ids) != len(dataset) or len(set(ids)) != len(ids):
        raise ValueError("dataset.image_ids must name every item once")
    return ids


class DamagedRecordError(TFRecordError):
    """A damaged record stopped the run; the rest of its batch was saved first."""


class BatchScorer:
    """Heatmaps of one batch and their scores against the human maps: Spearman, top-10% Dice and IoU.

    Holds the model (moved to ``device``, channels-last if asked), its target layer and the
    preprocessing; ``score(images, labels, human)`` returns one dict per image.
    """

    def __init__(self, model: nn.Module, target_layer: nn.Module, settings: ExplainerSettings, device: torch.device,
                 reshape_transform: Optional[Callable] = None, preprocess: Optional[Callable[[Tensor], Tensor]] = None):
        self.settings, self.device = settings, device
        model.to(device, memory_format=torch.channels_last) if settings.channels_last else model.to(device)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # all batches but the last have one shape
        self.preprocess = preprocess.to(device) if isinstance(preprocess, nn.Module) else preprocess
        self.cam = StudyCAM(model, target_layer, reshape_transform, explainer=settings.explainer, threshold=settings.threshold)

    def score(self, images: Tensor, labels: Tensor, human: Tensor) -> list[dict]:
        images = images.to(self.device, non_blocking=True)
        human = human.to(self.device, non_blocking=True)
        if human.dim() == 4 and human.shape[1] == 1:
            human = human[:, 0]  # (B, 1, H, W) -> (B, H, W)
        if human.dim() != 3:
            raise ValueError(f"human maps must be (H, W) per image, got a batch of shape {tuple(human.shape)}")
        inputs = self.preprocess(images) if self.preprocess is not None else images
        if self.settings.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        amp = self.settings.amp
        with torch.autocast(self.device.type, dtype=AMP_DTYPES.get(amp or "bfloat16"), enabled=bool(amp)):
            maps = self.cam(inputs, labels.to(self.device), size=human.shape[-2:])
        human = human.float()
        rho = spearman(maps, human).tolist()
        dice, iou = top_fraction_overlap(maps, human)
        columns = zip(labels.tolist(), rho, dice.tolist(), iou.tolist(), is_constant(maps).tolist(), is_constant(human).tolist())
        return [
            {"label": int(label), "spearman": None if math.isnan(r) else r, "dice": d, "iou": j,
             "model_constant": mc, "human_constant": hc}
            for label, r, d, j, mc, hc in columns
        ]


def evaluate_alignment(
    model: nn.Module,
    target_layer: nn.Module,
    dataset: Dataset,
    *,
    reshape_transform: Optional[Callable] = None,
    preprocess: Optional[Callable[[Tensor], Tensor]] = None,
    settings: ExplainerSettings = ExplainerSettings(),
    batch_size: int = 64,
    device=None,
    results_path: Optional[Union[str, os.PathLike]] = None,
    constant: str = "zero",
    num_workers: Optional[int] = None,
    limit: Optional[int] = None,
    metadata: Optional[dict] = None,
    skip_damaged: bool = False,
    progress: bool = True,
) -> AlignmentSummary:
    """Score ``model``'s heatmaps against the human maps of ``dataset`` (see the module doc for the interface).

    - ``settings``: the explainer, its threshold, precision and memory layout (:class:`ExplainerSettings`);
      the explained logit is each image's label.
    - ``device``: "auto"/None picks CUDA when available; the model is moved there and put in eval mode.
    - ``results_path``: JSON-lines file, appended to per batch; a rerun resumes it (settings must
      match: explainer, threshold, precision and ``metadata``).  ``None`` keeps results in memory.
    - ``constant``: "zero" or "skip", what a constant map counts for (:mod:`dcls_lib.metrics`).
    - ``limit``: evaluate only the first ``limit`` items of the dataset.
    - ``skip_damaged``: list damaged records and go on, instead of stopping at the first
      (:class:`DamagedRecordError`, raised once the rest of its batch is saved).
    - ``num_workers``: DataLoader workers; default 0 on CPU (the model uses the cores), up to 8 on CUDA.

    Returns the summary of every image in the results file, also written next to it as
    ``<results>.summary.json``.
    """
    if constant not in CONSTANT_POLICIES:
        raise ValueError(f"constant must be one of {CONSTANT_POLICIES}, got {constant!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be a non-negative int, got {limit!r}")
    device = resolve_device(device)
    if num_workers is None:
        num_workers = min(8, os.cpu_count() or 1) if device.type == "cuda" else 0

    ids = _image_ids(dataset)[:limit]
    results = ResultsFile(results_path, {**settings.record(), **(metadata or {})})
    todo = results.todo(ids)
    if todo:
        results.append([{"type": "session", **run_info(device), "started": datetime.datetime.now().isoformat(timespec="seconds"),
                         "batch_size": batch_size, "images_to_do": len(todo)}])
    scorer = BatchScorer(model.eval(), target_layer, settings, device, reshape_transform, preprocess)
    loader = DataLoader(_Selected(dataset, todo), batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=_collate, pin_memory=device.type == "cuda")
    started = time.perf_counter()
    with progress_bar(total=len(ids), initial=len(ids) - len(todo), unit="img", desc=settings.explainer, disable=not progress) as bar:
        for batch, damaged in loader:
            if batch is not None:
                indices, images, labels, human = batch
                scores = scorer.score(images, labels, human)
                results.append([{"type": "image", "id": ids[int(i)], **score} for i, score in zip(indices, scores)])
                bar.update(len(scores))
            if damaged and not skip_damaged:
                raise DamagedRecordError(f"{damaged[0][1]} (the images read before it are saved; "
                                         "skip_damaged / --skip-damaged lists damaged records and goes on)")
            if damaged:
                results.append([{"type": "damaged", "id": ids[i], "error": error} for i, error in damaged])
                bar.update(len(damaged))
            scored = [e["spearman"] or 0.0 for e in results.images.values()]
            if scored:
                bar.set_postfix(alignment=f"{sum(scored) / len(scored) / HUMAN_CEILING:.4f}", refresh=False)
    seconds = time.perf_counter() - started
    summary = AlignmentSummary.from_results(
        results, constant=constant, images_this_run=len(todo),
        images_per_second=len(todo) / seconds if todo and seconds > 0 else None,
        device=device_name(device), info=run_info(device),
    )
    results.write_summary(summary)
    return summary


# --- command line ------------------------------------------------------------------------------------

def trained_run_dir(model: str) -> Optional[Path]:
    """The folder of ``--model run:DIR`` (a model trained on SynthClick by ``dcls_lib.train``), else None."""
    kind, colon, folder = model.partition(":")
    if kind != "run" or not colon:
        return None
    if not folder:
        raise ValueError("--model run:DIR needs the folder of a run trained by dcls_lib.train")
    return Path(folder)


@dataclass
class LoadedModel:
    """What the evaluation needs of a model: the module, its Grad-CAM target and its input transform."""

    model: nn.Module
    layer: nn.Module
    reshape_transform: Optional[Callable]
    preprocess: Callable[[Tensor], Tensor]


def load_model(name: str, checkpoint: Optional[str], image_size: int, seed: int = 0) -> LoadedModel:
    """A model of the zoo by name, with the weights of ``checkpoint`` (a local file) or random ones.

    The study's 16 models load their file the way ``create_study_model(name, checkpoint_path=...)``
    does: through the published model's key mapping, so the authors' own files work as they are.
    Any other timm name takes a timm state dict (plain, or a timm training checkpoint's
    ``state_dict_ema`` / ``state_dict``).  Without a checkpoint the weights are drawn after
    ``torch.manual_seed(seed)``.  ``run:DIR`` is a model trained on SynthClick by ``dcls_lib.train``.
    """
    import timm

    from . import models

    run_dir = trained_run_dir(name)
    if run_dir is not None:
        from .data.synthclick import SynthClick
        from .train import load_run

        model = load_run(run_dir, device="cpu").model
        target = models.cam_target(model)
        return LoadedModel(model, target.layer, target.reshape_transform, PixelNormalize(SynthClick.mean, SynthClick.std))
    torch.manual_seed(seed)
    if name in models.study_model_names():
        model = models.create_study_model(name, checkpoint_path=checkpoint)
    else:
        try:
            model = timm.create_model(name)
        except RuntimeError as error:  # timm's "Unknown model"
            raise ValueError(f"--model {name!r}: {error}") from None
        if checkpoint is not None:
            models.load_checkpoint(model, checkpoint, state_keys=("state_dict_ema", "state_dict"))
    target = models.cam_target(model)
    return LoadedModel(model, target.layer, target.reshape_transform, models.input_transform(model, image_size=image_size))


def open_dataset(spec: str, cache: Optional[str] = None, image_size: int = 224, progress: bool = True,
                 study_quirks: bool = False) -> tuple[Dataset, str]:
    """The dataset named on the command line and its name for the results.

    ``clickme`` (the validation set, downloaded to ``cache`` if missing), ``clickme:DIR`` (local
    shards, offline) or ``synthclick[:SPLIT]`` (the generated benchmark, test split by default,
    drawn at ``image_size``).  ``study_quirks`` reads ClickMe images as the study's code did.
    """
    kind, _, argument = spec.partition(":")
    if kind == "clickme":
        from .data.clickme import ClickMe, download_clickme_val

        shards = argument or download_clickme_val(cache, progress=progress)
        name = f"clickme:{Path(argument).resolve()}" if argument else "clickme:val"
        return ClickMe(shards, uint8_images=study_quirks, progress=progress), name
    if study_quirks:
        raise ValueError("--study-quirks reproduces the study's ClickMe evaluation; it applies to --data clickme only")
    if kind == "synthclick":
        from .data.synthclick import SynthClick

        split = argument or "test"
        return SynthClick(split=split, image_size=image_size), f"synthclick:{split}:{image_size}px"
    raise ValueError(f"--data must be clickme, clickme:DIR or synthclick[:SPLIT], got {spec!r}")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dcls_lib.evaluate",
        description="Human alignment of a model's Grad-CAM / Threshold-Grad-CAM heatmaps (Spearman against "
                    "human maps / 0.65753, with Harmonization's top-10% Dice and IoU). Rerun the same command "
                    "to resume an interrupted run.",
    )
    parser.add_argument("--model", required=True,
                        help="a study model (convnext_tiny_dcls, resnet50, ...), any timm name, or run:DIR (trained here)")
    parser.add_argument("--checkpoint", help="local weights file; the study's models read their authors' files as published")
    parser.add_argument("--random-init", action="store_true", help="no checkpoint: random weights drawn with --seed (smoke runs)")
    parser.add_argument("--seed", type=int, default=0, help="seed of --random-init's weights (default 0)")
    parser.add_argument("--explainer", choices=EXPLAINERS, default="threshold-gradcam")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, help="Threshold-Grad-CAM floor (default 0.3)")
    parser.add_argument("--data", default="clickme", help="clickme (download the validation set), clickme:DIR (local shards), synthclick[:SPLIT]")
    parser.add_argument("--cache-dir", help="where clickme is downloaded (default $DCLS_CACHE or ~/.cache/dcls_lib)")
    parser.add_argument("--results", help="JSON-lines results file, resumed if it exists "
                        "(default runs/alignment/<model>_<checkpoint>_<explainer>_<data>.jsonl)")
    parser.add_argument("--batch-size", type=_positive, default=64)
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--amp", nargs="?", const="bfloat16", choices=tuple(AMP_DTYPES), help="mixed precision (default bfloat16)")
    parser.add_argument("--num-workers", type=int, help="data loading workers (default 0 on CPU, 8 on CUDA)")
    parser.add_argument("--limit", type=_positive, help="evaluate only the first N images")
    parser.add_argument("--image-size", type=_positive, default=None,
                        help="side the image is resized to for the model (default: 224, or the size a run:DIR model was trained at)")
    parser.add_argument("--constant-maps", choices=CONSTANT_POLICIES, default=None,
                        help="what a constant map counts for: correlation 0 (default) or left out (the study's code)")
    parser.add_argument("--study-quirks", action="store_true",
                        help="reproduce the study's code exactly: images cast to uint8 after resizing, constant maps left out")
    parser.add_argument("--skip-damaged", action="store_true", help="skip damaged records and list them in the summary")
    parser.add_argument("--metrics", type=parse_metrics, default=("alignment",),
                        help="comma-separated: alignment (every image, resumable), randomisation (the model-parameter "
                             "randomisation test), road (ROAD faithfulness); default alignment")
    parser.add_argument("--sanity-images", type=_positive, default=32,
                        help="how many of the first images randomisation and road run on (default 32)")
    parser.add_argument("--no-channels-last", action="store_true", help="keep the model's memory layout (NCHW)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars or status lines")
    parser.add_argument("--debug", action="store_true", help="on an error, show the full traceback")
    return parser


def _checkpoint_record(args) -> dict:
    """What defines the weights, for the results' settings: the file's name and SHA-256, or the seed."""
    if trained_run_dir(args.model) is not None:
        return {"checkpoint": None}
    if args.checkpoint is None:
        return {"checkpoint": None, "seed": args.seed}
    path = Path(args.checkpoint).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file {path} does not exist")
    return {"checkpoint": path.name, "checkpoint_sha256": file_digest(path, "sha256")}


def _default_results(args, record: dict) -> Path:
    """runs/alignment/<model>_<checkpoint stem>-<sha256[:8]> or _random-seed<N>_<explainer>_<data>.jsonl."""
    run_dir = trained_run_dir(args.model)
    model = run_dir.name if run_dir is not None else args.model
    if record.get("checkpoint_sha256"):
        weights = f"_{record['checkpoint'].split('.')[0]}-{record['checkpoint_sha256'][:8]}"
    else:
        weights = f"_random-seed{record['seed']}" if "seed" in record else ""
    return Path("runs", "alignment", f"{model}{weights}_{args.explainer}_{args.data.partition(':')[0]}.jsonl")


def main(argv: Optional[Sequence[str]] = None) -> Optional[AlignmentSummary]:
    """Run the command line; errors propagate (``cli`` turns them into one line and exit status 2)."""
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> Optional[AlignmentSummary]:
    """The evaluation the parsed command line asks for; prints its tables (no summary without alignment)."""
    say = (lambda message: None) if args.no_progress else (lambda message: print(message, file=sys.stderr, flush=True))
    run_dir = trained_run_dir(args.model)
    if run_dir is None and (args.checkpoint is None) == (not args.random_init):
        raise ValueError("give either --checkpoint FILE or --random-init (random weights, for smoke runs), "
                         "or a SynthClick-trained --model run:DIR")
    if args.study_quirks and args.constant_maps == "zero":
        raise ValueError("--study-quirks leaves constant maps out as the study did; it cannot be combined with --constant-maps zero")
    constant = "skip" if args.study_quirks else args.constant_maps or "zero"
    record = _checkpoint_record(args)  # a missing checkpoint is reported before the data is read
    if args.image_size is None:
        args.image_size = 224
        if run_dir is not None:
            from .train import load_run

            args.image_size = load_run(run_dir, device="cpu").config.image_size
    say(f"reading {args.data} ...")
    dataset, data_name = open_dataset(args.data, args.cache_dir, args.image_size, progress=not args.no_progress,
                                      study_quirks=args.study_quirks)
    say(f"{len(dataset)} images; loading {args.model}" + (f" from {args.checkpoint}" if args.checkpoint else "") + " ...")
    loaded = load_model(args.model, args.checkpoint, args.image_size, seed=args.seed)
    results = Path(args.results) if args.results else _default_results(args, record)
    settings = ExplainerSettings(args.explainer, args.threshold, args.amp or False, channels_last=not args.no_channels_last)
    metadata = {"model": args.model, **record, "data": data_name, "image_size": args.image_size,
                "study_quirks": args.study_quirks}
    summary = None
    if "alignment" in args.metrics:
        try:
            summary = evaluate_alignment(
                loaded.model, loaded.layer, dataset, reshape_transform=loaded.reshape_transform,
                preprocess=loaded.preprocess, settings=settings, batch_size=args.batch_size, device=args.device,
                results_path=results, constant=constant, num_workers=args.num_workers, limit=args.limit,
                metadata=metadata, skip_damaged=args.skip_damaged, progress=not args.no_progress,
            )
        except KeyboardInterrupt:
            print(f"\ninterrupted: the images scored so far are saved in {results}; run the same command again to resume",
                  file=sys.stderr)
            raise
        print(summary.table())
    if set(args.metrics) & set(SANITY_METRICS):
        say(f"sanity checks ({', '.join(m for m in args.metrics if m in SANITY_METRICS)}) "
            f"on the first {args.sanity_images} images ...")
        checks = model_checks(
            loaded.model, loaded.layer, dataset, args.metrics, explainer=settings.explainer,
            threshold=settings.threshold, count=args.sanity_images, preprocess=loaded.preprocess,
            reshape_transform=loaded.reshape_transform, seed=args.seed, batch_size=args.batch_size,
            device=resolve_device(args.device),
        )
        write_json(results.with_suffix(".sanity.json"), {"settings": metadata, "explainer": settings.explainer,
                                                          "threshold": settings.threshold, **checks.to_dict()})
        print(checks.tables())
    return summary


def cli(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m dcls_lib.evaluate``: exit status 0, 2 with one line naming the problem, 130 on Ctrl-C."""
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except KeyboardInterrupt:
        return 130
    except Exception as error:
        if args.debug:
            raise
        message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
        print(f"error: {message} (--debug shows the traceback)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
