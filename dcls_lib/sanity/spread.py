"""Mean, spread and a bootstrap interval of per-image scores, as every sanity-check row reports them.

Per-image scores may be NaN where a correlation is undefined (a constant map); ``constant`` decides
what such an image counts for, with the same two policies as the alignment score
(:data:`dcls_lib.metrics.CONSTANT_POLICIES`): ``"zero"`` counts it as 0, ``"skip"`` leaves it out.
"""

from __future__ import annotations

import math

import torch

from ..metrics import CONSTANT_POLICIES

DEFAULT_RESAMPLES = 1000
INTERVAL = (0.025, 0.975)  # a 95% percentile-bootstrap interval of the mean


def summarise(values, *, constant: str = "zero", resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> dict:
    """``{"mean", "std", "ci low", "ci high", "undefined"}`` of per-image ``values`` (NaN: undefined).

    ``std`` is the sample standard deviation over images; the interval is the 2.5th and 97.5th
    percentiles of ``resamples`` bootstrap means (images drawn with replacement, seeded), computed
    in one batched gather.  With no image left to average, every statistic is NaN.
    """
    if constant not in CONSTANT_POLICIES:
        raise ValueError(f"constant must be one of {CONSTANT_POLICIES}, got {constant!r}")
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
        raise ValueError(f"resamples must be a positive int, got {resamples!r}")
    v = torch.as_tensor(values, dtype=torch.float64).flatten().cpu()
    undefined = torch.isnan(v)
    v = torch.where(undefined, 0.0, v) if constant == "zero" else v[~undefined]
    out = {"mean": math.nan, "std": math.nan, "ci low": math.nan, "ci high": math.nan, "undefined": int(undefined.sum())}
    if v.numel() == 0:
        return out
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(v.numel(), (resamples, v.numel()), generator=generator)  # (resamples, n) image indices
    low, high = torch.quantile(v[draws].mean(dim=1), torch.tensor(INTERVAL, dtype=torch.float64)).tolist()
    out.update(mean=float(v.mean()), std=float(v.std()) if v.numel() > 1 else 0.0, **{"ci low": low, "ci high": high})
    return out


def spread_text(stats: dict, digits: int = 2) -> str:
    """'0.42 ± 0.10 [0.40, 0.44]': mean ± std [bootstrap interval], for tables."""
    if math.isnan(stats["mean"]):
        return "n/a"
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f} [{stats['ci low']:.{digits}f}, {stats['ci high']:.{digits}f}]"
