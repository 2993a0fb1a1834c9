"""dcls_lib.heatmaps: maps from one backward pass, Grad-CAM diagnostics, threshold sweeps, figures, frames."""

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from dcls_lib.cam import StudyCAM  # noqa: E402
from dcls_lib.cam import method_label  # noqa: E402
from dcls_lib.chapters.heatmap_plots import (  # noqa: E402
    image_frame,
    overlay_frame,
    plot_heatmap_grid,
    plot_threshold_sweep,
    score_text,
    threshold_labels,
)
from dcls_lib.heatmaps import LayerTensors, cam_diagnostics, channels_last_view, layer_tensors, threshold_sweep  # noqa: E402
from dcls_lib.metrics import alignment_score, spearman  # noqa: E402
from dcls_lib.models import cam_target  # noqa: E402
from dcls_lib.models.small import create_small_model  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class Tiny(nn.Module):
    """conv -> target conv (6 channels, 3x5 cells) -> global mean -> linear."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.target = nn.Conv2d(4, 6, 3, stride=(4, 2), padding=1)
        self.head = nn.Linear(6, 5)

    def forward(self, x):
        return self.head(torch.relu(self.target(torch.relu(self.stem(x)))).mean((2, 3)))


@pytest.fixture(scope="module")
def resnet_batch():
    torch.manual_seed(0)
    model = create_small_model("resnet", "baseline", num_classes=12, width=8).eval()
    images = torch.rand(5, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 3, 7, 11, 2])
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    human = torch.stack([torch.exp(-((yy - 8 * k - 10) ** 2 + (xx - 32) ** 2) / 200) for k in range(5)])
    return model, images, labels, human


def test_layer_tensors_give_the_maps_of_study_cam(resnet_batch):
    model, images, labels, _ = resnet_batch
    normalize = lambda x: (x - 0.5) / 0.2  # noqa: E731
    whole = layer_tensors(model, images, labels, preprocess=normalize, batch_size=64)
    split = layer_tensors(model, images, labels, preprocess=normalize, batch_size=2)
    assert whole.activations.shape == (5, 64, 4, 4) and len(whole) == 5  # total stride 16
    torch.testing.assert_close(split.activations, whole.activations)
    torch.testing.assert_close(split.gradients, whole.gradients)
    layer = cam_target(model).layer
    for explainer, threshold in [("gradcam", 0.3), ("threshold-gradcam", 0.3), ("threshold-gradcam", 0.6)]:
        expected = StudyCAM(model, layer, explainer=explainer, threshold=threshold)(normalize(images), labels)
        torch.testing.assert_close(whole.maps(explainer, threshold, (64, 64)), expected)


def test_layer_tensors_refuse_bad_input(resnet_batch):
    model, images, labels, _ = resnet_batch
    with pytest.raises(ValueError, match="one label per image"):
        layer_tensors(model, images, labels[:3])
    with pytest.raises(ValueError, match="batch_size"):
        layer_tensors(model, images, labels, batch_size=0)
    with pytest.raises(ValueError, match="same shape"):
        LayerTensors(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 5))


def test_channels_last_view_reproduces_the_garbled_layout():
    """A Grad-CAM that takes dimension 1 for channels, given (B, H, W, C): weights per row, a (W, C) map."""
    torch.manual_seed(0)
    model = Tiny().eval()
    images, labels = torch.randn(2, 3, 24, 20), torch.tensor([1, 4])
    right = layer_tensors(model, images, labels, target_layer=model.target)
    wrong = layer_tensors(model, images, labels, target_layer=model.target, reshape_transform=channels_last_view)
    b, c, h, w = right.activations.shape
    assert (c, h, w) == (6, 3, 5)
    assert wrong.activations.shape == (b, h, w, c)
    assert wrong.maps("gradcam").shape == (b, w, c)  # a map over (columns, channels), not space
    a, g = right.activations, right.gradients
    by_row = g.mean(dim=(1, 3))  # the wrong "alpha": one weight per row, averaged over channels and columns
    expected = torch.relu((by_row[:, None, :, None] * a).mean(dim=2)).permute(0, 2, 1)
    torch.testing.assert_close(wrong.maps("gradcam"), expected)
    with pytest.raises(ValueError, match="B, C, H, W"):
        channels_last_view(torch.zeros(3, 4, 5))


def _tensors(alpha, activations):
    """LayerTensors whose channel weights are exactly ``alpha`` (spatially constant gradients)."""
    activations = torch.as_tensor(activations, dtype=torch.float32)
    gradients = torch.as_tensor(alpha, dtype=torch.float32).view(1, -1, 1, 1).expand_as(activations).clone()
    return LayerTensors(activations, gradients)


def test_diagnostics_measure_cancellation():
    ones = torch.ones(1, 2, 2, 2)
    cancelled = cam_diagnostics(_tensors([1.0, -1.0], ones))  # the two channel terms cancel everywhere
    assert cancelled["gradcam positive"].item() == 0 and bool(cancelled["gradcam constant"].item())
    assert cancelled["threshold-gradcam positive"].item() == 1
    assert cancelled["cancellation"].item() == pytest.approx(1.0)
    agreeing = cam_diagnostics(_tensors([1.0, 2.0], ones))
    assert agreeing["gradcam positive"].item() == 1 and not bool(agreeing["gradcam constant"].item())
    assert agreeing["cancellation"].item() == pytest.approx(0.0)
    # half: channel 0 positive on the left column only, channel 1 negative everywhere at half weight
    a = torch.tensor([[[[2.0, 0.0], [2.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]]]])
    half = cam_diagnostics(_tensors([1.0, -1.0], a))
    assert half["gradcam positive"].item() == pytest.approx(0.5)
    assert half["threshold-gradcam positive"].item() == pytest.approx(0.5)
    # net |2 - 1| * 2 + |0 - 1| * 2 = 4 of gross (2 + 1) * 2 + (0 + 1) * 2 = 8
    assert half["cancellation"].item() == pytest.approx(0.5)
    # the diagnostics agree with the maps: a constant Grad-CAM map is all zero
    assert torch.equal(_tensors([1.0, -1.0], ones).maps("gradcam"), torch.zeros(1, 2, 2))


def test_threshold_sweep_scores_each_threshold(resnet_batch):
    model, images, labels, human = resnet_batch
    tensors = layer_tensors(model, images, labels)
    thresholds = [0.0, 0.3, 0.6, 0.9]
    sweep = threshold_sweep(tensors, human, thresholds)
    assert sweep["threshold"] == thresholds
    for t, score in zip(thresholds, sweep["alignment"]):
        assert score == pytest.approx(alignment_score(tensors.maps("threshold-gradcam", t, (64, 64)), human))
    floors = sweep["floor fraction"]
    assert all(b >= a for a, b in zip(floors, floors[1:])) and floors[-1] > floors[0]
    # every pixel at the floor is tied: at threshold 1 only the maximum stays above it
    top = threshold_sweep(tensors, human, [1.0])
    assert top["floor fraction"][0] == pytest.approx(1.0) and top["alignment"] == [0.0]
    with pytest.raises(ValueError, match="human maps"):
        threshold_sweep(tensors, human[:2], thresholds)
    with pytest.raises(ValueError, match="empty"):
        threshold_sweep(tensors, human, [])


def test_heatmap_grid_shows_every_map_with_its_score():
    images, human = torch.rand(3, 3, 16, 16), torch.rand(3, 16, 16)
    maps = {"Grad-CAM": torch.rand(3, 16, 16), "Threshold-Grad-CAM": torch.zeros(3, 16, 16)}
    scores = {name: spearman(m, human) for name, m in maps.items()}
    fig = plot_heatmap_grid(images, human, maps, scores, column_titles=["a", "b", "c"])
    axes = np.array(fig.axes).reshape(4, 3)
    assert axes[2, 0].get_title() == f"ρ = {float(scores['Grad-CAM'][0]):+.2f}"
    assert axes[3, 1].get_title() == "constant map"  # an all-zero map has no Spearman correlation
    assert axes[0, 2].get_title() == "c" and axes[3, 0].get_ylabel() == "Threshold-Grad-CAM"
    plt.close(fig)
    with pytest.raises(ValueError, match="same number"):
        plot_heatmap_grid(images, human[:2], maps)
    assert score_text(0.4242) == "ρ = +0.42" and score_text(math.nan) == "constant map"


def test_threshold_sweep_figure():
    sweep = {"threshold": [0.0, 0.5], "alignment": [0.1, 0.2], "floor fraction": [0.0, 0.6]}
    fig = plot_threshold_sweep({"m": sweep}, gradcam={"m": 0.15})
    left = fig.axes[0]
    assert list(left.lines[0].get_ydata()) == pytest.approx([10.0, 20.0])
    assert any(list(line.get_ydata()) == pytest.approx([15.0, 15.0]) for line in left.lines)
    plt.close(fig)


def test_frames_are_pngs_that_differ_with_their_content():
    image, human = torch.rand(3, 32, 32), torch.rand(32, 32)
    a = overlay_frame(image, human, {"": {"model": (torch.rand(32, 32), "ρ = +0.25")}})
    b = overlay_frame(image, human, {"": {"model": (torch.rand(32, 32), "ρ = +0.25")}})
    assert a.startswith(PNG_MAGIC) and a != b
    assert image_frame(image, human, "image 1").startswith(PNG_MAGIC)
    assert image_frame(image, None, "yours") != image_frame(image, human, "yours")  # no human map: one panel
    assert overlay_frame(image, None, {"": {"model": (torch.zeros(32, 32), "constant map")}}).startswith(PNG_MAGIC)
    with pytest.raises(ValueError, match="cannot be drawn over"):
        overlay_frame(image, human, {"": {"model": (torch.rand(16, 16), "")}})


def test_overlay_draws_the_map_over_the_image_with_the_human_outline():
    image, human, heatmap = torch.rand(3, 32, 32), torch.zeros(32, 32), torch.rand(32, 32)
    human[8:24, 8:24] = 1.0
    fig = plot_heatmap_grid(image[None], human[None], {"m": heatmap[None]}, {"m": [0.5]})
    ax = fig.axes[2]  # the model's row
    layers = ax.get_images()
    assert len(layers) == 2 and layers[1].get_alpha() == pytest.approx(0.5)  # the image, then the map over it
    assert layers[1].get_array().shape == (32, 32)
    assert len(ax.collections) >= 1  # the human map's contour
    plt.close(fig)


def test_threshold_labels_have_the_decimals_the_steps_need():
    assert threshold_labels([0.0, 0.1, 0.3]) == ["0.0", "0.1", "0.3"]
    labels = threshold_labels([0.0, 0.05, 0.1, 0.15])
    assert labels == ["0.00", "0.05", "0.10", "0.15"] and len(set(labels)) == 4


def test_method_label():
    assert method_label("gradcam") == "Grad-CAM"
    assert method_label("threshold-gradcam", 0.5) == "Threshold-Grad-CAM (t = 0.5)"
    assert method_label("threshold-gradcam") == "Threshold-Grad-CAM (t = 0.3)"
    with pytest.raises(ValueError, match="explainer"):
        method_label("cam")
