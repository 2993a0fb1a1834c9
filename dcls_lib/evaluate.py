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

The command line (``python -m dcls_lib.evaluate --help``) adds the model zoo and the datasets.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .cam import DEFAULT_THRESHOLD, EXPLAINERS, StudyCAM
from .files import write_text
from .metrics import CONSTANT_POLICIES, HUMAN_CEILING, alignment_from_correlations, is_constant, spearman
from .runtime import default_device, device_name, run_info

RESULTS_FORMAT = "dcls_lib.alignment/1"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


class PixelNormalize(nn.Module):
    """Batched model input from [0, 1] images: ``(x - mean) / std`` per channel, on the images' device."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        super().__init__()
        if len(mean) != len(std) or min(std) <= 0:
            raise ValueError(f"mean and std need one value per channel and std > 0, got {mean} and {std}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(-1, 1, 1), persistent=False)

    @classmethod
    def for_model(cls, model: nn.Module) -> "PixelNormalize":
        """The mean and std of a timm model's ``pretrained_cfg``, ImageNet's where it has none."""
        config = getattr(model, "pretrained_cfg", None) or {}
        return cls(config.get("mean", IMAGENET_MEAN), config.get("std", IMAGENET_STD))

    def forward(self, images: Tensor) -> Tensor:
        return (images - self.mean.to(images.device)) / self.std.to(images.device)


# --- results file ----------------------------------------------------------------------------------


class ResultsFile:
    """A JSON-lines file of per-image results that a later run resumes.

    Line 1 holds the settings (explainer, threshold, precision and the caller's ``metadata`` such
    as model, checkpoint and data); a run with other settings is refused rather than mixed in.
    Then one ``session`` line per run (what ran it) and one ``image`` line per image.  Lines are
    appended a batch at a time and flushed to disk; a line cut short by a crash is dropped (the
    file is rewritten atomically without it) and that image is simply evaluated again.
    """

    def __init__(self, path: Union[str, os.PathLike], settings: dict) -> None:
        self.path = Path(path)
        self.settings = json.loads(json.dumps({"format": RESULTS_FORMAT, **settings}))
        self.images: dict[str, dict] = {}
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
            if entry.get("type") != "image":
                continue
            if entry["id"] in self.images:
                raise ValueError(f"{self.path}: line {number}: image {entry['id']!r} is already in the file")
            self.images[entry["id"]] = entry

    def append(self, entries: list[dict]) -> None:
        for entry in entries:
            if entry.get("type") == "image":
                if entry["id"] in self.images:
                    raise ValueError(f"{self.path}: image {entry['id']!r} is already in the file")
                self.images[entry["id"]] = entry
        with open(self.path, "a") as out:
            out.write("".join(json.dumps(entry) + "\n" for entry in entries))
            out.flush()
            os.fsync(out.fileno())


# --- summary ---------------------------------------------------------------------------------------


@dataclass
class AlignmentSummary:
    """The score of a run: every image in the results (all sessions), under a constant-map policy."""

    images: int
    alignment: float
    alignment_sem: float
    mean_spearman: float
    constant_model_maps: int
    constant_human_maps: int
    constant_policy: str
    settings: dict
    images_this_run: int = 0
    images_per_second: Optional[float] = None
    device: str = ""
    results_path: Optional[str] = None
    ceiling: float = HUMAN_CEILING
    info: dict = field(default_factory=dict)

    @classmethod
    def from_images(cls, images: list[dict], settings: dict, constant: str = "zero", **extra) -> "AlignmentSummary":
        if not images:
            raise ValueError("no image was evaluated: the dataset (or its --limit) is empty")
        rho = torch.tensor([math.nan if e["spearman"] is None else e["spearman"] for e in images], dtype=torch.float64)
        alignment = alignment_from_correlations(rho, constant=constant)
        used = torch.nan_to_num(rho, nan=0.0) if constant == "zero" else rho[~torch.isnan(rho)]
        sem = float(used.std() / math.sqrt(used.numel())) / HUMAN_CEILING if used.numel() > 1 else math.nan
        return cls(
            images=len(images),
            alignment=alignment,
            alignment_sem=sem,
            mean_spearman=alignment * HUMAN_CEILING,
            constant_model_maps=sum(bool(e["model_constant"]) for e in images),
            constant_human_maps=sum(bool(e["human_constant"]) for e in images),
            constant_policy=constant,
            settings=settings,
            **extra,
        )

    def table(self) -> str:
        """A plain-text table for the terminal and logs."""
        s = self.settings
        rows = [
            ("model", s.get("model", "(given)")),
            ("data", s.get("data", "(given)")),
            ("explainer", s["explainer"] + (f" (threshold {s['threshold']})" if s.get("threshold") is not None else "")),
            ("precision", s["precision"]),
            ("images", f"{self.images}"),
            ("alignment score", f"{self.alignment:.4f} +- {self.alignment_sem:.4f} (mean Spearman / {self.ceiling})"),
            ("mean Spearman", f"{self.mean_spearman:.4f}"),
            ("constant model maps", f"{self.constant_model_maps} (counted as {self.constant_policy})"),
            ("constant human maps", f"{self.constant_human_maps}"),
            ("this run", f"{self.images_this_run} images" + (f", {self.images_per_second:.1f} images/s" if self.images_per_second else "")),
            ("device", self.device),
            ("results", self.results_path or "(not saved)"),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


# --- the engine -------------------------------------------------------------------------------------


class _Selected(Dataset):
    """The items ``indices`` of a dataset, each with its index in front."""

    def __init__(self, dataset: Dataset, indices: list[int]) -> None:
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int):
        index = self.indices[position]
        return (index, *self.dataset[index])


def _image_ids(dataset: Dataset) -> list[str]:
    ids = getattr(dataset, "image_ids", None)
    ids = [str(i) for i in range(len(dataset))] if ids is None else [str(i) for i in ids]
    if len(ids) != len(dataset) or len(set(ids)) != len(ids):
        raise ValueError("dataset.image_ids must name every item once")
    return ids


def _resolve_device(device) -> torch.device:
    if device is None or device == "auto":
        return default_device()
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} asked for, but CUDA is not available here")
    return device


def evaluate_alignment(
    model: nn.Module,
    target_layer: nn.Module,
    dataset: Dataset,
    *,
    reshape_transform: Optional[Callable] = None,
    preprocess: Optional[Callable[[Tensor], Tensor]] = None,
    explainer: str = "threshold-gradcam",
    threshold: float = DEFAULT_THRESHOLD,
    batch_size: int = 64,
    device=None,
    amp: Union[bool, str] = False,
    results_path: Optional[Union[str, os.PathLike]] = None,
    constant: str = "zero",
    num_workers: Optional[int] = None,
    limit: Optional[int] = None,
    metadata: Optional[dict] = None,
    channels_last: bool = True,
    progress: bool = True,
) -> AlignmentSummary:
    """Score ``model``'s heatmaps against the human maps of ``dataset`` (see the module doc for the interface).

    - ``explainer``: "threshold-gradcam" (with ``threshold``) or "gradcam" (the study's definitions,
      :mod:`dcls_lib.cam`); the explained logit is each image's label.
    - ``device``: "auto"/None picks CUDA when available; the model is moved there and put in eval mode.
    - ``channels_last``: store the model and its inputs channels-last (NHWC), which convolutions run
      faster in on CPUs and GPUs alike (1.7x for ResNet-18 on CPU); results change by float rounding only.
    - ``amp``: mixed precision for the forward pass: ``True`` (bfloat16), "bfloat16" or "float16";
      maps and scores are computed in float32 / float64 either way.
    - ``results_path``: JSON-lines file, appended to per batch; a rerun resumes it (settings must
      match: explainer, threshold, precision and ``metadata``).  ``None`` keeps results in memory.
    - ``constant``: "zero" or "skip", what a constant map counts for (:mod:`dcls_lib.metrics`).
    - ``limit``: evaluate only the first ``limit`` items of the dataset.
    - ``num_workers``: DataLoader workers; default 0 on CPU (the model uses the cores), up to 8 on CUDA.

    On CUDA it sets ``torch.backends.cudnn.benchmark`` (all batches but the last have one shape).

    Returns the summary of every image in the results file, also written next to it as
    ``<results>.summary.json``.
    """
    if explainer not in EXPLAINERS:
        raise ValueError(f"explainer must be one of {EXPLAINERS}, got {explainer!r}")
    if constant not in CONSTANT_POLICIES:
        raise ValueError(f"constant must be one of {CONSTANT_POLICIES}, got {constant!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be a non-negative int, got {limit!r}")
    if amp is True:
        amp = "bfloat16"
    if amp and amp not in AMP_DTYPES:
        raise ValueError(f"amp must be False, True or one of {tuple(AMP_DTYPES)}, got {amp!r}")
    device = _resolve_device(device)
    if num_workers is None:
        num_workers = min(8, os.cpu_count() or 1) if device.type == "cuda" else 0

    settings = {
        "explainer": explainer,
        "threshold": threshold if explainer == "threshold-gradcam" else None,
        "precision": amp or "float32",
        **(metadata or {}),
    }
    ids = _image_ids(dataset)
    count = len(ids) if limit is None else min(limit, len(ids))
    results = ResultsFile(results_path, settings) if results_path is not None else None
    done = set(results.images) if results else set()
    todo = [i for i in range(count) if ids[i] not in done]
    if results is not None and todo:
        started_at = datetime.datetime.now().isoformat(timespec="seconds")
        results.append([{"type": "session", **run_info(device), "started": started_at,
                         "batch_size": batch_size, "images_to_do": len(todo)}])

    model = model.to(device, memory_format=torch.channels_last) if channels_last else model.to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if preprocess is not None and isinstance(preprocess, nn.Module):
        preprocess = preprocess.to(device)
    cam = StudyCAM(model, target_layer, reshape_transform, explainer=explainer, threshold=threshold)
    loader = DataLoader(
        _Selected(dataset, todo), batch_size=batch_size, shuffle=False, num_workers=num_workers,
        pin_memory=device.type == "cuda", persistent_workers=False,
    )
    evaluated: list[dict] = []
    running = [e["spearman"] for e in results.images.values()] if results is not None else []
    running_sum, running_count = sum(r for r in running if r is not None), len(running)
    started = time.perf_counter()
    with tqdm(total=count, initial=count - len(todo), unit="img", desc=f"{explainer}", disable=not progress) as bar:
        for indices, images, labels, human in loader:
            images = images.to(device, non_blocking=True)
            human = human.to(device, non_blocking=True)
            if human.dim() == 4 and human.shape[1] == 1:
                human = human[:, 0]
            if human.dim() != 3:
                raise ValueError(f"human maps must be (H, W) per image, got a batch of shape {tuple(human.shape)}")
            inputs = preprocess(images) if preprocess is not None else images
            if channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=AMP_DTYPES.get(amp or "bfloat16"), enabled=bool(amp)):
                maps = cam(inputs, labels.to(device), size=human.shape[-2:])
            rho = spearman(maps, human.float()).tolist()
            model_constant, human_constant = is_constant(maps).tolist(), is_constant(human).tolist()
            entries = [
                {"type": "image", "id": ids[int(index)], "label": int(label),
                 "spearman": None if math.isnan(r) else r, "model_constant": mc, "human_constant": hc}
                for index, label, r, mc, hc in zip(indices, labels, rho, model_constant, human_constant)
            ]
            if results is not None:
                results.append(entries)
            else:
                evaluated.extend(entries)
            running_sum += sum(e["spearman"] for e in entries if e["spearman"] is not None)
            running_count += len(entries)
            bar.set_postfix(alignment=f"{running_sum / running_count / HUMAN_CEILING:.4f}", refresh=False)
            bar.update(len(entries))
    seconds = time.perf_counter() - started

    images = list(results.images.values()) if results is not None else evaluated
    summary = AlignmentSummary.from_images(
        images, settings, constant=constant, images_this_run=len(todo),
        images_per_second=len(todo) / seconds if todo and seconds > 0 else None,
        device=device_name(device), results_path=str(results_path) if results_path is not None else None,
        info=run_info(device),
    )
    if results is not None:
        write_text(Path(f"{results.path}.summary.json"), json.dumps(asdict(summary), indent=2) + "\n")
    return summary


# --- command line ------------------------------------------------------------------------------------


def load_model(name: str, checkpoint: Optional[str], image_size: int):
    """Model, target layer, reshape transform and preprocessing for a model name of the zoo.

    The one function that knows ``dcls_lib.models``: ``timm.create_model(name)`` (``import
    dcls_lib.models`` registers the ``*_dcls`` names), ``load_checkpoint(model, path_or_url)``,
    ``cam_target(model) -> (layer, reshape_transform)`` and ``input_transform(model, image_size)``,
    which must map a batch of [0, 1] images on the device to the model's input.  ``checkpoint=None``
    leaves the weights random (smoke runs only).
    """
    import timm

    from . import models  # noqa: F401  (registers the study's models with timm)

    if name.startswith("run:"):  # a model trained on SynthClick by dcls_lib.train
        from .data.synthclick import SynthClick
        from .train import load_run

        model = load_run(name[len("run:"):], device="cpu").model
        target = models.cam_target(model)
        return model, target.layer, target.reshape_transform, PixelNormalize(SynthClick.mean, SynthClick.std)
    model = timm.create_model(name)
    if checkpoint is not None:
        models.load_checkpoint(model, checkpoint)
    target = models.cam_target(model)
    return model, target.layer, target.reshape_transform, models.input_transform(model, image_size=image_size)


def open_dataset(spec: str, cache: Optional[str] = None, image_size: int = 224, progress: bool = True) -> tuple[Dataset, str]:
    """The dataset named on the command line and its name for the results.

    ``clickme`` (the validation set, downloaded to ``cache`` if missing), ``clickme:DIR`` (local
    shards, offline) or ``synthclick[:SPLIT]`` (the generated benchmark, test split by default,
    drawn at ``image_size``).
    """
    kind, _, argument = spec.partition(":")
    if kind == "clickme":
        from .data.clickme import ClickMe, clickme_val

        if argument:
            return ClickMe(argument), f"clickme:{Path(argument).resolve()}"
        return clickme_val(cache, download=True, progress=progress), "clickme:val"
    if kind == "synthclick":
        from .data.synthclick import SynthClick

        split = argument or "test"
        return SynthClick(split=split, image_size=image_size), f"synthclick:{split}:{image_size}px"
    raise ValueError(f"--data must be clickme, clickme:DIR or synthclick[:SPLIT], got {spec!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dcls_lib.evaluate",
        description="Human alignment of a model's Grad-CAM / Threshold-Grad-CAM heatmaps (Spearman against human maps / 0.65753).",
    )
    parser.add_argument("--model", required=True, help="model name, e.g. convnext_tiny or convnext_tiny_dcls")
    parser.add_argument("--checkpoint", help="weights to load (path or URL)")
    parser.add_argument("--random-init", action="store_true", help="no checkpoint: random weights (smoke tests only)")
    parser.add_argument("--explainer", choices=EXPLAINERS, default="threshold-gradcam")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, help="Threshold-Grad-CAM floor (default 0.3)")
    parser.add_argument("--data", default="clickme", help="clickme (download the validation set), clickme:DIR (local shards), synthclick[:SPLIT]")
    parser.add_argument("--cache-dir", help="where clickme is downloaded (default $DCLS_CACHE or ~/.cache/dcls_lib)")
    parser.add_argument("--results", help="JSON-lines results file, resumed if it exists (default runs/alignment/<model>_<explainer>_<data>.jsonl)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--amp", nargs="?", const="bfloat16", choices=tuple(AMP_DTYPES), help="mixed precision (default bfloat16)")
    parser.add_argument("--num-workers", type=int, help="data loading workers (default 0 on CPU, 8 on CUDA)")
    parser.add_argument("--limit", type=int, help="evaluate only the first N images")
    parser.add_argument("--image-size", type=int, default=None,
                        help="image side (default: 224, or the size a run:DIR model was trained at)")
    parser.add_argument("--constant-maps", choices=CONSTANT_POLICIES, default="zero",
                        help="what a constant map counts for: correlation 0 (default) or left out (the study's code)")
    parser.add_argument("--no-channels-last", action="store_true", help="keep the model's memory layout (NCHW)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> AlignmentSummary:
    args = build_parser().parse_args(argv)
    trained_run = args.model.startswith("run:")
    if not trained_run and (args.checkpoint is None) == (not args.random_init):
        raise SystemExit("give either --checkpoint PATH_OR_URL or --random-init (random weights, for smoke runs), "
                         "or a SynthClick-trained --model run:DIR")
    if args.image_size is None:
        args.image_size = 224
        if trained_run:
            from .train import load_run

            args.image_size = load_run(args.model[len("run:"):], device="cpu").config.image_size
    dataset, data_name = open_dataset(args.data, args.cache_dir, args.image_size, progress=not args.no_progress)
    model, layer, reshape_transform, preprocess = load_model(args.model, args.checkpoint, args.image_size)
    model_name = Path(args.model[4:]).name if trained_run else args.model
    results = args.results or Path("runs", "alignment", f"{model_name}_{args.explainer}_{args.data.partition(':')[0]}.jsonl")
    summary = evaluate_alignment(
        model, layer, dataset, reshape_transform=reshape_transform, preprocess=preprocess,
        explainer=args.explainer, threshold=args.threshold, batch_size=args.batch_size, device=args.device,
        amp=args.amp or False, results_path=results, constant=args.constant_maps, num_workers=args.num_workers,
        limit=args.limit, channels_last=not args.no_channels_last, progress=not args.no_progress,
        metadata={"model": args.model, "checkpoint": args.checkpoint, "data": data_name, "image_size": args.image_size},
    )
    print(summary.table())
    return summary


if __name__ == "__main__":
    main()
