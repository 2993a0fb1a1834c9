"""The study's trained models as chapters 5 to 7 reload them: from the checkpoints chapter 4 left,
without rendering the training images again (``run_study`` would, before noticing every run is
finished), and their maps on a set of images from one backward pass each."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Optional

from torch import Tensor, nn

from ..cam import DEFAULT_THRESHOLD, EXPLAINERS
from ..heatmaps import LayerTensors, layer_tensors
from ..metrics import spearman
from ..study import StudyResults, load_study, run_study, study_dir


def trained_study(profile: str) -> StudyResults:
    """The study of ``profile``: read from its ``study.json`` when it has finished (written once
    every run is trained and scored), else trained and scored now (chapter 4 not run yet)."""
    summary = study_dir(profile) / "study.json"
    if summary.is_file():
        return load_study(summary)
    return run_study(profile, progress=False)


@dataclass
class StudyMaps:
    """Per model: the target layer's tensors, both maps at the images' size, their Spearman with the human maps."""

    tensors: dict[tuple, LayerTensors]
    maps: dict[tuple, dict[str, Tensor]]  # model -> method -> (N, H, W)
    rho: dict[tuple, dict[str, Tensor]]  # model -> method -> (N,)


def study_maps(models: Mapping[tuple, nn.Module], images: Tensor, labels: Tensor, human: Tensor,
               preprocess: Optional[Callable[[Tensor], Tensor]] = None, threshold: float = DEFAULT_THRESHOLD,
               batch_size: int = 128) -> StudyMaps:
    """Both of the study's maps of every model for ``images``, scored against ``human`` (N, H, W)."""
    size = tuple(human.shape[-2:])
    tensors = {key: layer_tensors(model, images, labels, preprocess=preprocess, batch_size=batch_size)
               for key, model in models.items()}
    maps = {key: {m: t.maps(m, threshold, size) for m in EXPLAINERS} for key, t in tensors.items()}
    rho = {key: {m: spearman(v, human) for m, v in per.items()} for key, per in maps.items()}
    return StudyMaps(tensors, maps, rho)


def model_rows(results: StudyResults, seed: int = 0) -> list[dict]:
    """One row per model of ``seed``: its test accuracy and both alignment scores from the study."""
    return [{"model": f"{r['family']} {r['variant']}", "test accuracy (%)": f"{100 * r['test_acc']:.1f}",
             "Grad-CAM alignment (%)": f"{100 * r['gradcam']:.1f}",
             "Threshold-Grad-CAM alignment (%)": f"{100 * r['threshold-gradcam']:.1f}"}
            for r in results.rows if r["seed"] == seed]
