"""ROAD through pytorch-grad-cam: the wrapper gives the library's own numbers, breaks ties without
reordering anything else, and scores a map of the evidence above its reverse."""

import numpy as np
import pytest
import torch
from pytorch_grad_cam.metrics.road import ROADCombined, ROADLeastRelevantFirst, ROADMostRelevantFirst
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget
from torch import nn

from dcls_lib.evaluate import PixelNormalize
from dcls_lib.sanity import rank_maps, road


class Region(nn.Module):
    """Class 0's logit is 8x the mean brightness of the top-left 8x8 pixels; class 1's is 0."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(8.0))

    def forward(self, x):
        evidence = self.scale * x[:, :, :8, :8].mean(dim=(1, 2, 3))
        return torch.stack([evidence, torch.zeros_like(evidence)], dim=1)


def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 3))


def direct(model, images, maps, labels, percentiles, seed):
    """pytorch-grad-cam's MoRF and LeRF metrics called by hand, in the order the wrapper documents."""
    targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in labels]
    cams = maps.numpy()
    torch.manual_seed(seed)
    morf, lerf = [], []
    for p in percentiles:
        morf.append(ROADMostRelevantFirst(p)(images, cams, targets, model))
        lerf.append(ROADLeastRelevantFirst(p)(images, cams, targets, model))
    return np.stack(morf, axis=1), np.stack(lerf, axis=1)


@pytest.mark.parametrize("break_ties", [False, True])
def test_the_wrapper_gives_pytorch_grad_cams_numbers(break_ties):
    model, images, labels = small_cnn().eval(), torch.rand(5, 3, 16, 16), torch.tensor([0, 1, 2, 0, 1])
    maps = torch.rand(5, 16, 16)  # no ties: breaking them changes nothing
    normalise = PixelNormalize((0.5, 0.4, 0.3), (0.2, 0.3, 0.25))
    result = road(model, images, maps, labels, percentiles=(30, 70), preprocess=normalise, seed=3, break_ties=break_ties)
    morf, lerf = direct(nn.Sequential(normalise, model), images, maps, labels, (30, 70), seed=3)
    assert torch.allclose(result.morf, torch.from_numpy(morf)) and torch.allclose(result.lerf, torch.from_numpy(lerf))
    torch.manual_seed(3)
    combined = ROADCombined([30, 70])(images, maps.numpy(), [ClassifierOutputSoftmaxTarget(int(c)) for c in labels],
                                      nn.Sequential(normalise, model))
    assert result.combined.shape == (5,)
    assert np.allclose(result.combined.numpy(), combined, atol=0.05), "same metric; only the imputation noise differs"


def test_ranks_keep_the_order_and_break_ties():
    maps = torch.rand(3, 6, 6)
    ranked = rank_maps(maps)
    assert torch.equal(ranked.flatten(1).argsort(dim=1), maps.flatten(1).argsort(dim=1))
    floored = maps.clamp_min(0.7)  # about 70% of the pixels tied at the floor
    ranked = rank_maps(floored, torch.Generator().manual_seed(0))
    assert ranked.min() == 0 and ranked.max() == 1
    assert all(row.unique().numel() == 36 for row in ranked.flatten(1))
    for row, values in zip(ranked.flatten(1), floored.flatten(1)):
        assert row[values > 0.7].min() > row[values == 0.7].max(), "tied pixels stay below larger ones"
    kept = (ranked.numpy() < np.percentile(ranked.numpy()[0], 50)).reshape(3, -1).sum(axis=1)
    assert kept[0] == 18, "with ties broken, percentile 50 keeps half the pixels"


def test_a_map_of_the_evidence_scores_above_its_reverse():
    torch.manual_seed(0)
    images = torch.rand(4, 3, 24, 24) * 0.1
    images[:, :, :8, :8] = 1.0  # the evidence for class 0
    evidence = torch.zeros(4, 24, 24)
    evidence[:, :8, :8] = 1.0
    evidence += 0.01 * torch.rand(4, 24, 24)
    labels = torch.zeros(4, dtype=torch.long)
    good = road(Region(), images, evidence, labels, percentiles=(50, 80, 90), score="logit")
    bad = road(Region(), images, 1 - evidence, labels, percentiles=(50, 80, 90), score="logit")
    assert (good.morf[:, 0] < -6).all(), "removing half the pixels, the evidence first, drops the logit (at most 8)"
    assert good.lerf.abs().max() < 0.5, "removing the background first leaves it"
    assert good.combined.mean() > 1 and bad.combined.mean() < -1
    table = good.table()
    assert table.splitlines()[2].startswith("| 50 |") and "| mean |" in table


@pytest.mark.parametrize("kwargs, message", [
    (dict(maps=torch.rand(2, 8, 8)), "maps must be"),
    (dict(percentiles=(0, 50)), "percentiles must be numbers in"),
    (dict(percentiles=50), "non-empty list"),
    (dict(score="accuracy"), "score must be one of"),
    (dict(labels=[0]), "one entry per image"),
    (dict(maps=torch.full((2, 16, 16), float("nan"))), "NaN"),
])
def test_bad_arguments_get_one_line_errors(kwargs, message):
    args = {"maps": torch.rand(2, 16, 16), "labels": [0, 1], **kwargs}
    with pytest.raises(ValueError, match=message):
        road(small_cnn(), torch.rand(2, 3, 16, 16), args.pop("maps"), args.pop("labels"), **args)
