"""The side-by-side report: the model-independent references are caught by the randomisation test,
and every map gets alignment, randomisation and ROAD rows."""

import pytest
import torch

from dcls_lib.data.synthclick import SynthClick
from dcls_lib.evaluate import PixelNormalize
from dcls_lib.models import cam_target
from dcls_lib.models.small import create_small_model
from dcls_lib.sanity import image_edges, sanity_report


def test_edges_peak_on_an_edge_and_ignore_flat_regions():
    images = torch.zeros(1, 3, 32, 32)
    images[..., 16:] = 1.0  # a vertical step between columns 15 and 16
    edges = image_edges(images, blur=1 / 32)
    assert edges.shape == (1, 32, 32)
    assert set(edges[0].argmax(dim=1).tolist()) <= {15, 16}
    assert edges[0, :, :10].abs().max() == 0 and edges[0, :, 22:].abs().max() == 0
    with pytest.raises(ValueError, match="must be \\(N, 3, H, W\\)"):
        image_edges(torch.zeros(1, 32, 32))


@pytest.fixture(scope="module")
def report():
    torch.manual_seed(0)
    model = create_small_model("resnet", "baseline", width=8)
    images, labels, human = SynthClick("test", 64, size=12).batch()
    return sanity_report(model, cam_target(model).layer, images, labels, human, modes=("cascading",),
                         preprocess=PixelNormalize(SynthClick.mean, SynthClick.std), road_images=2,
                         road_percentiles=(50,), resamples=100)


def test_references_are_aligned_yet_blind_to_randomisation(report):
    rows = {r["map"]: r for r in report.rows()}
    assert list(rows) == ["Grad-CAM", "Threshold-Grad-CAM (t = 0.3)", "image edges", "human map"]
    assert rows["human map"]["Spearman with human map"]["mean"] == pytest.approx(1.0)
    assert rows["image edges"]["Spearman with human map"]["mean"] > 0.1, "SynthClick's rings are its strongest edges"
    for reference in ("image edges", "human map"):
        for step in ("randomised top layer", "randomised all layers"):
            assert rows[reference][step]["mean"] == pytest.approx(1.0), (reference, step)
    assert rows["Grad-CAM"]["randomised all layers"]["mean"] < 0.9
    assert all(result.morf.shape == (2, 1) for result in report.road.values())
    assert report.table().count("\n") == 5


def test_human_maps_must_match_the_images():
    model = create_small_model("resnet", width=8)
    images = torch.rand(2, 3, 32, 32)
    with pytest.raises(ValueError, match="human_maps must be"):
        sanity_report(model, model.layer4, images, [0, 1], torch.rand(2, 16, 16))
    with pytest.raises(ValueError, match="road_images must be"):
        sanity_report(model, model.layer4, images, [0, 1], torch.rand(2, 32, 32), road_images=-1)
