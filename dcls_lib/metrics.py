"""Alignment between model heatmaps and human attention maps: a batched Spearman correlation.

The study scores a heatmap by the Spearman correlation, over all pixels, between the model's map
and the human (ClickMe) map of the same image, averages over images and divides by the human
inter-rater ceiling 0.65753.  The reference code loops over images and calls
``scipy.stats.spearmanr`` on each; here one call ranks a whole batch on the maps' own device.

Constant maps.  A map whose pixels are all equal has no ranking: its Spearman correlation is
undefined (``scipy`` returns NaN, and so does :func:`spearman`).  The two reference codes differ:
the study's code silently drops such images from the mean, the harmonization code keeps them and
lets the NaN poison the mean.  :func:`alignment_score` counts such an image with correlation 0
("no monotonic agreement", the value a random map has on average) by default (``constant="zero"``)
and can reproduce the study's skipping (``constant="skip"``); the evaluation reports how many maps
were constant either way.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .validation import check_choice

HUMAN_CEILING = 0.65753
"""Inter-rater Spearman alignment of ClickMe's human maps: a score of 1 means human-level agreement."""

CONSTANT_POLICIES = ("zero", "skip")


def _flatten_maps(x, name: str, device=None) -> Tensor:
    """(B, ...) maps as a (B, N) tensor; numpy arrays (pytorch-grad-cam's output) are taken too."""
    if not isinstance(x, Tensor):
        try:
            x = torch.as_tensor(np.asarray(x), device=device)
        except (TypeError, ValueError) as error:
            raise TypeError(f"{name} must be a tensor or an array of maps, got {type(x).__name__}") from error
    if x.dim() < 2:
        raise ValueError(f"{name} must be batched, (B, H, W) or (B, N), got shape {tuple(x.shape)}")
    if x.is_complex():
        raise TypeError(f"{name} must be real, got {x.dtype}")
    return x.reshape(x.shape[0], -1)


def _sort_keys(x: Tensor) -> Tensor:
    """Values that sort like ``x`` and tie exactly where it ties: float32 as ordered int32 (a faster sort)."""
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    if x.dtype != torch.float32:
        return x
    bits = (x + 0.0).view(torch.int32)  # + 0.0 turns -0.0 into +0.0, which compares equal to it
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)  # negative floats: reverse the order of their magnitudes


def rank_average(x: Tensor) -> Tensor:
    """1-based ranks along the last dimension, ties given the mean of their positions (scipy's "average").

    One sort per row; in sorted order a tie group starts where a value differs from its left
    neighbour.  Every row starts a group, so the rows can be laid end to end and each group's first
    and one-past-last positions read off the flat list of group starts (segment ops, no Python loop
    over values).  Ranks come back in float64, exact for any realistic number of pixels.
    """
    shape, n = x.shape, x.shape[-1]
    rows = _sort_keys(x.reshape(-1, n))
    values, order = torch.sort(rows, dim=-1)
    starts = torch.ones_like(values, dtype=torch.bool)
    starts[:, 1:] = values[:, 1:] != values[:, :-1]
    starts = starts.flatten()
    first = starts.nonzero().squeeze(1)
    past_last = torch.cat([first[1:], first.new_tensor([starts.numel()])])
    group = starts.cumsum(0) - 1
    mean_position = (first + past_last - 1).to(torch.float64)[group] / 2
    row_start = torch.arange(rows.shape[0], device=x.device, dtype=torch.float64)[:, None] * n
    sorted_ranks = mean_position.view_as(values) - row_start + 1
    return torch.empty_like(sorted_ranks).scatter_(-1, order, sorted_ranks).reshape(shape)


def is_constant(maps: Tensor) -> Tensor:
    """(B,) bool: which maps have all their pixels equal (their Spearman correlation is undefined)."""
    flat = _flatten_maps(maps, "maps")
    return (flat == flat[:, :1]).all(dim=1)


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman correlation of each pair of maps over all their pixels: (B, ...) x (B, ...) -> (B,) float64.

    Equal to ``scipy.stats.spearmanr(a[i].ravel(), b[i].ravel())`` (average ranks for ties), computed
    in float64 on the inputs' device (a numpy array joins the other argument's device).  A pair
    where either map is constant gives NaN, as scipy does; :func:`alignment_score` decides what
    such an image counts for.
    """
    device = next((x.device for x in (a, b) if isinstance(x, Tensor)), None)
    fa, fb = _flatten_maps(a, "a", device), _flatten_maps(b, "b", device)
    if fa.shape != fb.shape:
        raise ValueError(f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if fa.device != fb.device:
        raise ValueError(f"a and b must be on the same device, got {fa.device} and {fb.device}")
    if fa.shape[1] < 2:
        raise ValueError(f"each map needs at least 2 pixels, got {fa.shape[1]}")
    for name, flat in (("a", fa), ("b", fb)):
        if flat.is_floating_point():
            bad = torch.isnan(flat).any(dim=1)
            if bad.any():
                raise ValueError(f"{name} has NaN values in maps {bad.nonzero().flatten().tolist()}")
    middle = (fa.shape[1] + 1) / 2  # the mean of average ranks, exactly
    ra, rb = rank_average(fa) - middle, rank_average(fb) - middle
    covariance = (ra * rb).sum(dim=1)
    scale = torch.sqrt((ra * ra).sum(dim=1) * (rb * rb).sum(dim=1))
    undefined = is_constant(fa) | is_constant(fb)
    rho = covariance / torch.where(undefined, 1.0, scale)
    return torch.where(undefined, math.nan, rho.clamp(-1.0, 1.0))


def alignment_from_correlations(
    correlations, *, constant: str = "zero", ceiling: float = HUMAN_CEILING
) -> float:
    """Mean per-image Spearman correlation divided by the human ceiling; NaN marks a constant map.

    ``constant="zero"`` (default) counts an image with a constant map as correlation 0;
    ``constant="skip"`` leaves it out of the mean, as the study's code did.
    """
    check_choice("constant", constant, CONSTANT_POLICIES)
    rho = torch.as_tensor(correlations, dtype=torch.float64).flatten()
    if rho.numel() == 0:
        raise ValueError("no correlations to average: the score of zero images is undefined")
    undefined = torch.isnan(rho)
    if constant == "zero":
        rho = torch.where(undefined, 0.0, rho)
    else:
        rho = rho[~undefined]
        if rho.numel() == 0:
            raise ValueError("every map was constant: with constant='skip' no image is left to average")
    return float(rho.mean()) / ceiling


def alignment_score(
    maps: Tensor, human_maps: Tensor, *, constant: str = "zero", ceiling: float = HUMAN_CEILING
) -> float:
    """The study's score of a batch of heatmaps: mean per-image Spearman / 0.65753 (see the module doc)."""
    return alignment_from_correlations(spearman(maps, human_maps), constant=constant, ceiling=ceiling)


TOP_FRACTION = 0.1
"""Harmonization's overlap metrics compare the top 10% of pixels of each map."""


def top_fraction_overlap(a: Tensor, b: Tensor, fraction: float = TOP_FRACTION) -> tuple[Tensor, Tensor]:
    """Dice and IoU (each (B,) float64) of the pixels above each map's own ``1 - fraction`` quantile.

    As serre-lab's Harmonization benchmark computes them for ClickMe: each map is binarised at its
    own 90th percentile (linear interpolation between pixels, ``np.percentile``'s default), strictly
    greater counting as in; then Dice = 2|A & B| / (|A| + |B| + 1e-9) and IoU = |A & B| / (|A | B| + 1e-9).
    A constant map has no pixel above its percentile: it scores 0 on both.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction!r}")
    a, b = _flatten_maps(a, "a").double(), _flatten_maps(b, "b", device=a.device).double()  # (B, N) each
    if a.shape != b.shape:
        raise ValueError(f"a and b must hold maps of the same size, got {tuple(a.shape)} and {tuple(b.shape)}")
    top_a = a > torch.quantile(a, 1 - fraction, dim=1, keepdim=True)
    top_b = b > torch.quantile(b, 1 - fraction, dim=1, keepdim=True)
    both = (top_a & top_b).sum(1).double()
    dice = 2 * both / (top_a.sum(1) + top_b.sum(1) + 1e-9)
    iou = both / ((top_a | top_b).sum(1) + 1e-9)
    return dice, iou
