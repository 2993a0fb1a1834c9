"""The batched Spearman correlation against scipy, and the alignment score's constant-map policy."""

import math
import warnings

import numpy as np
import pytest
import scipy.stats
import torch

from dcls_lib.metrics import (
    HUMAN_CEILING,
    alignment_from_correlations,
    alignment_score,
    is_constant,
    rank_average,
    spearman,
)


def scipy_spearman(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on constant input
        return np.array([scipy.stats.spearmanr(x.ravel(), y.ravel()).statistic for x, y in zip(a.numpy(), b.numpy())])


def test_ranks_match_scipy_with_and_without_ties():
    g = torch.Generator().manual_seed(0)
    for x in (
        torch.rand(4, 1000, generator=g),
        torch.randint(0, 4, (4, 1000), generator=g).float(),
        torch.randint(-3, 3, (2, 3, 50), generator=g),
        torch.tensor([[2.0, 2.0, 2.0]]),
        # floats are sorted as ordered integers: signs, -0.0 == 0.0, infinities, tiny values
        torch.tensor([[-2.0, -1.0, -0.0, 0.0, 1e-30, -1e-30, math.inf, -math.inf, 3.5, -3.5, 2.0, -1.0]]),
        (torch.randn(3, 300, generator=g) * 2).round().to(torch.bfloat16),
        (torch.randn(3, 300, generator=g) * 2).round().double(),
    ):
        np.testing.assert_array_equal(rank_average(x).numpy(), scipy.stats.rankdata(x.float().numpy(), axis=-1))


@pytest.mark.parametrize("kind", ["untied", "tied", "thresholded", "mixed"])
def test_spearman_equals_scipy(kind):
    g = torch.Generator().manual_seed(1)
    a = torch.rand(6, 224, 224, generator=g)
    b = torch.rand(6, 224, 224, generator=g) + 0.5 * a
    if kind == "tied":
        a, b = (a * 5).floor(), (b * 3).floor()
    elif kind == "thresholded":  # Threshold-Grad-CAM floors most pixels at 0.3: one huge tie
        a = a.clamp_min(0.7)
    elif kind == "mixed":
        a = torch.where(a > 0.5, a, 0.0)
        b = (b * 10).round() / 10
    ours = spearman(a, b)
    assert ours.shape == (6,) and ours.dtype == torch.float64
    np.testing.assert_allclose(ours.numpy(), scipy_spearman(a, b), rtol=0, atol=1e-6)


def test_spearman_extremes_and_rank_invariance():
    x = torch.rand(3, 40, 40, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(spearman(x, x), torch.ones(3, dtype=torch.float64))
    assert torch.allclose(spearman(x, -x), -torch.ones(3, dtype=torch.float64))
    y = torch.rand(3, 40, 40, generator=torch.Generator().manual_seed(3))
    # a strictly increasing transform of either map leaves the ranks, hence the score, unchanged
    assert torch.allclose(spearman(torch.exp(5 * x), y.pow(3)), spearman(x, y), atol=1e-12)


def test_constant_maps_give_nan_like_scipy():
    a = torch.rand(3, 20, 20, generator=torch.Generator().manual_seed(4))
    b = torch.rand(3, 20, 20, generator=torch.Generator().manual_seed(5))
    a[1] = 0.3
    b[2] = 0.0
    rho = spearman(a, b)
    assert torch.isnan(rho[1]) and torch.isnan(rho[2]) and not torch.isnan(rho[0])
    assert np.isnan(scipy_spearman(a, b)[1:]).all()
    assert is_constant(a).tolist() == [False, True, False]


def test_numpy_maps_are_accepted():
    a, b = np.random.default_rng(0).random((2, 3, 8, 8), dtype=np.float32)
    torch.testing.assert_close(spearman(a, torch.from_numpy(b)), spearman(torch.from_numpy(a), torch.from_numpy(b)))
    with pytest.raises(TypeError, match="tensor or an array"):
        spearman("maps", b)


def test_spearman_rejects_bad_input():
    a = torch.rand(2, 5, 5)
    with pytest.raises(ValueError, match="same shape"):
        spearman(a, torch.rand(2, 5, 4))
    with pytest.raises(ValueError, match="batched"):
        spearman(torch.rand(5), torch.rand(5))
    bad = a.clone()
    bad[1, 2, 2] = math.nan
    with pytest.raises(ValueError, match=r"NaN values in maps \[1\]"):
        spearman(bad, a)


def test_alignment_score_constant_policy():
    g = torch.Generator().manual_seed(6)
    human = torch.rand(4, 16, 16, generator=g)
    maps = human + 0.3 * torch.rand(4, 16, 16, generator=g)
    maps[3] = 0.3  # e.g. Threshold-Grad-CAM of an image where no channel contributes
    rho = scipy_spearman(maps, human)
    zero = alignment_score(maps, human)
    skip = alignment_score(maps, human, constant="skip")
    assert zero == pytest.approx(rho[:3].sum() / 4 / HUMAN_CEILING, abs=1e-9)  # counted as 0
    assert skip == pytest.approx(rho[:3].mean() / HUMAN_CEILING, abs=1e-9)  # left out, as the study's code did
    with pytest.raises(ValueError, match="constant"):
        alignment_score(maps, human, constant="ignore")
    with pytest.raises(ValueError, match="every map was constant"):
        alignment_from_correlations([math.nan, math.nan], constant="skip")
    assert alignment_from_correlations([math.nan, math.nan]) == 0.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_spearman_on_cuda_equals_cpu():
    g = torch.Generator().manual_seed(7)
    a, b = (torch.rand(4, 224, 224, generator=g) * 4).floor(), torch.rand(4, 224, 224, generator=g)
    torch.testing.assert_close(spearman(a.cuda(), b.cuda()).cpu(), spearman(a, b), rtol=0, atol=1e-12)
