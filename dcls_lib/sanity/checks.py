"""The sanity checks of one model on the first images of a dataset, as the evaluation command runs them.

``python -m dcls_lib.evaluate --metrics alignment,randomisation,road`` scores alignment on every
image (resumable, :mod:`dcls_lib.evaluate`) and runs the checks here on the first ``count`` images:
the randomisation test costs a forward pass per randomised layer and ROAD a sparse solve per image
and share removed, so both run on a sample, said in their tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from torch import Tensor, nn
from torch.utils.data import Dataset

from ..data.items import stack_items
from ..validation import check_positive_int
from .faithfulness import RoadResult, road
from .randomisation import RandomisationResult, RandomisationSettings, parameter_randomisation, study_map

SANITY_METRICS = ("randomisation", "road")
METRICS = ("alignment", *SANITY_METRICS)


def parse_metrics(text: str) -> tuple[str, ...]:
    """``"alignment,road"`` -> ("alignment", "road"); unknown or repeated names are an error."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = sorted(set(names) - set(METRICS))
    if not names or unknown or len(set(names)) != len(names):
        raise ValueError(f"--metrics must be a comma-separated list of {', '.join(METRICS)} without repeats, got {text!r}")
    return names


def first_items(dataset: Dataset, count: int) -> tuple[Tensor, Tensor, Tensor]:
    """The first ``count`` items of a (image, label, human map) dataset, stacked: (N, 3, H, W), (N,), (N, H, W)."""
    check_positive_int(count=count)
    if len(dataset) == 0:
        raise ValueError("the dataset is empty: no image to run the sanity checks on")
    return stack_items(dataset, range(min(count, len(dataset))))


@dataclass
class ModelChecks:
    """What the checks measured; ``None`` for a check not asked for."""

    images: int
    randomisation: Optional[RandomisationResult]
    road: Optional[RoadResult]

    def tables(self) -> str:
        """The checks' Markdown tables, each under a line saying what it is and on how many images."""
        parts = []
        sample = f"first {self.images} image{'s' if self.images != 1 else ''}"
        if self.randomisation is not None:
            parts.append(f"Randomisation test (Spearman between the trained and the randomised model's maps; "
                         f"{sample}):\n\n{self.randomisation.table()}")
        if self.road is not None:
            parts.append(f"ROAD (change of the target's probability as pixels are imputed, most relevant first "
                         f"against least relevant first; {sample}):\n\n{self.road.table()}")
        return "\n\n".join(parts)

    def to_dict(self) -> dict:
        """JSON-ready rows, for the file written beside the alignment results."""
        out: dict = {"images": self.images}
        if self.randomisation is not None:
            out["randomisation"] = [dict(row) for row in self.randomisation.rows]
        if self.road is not None:
            out["road"] = {"rows": self.road.rows(), "combined": self.road.summary()}
        return out


def model_checks(
    model: nn.Module,
    target_layer: nn.Module,
    dataset: Dataset,
    metrics: Sequence[str],
    *,
    explainer: str,
    count: int = 32,
    settings: Optional[RandomisationSettings] = None,
    **options,
) -> ModelChecks:
    """Run the sanity checks named in ``metrics`` ("randomisation", "road") of the ``explainer`` map on the
    first ``count`` items; ``settings`` and ``options`` as :func:`~dcls_lib.sanity.parameter_randomisation` takes them."""
    settings = RandomisationSettings.of(settings, **options)
    images, labels, _ = first_items(dataset, count)
    randomisation = None
    if "randomisation" in metrics:
        randomisation = parameter_randomisation(model, target_layer, images, labels, explainers=(explainer,),
                                                settings=settings)
    faithfulness = None
    if "road" in metrics:
        source = settings.map_source(model, target_layer, images, labels,
                                     {explainer: study_map(explainer, settings.threshold)})
        maps = source(model)[explainer].cpu()
        # ROAD's imputation noise leaves pixels a little outside [0, 1], which an image transform may refuse
        preprocess = settings.preprocess
        clipped = None if preprocess is None else (lambda x: preprocess(x.clamp(0.0, 1.0)))
        faithfulness = road(model, images, maps, labels, preprocess=clipped, seed=settings.seed,
                            batch_size=settings.batch_size, device=settings.device)
    return ModelChecks(len(images), randomisation, faithfulness)
