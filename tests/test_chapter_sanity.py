"""Chapter 5's helpers: the sanity checks of the study's models, its wiring, and reloading the study."""

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from dcls_lib.chapters import trained  # noqa: E402
from dcls_lib.chapters.gradcam_analysis import heatmap_rows, pytorch_gradcam_agreement  # noqa: E402
from dcls_lib.chapters.sanity_plots import check_verdicts, plot_randomisation, sanity_rows, study_sanity  # noqa: E402
from dcls_lib.data.synthclick import SynthClick  # noqa: E402
from dcls_lib.models.small import create_small_model  # noqa: E402
from dcls_lib.study import PLANS, study_dir  # noqa: E402
from dcls_lib.transforms import PixelNormalize  # noqa: E402

NORMALIZE = PixelNormalize(SynthClick.mean, SynthClick.std)


@pytest.fixture(scope="module")
def data():
    torch.manual_seed(0)
    models = {("resnet", v): create_small_model("resnet", v, width=4).eval() for v in ("baseline", "dcls")}
    return models, *SynthClick("test", image_size=64, seed=0, size=6).batch()


@pytest.fixture(scope="module")
def reports(data):
    models, images, labels, human = data
    named = {f"{f} {v}": m for (f, v), m in models.items()}
    return study_sanity(named, images, labels, human, preprocess=NORMALIZE, road_images=1, road_percentiles=(50,),
                        workers=2)


def test_models_checked_side_by_side_give_the_reports_of_one_process(data, reports):
    models, images, labels, human = data
    named = {f"{f} {v}": m for (f, v), m in models.items()}
    alone = study_sanity(named, images, labels, human, preprocess=NORMALIZE, road_images=1, road_percentiles=(50,),
                         workers=1)
    assert list(alone) == list(reports)
    assert sanity_rows(alone) == sanity_rows(reports)


def test_reports_cover_every_model_and_map(reports):
    rows = sanity_rows(reports)
    assert len(rows) == 2 * 4  # two models, both Grad-CAMs and the two references
    assert {r["map"] for r in rows} == {"Grad-CAM", "Threshold-Grad-CAM (t = 0.3)", "image edges", "human map"}
    human = [r for r in rows if r["map"] == "human map"]
    assert all(r["Spearman, all layers randomised"] == "1.00 [1.00, 1.00]" for r in human)


def test_verdicts_flag_the_model_independent_references(reports):
    verdicts = check_verdicts(reports)
    assert verdicts["human map"]["flagged"] and verdicts["image edges"]["flagged"]
    assert verdicts["human map"]["randomised"] == pytest.approx(1.0)
    assert verdicts["human map"]["alignment"] > verdicts["Grad-CAM"]["alignment"]
    assert not verdicts["Grad-CAM"]["flagged"], "random weights: a Grad-CAM map must change with them"


def test_randomisation_figure_has_a_panel_per_model_and_a_line_per_map(reports):
    fig = plot_randomisation(reports)
    assert len(fig.axes) == 2
    layers = reports["resnet dcls"].randomisation.layers
    cascading = [line for line in fig.axes[0].lines if line.get_marker() == "o"]
    assert len(cascading) == 4 and all(len(line.get_xdata()) == len(layers) for line in cascading)
    plt.close(fig)


def test_pytorch_gradcam_ranks_pixels_as_the_study_does(data):
    models, images, labels, human = data
    model = models[("resnet", "dcls")]
    maps = trained.study_maps({("resnet", "dcls"): model}, images, labels, human, preprocess=NORMALIZE)
    check = pytorch_gradcam_agreement(model, images, labels, human, maps.maps[("resnet", "dcls")]["gradcam"],
                                      preprocess=NORMALIZE)
    assert check["images"] == 6
    assert check["constant in both"] == 6 or check["min Spearman"] > 0.999
    # float32 differences between the two implementations reorder a few near-equal pixels: a few 1e-6
    assert check["ours"] == pytest.approx(check["theirs"], abs=1e-5)
    rows, scores = heatmap_rows(maps.maps, maps.rho, 2)
    assert list(rows) == ["resnet dcls\nGrad-CAM", "resnet dcls\nThreshold-Grad-CAM"]
    assert rows["resnet dcls\nGrad-CAM"].shape == (2, 64, 64) and scores["resnet dcls\nGrad-CAM"].shape == (2,)


def test_trained_study_reads_a_finished_study_without_training(tmp_path, monkeypatch):
    monkeypatch.setenv("DCLS_RUNS", str(tmp_path))

    def no_training(*args, **kwargs):
        raise AssertionError("a finished study must be read, not run")

    monkeypatch.setattr(trained, "run_study", no_training)
    folder = study_dir("smoke")
    folder.mkdir(parents=True)
    plan = PLANS["smoke"]
    row = {"family": "resnet", "variant": "dcls", "seed": 0, "test_acc": 0.5, "gradcam": 0.1,
           "threshold-gradcam": 0.2}
    (folder / "study.json").write_text(json.dumps({
        "plan": {**plan.__dict__, "families": list(plan.families), "variants": list(plan.variants),
                 "seeds": list(plan.seeds)}, "run": {}, "rows": [row], "summary": []}))
    results = trained.trained_study("smoke")
    assert results.out_dir == folder and results.plan == plan
    assert trained.model_rows(results) == [{"model": "resnet dcls", "test accuracy (%)": "50.0",
                                            "Grad-CAM alignment (%)": "10.0",
                                            "Threshold-Grad-CAM alignment (%)": "20.0"}]
    # not finished: the study runs
    monkeypatch.setattr(trained, "run_study", lambda profile, progress: ("ran", profile, progress))
    (folder / "study.json").unlink()
    assert trained.trained_study("smoke") == ("ran", "smoke", False)
