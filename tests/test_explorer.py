"""Chapter 7's explorer: one frame function for the static page and the live notebook."""

import matplotlib

matplotlib.use("Agg")
import ipywidgets as w  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from dcls_lib.chapters.explorer import (  # noqa: E402
    HeatmapExplorer,
    load_image,
    method_title,
    one_per_class,
)
from dcls_lib.data.synthclick import CLASSES, SynthClick  # noqa: E402
from dcls_lib.models.small import VARIANTS, create_small_model  # noqa: E402
from dcls_lib.transforms import PixelNormalize  # noqa: E402

SIZE = 64


@pytest.fixture(scope="module")
def explorer():
    torch.manual_seed(0)
    models = {("resnet", v): create_small_model("resnet", v, width=4).eval() for v in VARIANTS}
    test = SynthClick("test", image_size=SIZE, seed=0, size=6)
    return HeatmapExplorer(models, test, PixelNormalize(SynthClick.mean, SynthClick.std), CLASSES)


def _images(widget):
    if isinstance(widget, w.Image):
        return [widget]
    return [image for child in getattr(widget, "children", ()) for image in _images(child)]


def test_an_image_number_past_the_split_says_so(explorer):
    with pytest.raises(ValueError, match=r"image 6 is past the test split \(6 images: 0 to 5\)"):
        explorer.explain_test([0, 6])
    with pytest.raises(ValueError, match="past the test split"):
        explorer.explain_test([-1])
    with pytest.raises(ValueError, match="must be an int"):
        explorer.check_index(True)


def test_static_explorer_shows_the_variants_for_every_choice(explorer):
    thresholds = [0.0, 0.05, 0.1]
    box = explorer.static([0, 1], thresholds, caption="test run")
    assert list(box.controls) == ["image", "method", "threshold"], "one family: no family control"
    # steps of 0.05: two decimals, so the readout and the frames' titles (method_title) agree
    assert [label for label, _ in box.controls["threshold"].options] == ["0.00", "0.05", "0.10"]
    assert method_title("threshold-gradcam", "0.10") == "Threshold-Grad-CAM (t = 0.10)"
    assert box.controls["threshold"].index == 2 and box.controls["method"].index == 1
    # per image: its own frame, one Grad-CAM frame (every threshold) and one frame per threshold
    distinct = {image.value for image in _images(box)}
    assert len(distinct) == 2 * (1 + 1 + len(thresholds))
    assert "precomputed frames" in box.children[-1].value and "test run" in box.children[-1].value


def test_frame_draws_every_variant_of_a_family(explorer):
    (e,) = explorer.explain_test([2])
    assert set(e.tensors) == set(explorer.models) and e.classes[("resnet", "dcls")] == int(explorer.test[2][1])
    a = explorer.frame(e, "resnet", "threshold-gradcam", 0.1)
    assert a != explorer.frame(e, "resnet", "threshold-gradcam", 0.6) != explorer.frame(e, "resnet", "gradcam")
    with pytest.raises(ValueError, match="family"):
        explorer.frame(e, "convnext", "gradcam")
    with pytest.raises(ValueError, match="method"):
        explorer.frame(e, "resnet", "cam")


def test_live_explorer_computes_frames_on_demand(explorer, tmp_path):
    live = explorer.live(index=0)
    first = live.right.value
    live.controls["threshold"].value = 0.55  # a threshold no static page holds
    assert live.right.value and live.right.value != first
    live.controls["image"].value = 4
    assert live.explained.title.startswith("test image 4") and not live.message.value
    live.controls["image"].value = 60
    assert "past the test split" in live.message.value
    # an image of the reader's, as an array and as a file: maps of the predicted class, no human map
    picture = (np.random.default_rng(0).random((50, 40, 3)) * 255).astype(np.uint8)
    live.show(picture)
    assert live.explained.human_map is None and not live.message.value
    assert live.explained.image.shape == (3, SIZE, SIZE)
    Image.fromarray(picture).save(tmp_path / "mine.png")
    live.controls["file"].value = str(tmp_path / "mine.png")
    assert live.explained.title == "your image" and not live.message.value
    live.controls["file"].value = str(tmp_path / "missing.png")
    assert "no image file" in live.message.value


def test_randomisation_view_sets_a_randomised_copy_beside_each_map(explorer):
    box = explorer.randomisation_view([0, 1])
    assert list(box.controls) == ["image", "method"]
    assert len({image.value for image in _images(box)}) == 2 * 2
    assert "precomputed frames" in box.children[-1].value


def test_load_image_reads_paths_arrays_and_tensors(tmp_path):
    array = np.zeros((20, 30, 3), dtype=np.uint8)
    array[..., 0] = 255
    image = load_image(array, 16)
    assert image.shape == (3, 16, 16) and float(image[0].min()) == pytest.approx(1.0)
    assert load_image(torch.rand(3, 8, 8), 16).shape == (3, 16, 16)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        load_image(torch.full((3, 8, 8), 2.0), 16)
    with pytest.raises(ValueError, match="\\(H, W, 3\\)"):
        load_image(np.zeros((8, 8)), 16)
    with pytest.raises(FileNotFoundError, match="no image file"):
        load_image(tmp_path / "nothing.png", 16)


def test_one_per_class_takes_the_first_image_of_each_class():
    test = SynthClick("test", image_size=SIZE, seed=0, size=30)
    picked = one_per_class(test)
    labels = [test.label_of(i) for i in picked]
    assert labels == sorted(set(test.label_of(i) for i in range(len(test))))
    assert all(test.label_of(j) != test.label_of(i) for i in picked for j in range(i))
    assert one_per_class(test, 2) == picked[:2]
