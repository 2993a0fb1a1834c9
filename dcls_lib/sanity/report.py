"""Alignment, randomisation and ROAD side by side, with two model-independent reference maps, so
that a chapter can show which check catches what on SynthClick, where the right map is known.

The references are not explanations of the model and are there to be caught:

- ``human map``: the ground truth itself, perfectly aligned; it never changes when the model is
  randomised (Spearman 1 at every step), so the randomisation test flags it, and ROAD says
  whether the model's score really rests on those pixels.
- ``image edges``: an edge detector's map of the image (blurred Sobel magnitude).  On SynthClick the
  ringed parts have the strongest edges, so it aligns with the human map to a degree, yet it is
  blind to the model: the failure Adebayo et al. found in some gradient methods.

Grad-CAM and Threshold-Grad-CAM should be the rows that both align and decorrelate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..cam import DEFAULT_THRESHOLD, EXPLAINERS
from ..metrics import HUMAN_CEILING, spearman
from ..tables import table_text
from .faithfulness import PERCENTILES, RoadResult, road
from .randomisation import (
    RandomisationResult,
    RandomisationSettings,
    _check_images,
    explainer_label,
    parameter_randomisation,
    study_map,
)
from .spread import spread_text, summarise

HUMAN = "human map"
EDGES = "image edges"
_SOBEL = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def image_edges(images: Tensor, blur: float = 1 / 16) -> Tensor:
    """Edge strength of each image: Sobel gradient magnitude of its grey levels, box-blurred over
    ``blur`` of the image side.  (N, 3, H, W) in [0, 1] -> (N, H, W); it ignores any model."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (N, 3, H, W), got {tuple(images.shape)}")
    grey = images.float().mean(dim=1, keepdim=True)  # (N, 1, H, W)
    kernels = torch.stack([_SOBEL, _SOBEL.T])[:, None].to(grey.device)  # (2, 1, 3, 3): d/dx, d/dy
    gradients = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), kernels)  # (N, 2, H, W)
    magnitude = gradients.square().sum(dim=1, keepdim=True).sqrt()
    width = max(1, round(blur * images.shape[-1])) | 1  # odd, so the map keeps its size
    return F.avg_pool2d(magnitude, width, stride=1, padding=width // 2, count_include_pad=False)[:, 0]


@dataclass
class SanityReport:
    """Everything :func:`sanity_report` measured: per map, its Spearman with the human maps, the
    randomisation test and ROAD."""

    human_spearman: dict[str, Tensor]  # map -> (N,) per-image Spearman with the human map
    randomisation: RandomisationResult
    road: dict[str, RoadResult]
    threshold: float = DEFAULT_THRESHOLD
    ceiling: float = HUMAN_CEILING

    def rows(self) -> list[dict]:
        """One row per map: alignment, the cascading test's first and last step, ROAD's combined score."""
        out = []
        cascade = [r for r in self.randomisation.rows if r["mode"] == "cascading"]
        for name, rho in self.human_spearman.items():
            steps = [r for r in cascade if r["explainer"] == name]
            aligned = summarise(rho, constant=self.randomisation.constant)
            out.append({
                "map": explainer_label(name, self.threshold),
                "alignment": aligned["mean"] / self.ceiling,
                "Spearman with human map": aligned,
                "randomised top layer": steps[0] if steps else None,
                "randomised all layers": steps[-1] if steps else None,
                "ROAD": self.road[name].summary() if name in self.road else None,
            })
        return out

    def table(self) -> str:
        """A Markdown table of :meth:`rows`: mean ± std [95% bootstrap interval] in every cell."""
        def cell(stats):
            return "n/a" if stats is None else spread_text(stats)

        return table_text([
            {"map": r["map"], "alignment (%)": f"{100 * r['alignment']:.1f}",
             "Spearman with human map": cell(r["Spearman with human map"]),
             "Spearman, top layer randomised": cell(r["randomised top layer"]),
             "Spearman, all layers randomised": cell(r["randomised all layers"]),
             "ROAD (LeRF - MoRF) / 2": "n/a" if r["ROAD"] is None else spread_text(r["ROAD"], 3)}
            for r in self.rows()
        ])


def sanity_report(
    model: nn.Module,
    target_layer: nn.Module,
    images: Tensor,
    labels,
    human_maps: Tensor,
    *,
    explainers: Sequence[str] = EXPLAINERS,
    references: bool = True,
    road_images: Optional[int] = 16,
    road_percentiles: Sequence[float] = PERCENTILES,
    ceiling: float = HUMAN_CEILING,
    settings: Optional[RandomisationSettings] = None,
    **options,
) -> SanityReport:
    """Alignment with ``human_maps`` (N, H, W), the randomisation test and ROAD for the study's maps
    and, with ``references``, the human maps and the images' edges (see the module docstring).

    ``settings`` (a :class:`~dcls_lib.sanity.randomisation.RandomisationSettings`, its fields
    replaceable by keyword as in :func:`~dcls_lib.sanity.randomisation.parameter_randomisation`) run
    the randomisation test; ROAD and the maps use their threshold, preprocessing, seed, batch size
    and device.  ROAD runs on the first ``road_images`` images (``None``: all): pytorch-grad-cam
    solves a sparse system per image, removed share and direction, on the CPU, some seconds per
    image at 96 px (``benchmarks/sanity_speed.py``), far more than the randomisation test costs.
    """
    settings = RandomisationSettings.of(settings, **options)
    labels = _check_images(images, labels)
    if not isinstance(human_maps, Tensor) or human_maps.shape != (images.shape[0], *images.shape[-2:]):
        raise ValueError(f"human_maps must be (N, H, W) = {(images.shape[0], *images.shape[-2:])}, "
                         f"got {tuple(getattr(human_maps, 'shape', ()))}")
    if road_images is not None and (isinstance(road_images, bool) or not isinstance(road_images, int) or road_images < 0):
        raise ValueError(f"road_images must be a non-negative int or None, got {road_images!r}")
    functions = {name: study_map(name, settings.threshold) for name in explainers}
    if references:
        functions[EDGES] = lambda tensors, batch, index: image_edges(batch)
        functions[HUMAN] = lambda tensors, batch, index: human_maps[index].to(batch.device).float()
    trained = settings.map_source(model, target_layer, images, labels, functions)(model)
    human = human_maps.to(next(iter(trained.values())).device).float()
    human_spearman = {name: spearman(maps, human).cpu() for name, maps in trained.items()}
    randomisation = parameter_randomisation(model, target_layer, images, labels, explainers=functions, settings=settings)
    count = images.shape[0] if road_images is None else min(road_images, images.shape[0])
    faithfulness = {} if count == 0 else {
        name: road(model, images[:count], maps[:count].cpu(), labels[:count], percentiles=road_percentiles,
                   preprocess=settings.preprocess, seed=settings.seed, batch_size=settings.batch_size,
                   device=settings.device)
        for name, maps in trained.items()
    }
    return SanityReport(human_spearman, randomisation, faithfulness, float(settings.threshold), ceiling)
