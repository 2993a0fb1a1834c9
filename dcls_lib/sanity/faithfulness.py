"""Faithfulness by ROAD (Rong et al. 2022, "A consistent and efficient evaluation strategy for
attribution methods"), through pytorch-grad-cam's own metrics.

ROAD removes a share of the pixels, the most relevant first (MoRF) or the least relevant first
(LeRF), and measures how the target score changes.  Removed pixels are filled by noisy linear
imputation (each one the weighted mean of its neighbours, solved as one sparse system, plus noise
of 0.01), so that the filled image carries no trace of the mask's shape: zeroing or blurring
pixels would let the model read the removed region's outline, the out-of-distribution shortcut.
A faithful map makes the score drop fast under MoRF and slowly under LeRF: ROAD's combined score
``(mean LeRF change - mean MoRF change) / 2`` is then positive.

The metrics are ``pytorch_grad_cam.metrics.road.ROADMostRelevantFirst`` and
``ROADLeastRelevantFirst`` themselves, called once per percentile and batch; their imputation
solves one sparse system per image on the CPU (their loop), which is what ROAD costs.  At
percentile ``p`` both remove ``100 - p`` % of the pixels (pytorch-grad-cam's convention).

Ties.  pytorch-grad-cam keeps the pixels strictly below the percentile's value, so a map with
many equal pixels (Threshold-Grad-CAM's floor, Grad-CAM's zeros) removes all of a tie group or
none of it: far more or fewer pixels than the percentile says.  With ``break_ties=True`` (default)
each map is replaced by its pixels' ranks, equal pixels in a seeded random order, before the
metric sees it: the same order where the map has no ties, and exactly the stated share removed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirst, ROADMostRelevantFirst
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget, ClassifierOutputTarget
from torch import Tensor, nn

from ..tables import table_text
from .spread import DEFAULT_RESAMPLES, spread_text, summarise

PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)  # pytorch-grad-cam's ROADCombined default
SCORES = {"probability": ClassifierOutputSoftmaxTarget, "logit": ClassifierOutputTarget}


def rank_maps(maps: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """Each map's pixels replaced by their rank / (pixels - 1), in [0, 1]; equal pixels get distinct
    ranks in a random order drawn from ``generator``.  (N, H, W) -> (N, H, W) float32."""
    flat = maps.reshape(maps.shape[0], -1)  # (N, P)
    shuffle = torch.rand(flat.shape, generator=generator).argsort(dim=1).to(flat.device)  # a random order per map
    order = flat.gather(1, shuffle).argsort(dim=1, stable=True)  # sorted positions, ties in the random order
    ranks = torch.empty_like(order)
    ranks.scatter_(1, shuffle.gather(1, order), torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return (ranks.float() / max(flat.shape[1] - 1, 1)).reshape(maps.shape)


@dataclass
class RoadResult:
    """Per-image changes of the target score after imputing pixels (after - before: negative is a drop).

    ``morf`` and ``lerf``: (N, len(percentiles)) float32; ``combined``: (N,) ROAD's
    ``(mean LeRF - mean MoRF) / 2`` per image, as ``ROADCombined`` computes it.
    """

    percentiles: tuple[int, ...]
    morf: Tensor
    lerf: Tensor
    score: str = "probability"

    @property
    def combined(self) -> Tensor:
        return (self.lerf.mean(dim=1) - self.morf.mean(dim=1)) / 2

    def summary(self, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> dict:
        """Mean, std and bootstrap interval of the per-image combined score."""
        return summarise(self.combined, resamples=resamples, seed=seed)

    def rows(self) -> list[dict]:
        """One row per percentile: the share of pixels removed and the mean score change each way."""
        return [{"removed (%)": 100 - p, "MoRF change": float(self.morf[:, j].mean()),
                 "LeRF change": float(self.lerf[:, j].mean()),
                 "(LeRF - MoRF) / 2": float((self.lerf[:, j] - self.morf[:, j]).mean() / 2)}
                for j, p in enumerate(self.percentiles)]

    def table(self) -> str:
        """The per-percentile rows, then the mean over percentiles with the combined score's spread."""
        rows = [{k: (f"{v:+.3f}" if k != "removed (%)" else f"{v:g}") for k, v in r.items()} for r in self.rows()]
        rows.append({"removed (%)": "mean", "MoRF change": f"{float(self.morf.mean()):+.3f}",
                     "LeRF change": f"{float(self.lerf.mean()):+.3f}", "(LeRF - MoRF) / 2": spread_text(self.summary(), 3)})
        return table_text(rows)


class _Preprocessed(nn.Module):
    """``model(preprocess(x))`` as one module, for any callable ``preprocess`` (a transform need not be a module)."""

    def __init__(self, preprocess: Callable[[Tensor], Tensor], model: nn.Module) -> None:
        super().__init__()
        self.preprocess, self.model = preprocess, model

    def forward(self, images: Tensor) -> Tensor:
        return self.model(self.preprocess(images))


def _check_percentiles(percentiles) -> tuple[int, ...]:
    if isinstance(percentiles, (str, int)) or not percentiles:
        raise ValueError(f"percentiles must be a non-empty list of numbers in (0, 100), got {percentiles!r}")
    for p in percentiles:
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p < 100:
            raise ValueError(f"percentiles must be numbers in (0, 100), got {p!r}")
    return tuple(percentiles)


def road(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    labels,
    *,
    percentiles: Sequence[float] = PERCENTILES,
    preprocess: Optional[Callable[[Tensor], Tensor]] = None,
    score: str = "probability",
    break_ties: bool = True,
    seed: int = 0,
    batch_size: int = 64,
    device=None,
) -> RoadResult:
    """ROAD MoRF and LeRF score changes of ``maps`` (N, H, W) for ``model`` on ``images`` (N, 3, H, W).

    ``preprocess`` (e.g. ``PixelNormalize``) is applied after imputation, so pixels are imputed in
    the images' own [0, 1] space and the noise of 0.01 is on that scale.  ``score``: the target is
    each image's ``labels`` class, as a ``"probability"`` (softmax) or a ``"logit"``.  The metrics
    draw their noise from torch's global generator, seeded with ``seed`` here and restored
    afterwards; calls go batch by batch, and within a batch percentile by percentile, MoRF then LeRF.
    """
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise ValueError(f"images must be a (N, 3, H, W) tensor, got {getattr(images, 'shape', type(images).__name__)}")
    if not isinstance(maps, Tensor) or maps.shape != (images.shape[0], *images.shape[-2:]):
        raise ValueError(f"maps must be (N, H, W) = {(images.shape[0], *images.shape[-2:])} like the images, "
                         f"got {tuple(getattr(maps, 'shape', ()))}")
    labels = torch.as_tensor(labels).long().flatten()
    if labels.numel() != images.shape[0]:
        raise ValueError(f"labels must have one entry per image: got {labels.numel()} for {images.shape[0]} images")
    if score not in SCORES:
        raise ValueError(f"score must be one of {tuple(SCORES)}, got {score!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    percentiles = _check_percentiles(percentiles)
    if torch.isnan(maps).any():
        raise ValueError("maps have NaN values")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    scored = (model if preprocess is None else _Preprocessed(preprocess, model)).eval()
    maps = maps.detach().float().cpu()
    if break_ties:
        maps = rank_maps(maps, torch.Generator().manual_seed(seed))
    morf = torch.empty(len(labels), len(percentiles))
    lerf = torch.empty_like(morf)
    metrics = [(ROADMostRelevantFirst(p), ROADLeastRelevantFirst(p)) for p in percentiles]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for start in range(0, len(labels), batch_size):
            part = slice(start, start + batch_size)
            batch = images[part].to(device).float()
            cams = maps[part].numpy()
            targets = [SCORES[score](int(c)) for c in labels[part]]
            for j, (most, least) in enumerate(metrics):
                morf[part, j] = torch.from_numpy(most(batch, cams, targets, scored))
                lerf[part, j] = torch.from_numpy(least(batch, cams, targets, scored))
    return RoadResult(percentiles, morf, lerf, score)
