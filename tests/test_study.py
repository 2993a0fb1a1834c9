"""The study runner: trains and scores each run once, aggregates over seeds, writes what the book reads."""

import json
import math

import numpy as np
import pytest
import torch

from dcls_lib.data.synthclick import SynthClick
from dcls_lib.study import PLANS, StudyPlan, aggregate, load_study, markdown_table, run_study
from dcls_lib.train import evaluate_accuracy


def test_aggregate_means_and_spreads_over_seeds():
    rows = [
        {"family": "resnet", "variant": "dcls", "test_acc": 0.5, "gradcam": 0.2, "threshold-gradcam": 0.4},
        {"family": "resnet", "variant": "dcls", "test_acc": 0.7, "gradcam": 0.4, "threshold-gradcam": 0.6},
        {"family": "resnet", "variant": "baseline", "test_acc": 0.6, "gradcam": 0.1, "threshold-gradcam": 0.3},
    ]
    summary = {e["variant"]: e for e in aggregate(rows)}
    assert summary["dcls"]["seeds"] == 2 and summary["dcls"]["test_acc"] == pytest.approx(0.6)
    assert summary["dcls"]["gradcam std"] == pytest.approx(math.sqrt(0.02))
    assert summary["baseline"]["gradcam std"] is None
    table = markdown_table(aggregate(rows))
    assert "| resnet | dcls | 2 | 60.0 ± 14.1 | 30.0 ± 14.1 | 50.0 ± 14.1 |" in table
    assert "| resnet | baseline | 1 | 60.0 | 10.0 | 30.0 |" in table


def test_plans_train_the_three_variants():
    for plan in PLANS.values():
        assert plan.variants == ("baseline", "dilated", "dcls")
        assert {c.profile for c in plan.configs()} == {plan.profile}
    assert len(PLANS["gpu"].seeds) >= 3, "the full profile reports a spread over seeds"


TINY = StudyPlan("smoke", families=("resnet",), variants=("baseline", "dcls"), seeds=(0, 1), test_size=8,
                 train_overrides={"epochs": 1})


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    folder = tmp_path_factory.mktemp("study")
    return folder, run_study(out_dir=folder, plan=TINY, device="cpu", progress=False)


def test_run_study_trains_scores_and_reloads(tiny_study):
    tmp_path, results = tiny_study
    plan = TINY
    assert len(results.rows) == 4
    for row in results.rows:
        assert 0 <= row["test_acc"] <= 1
        for explainer in ("gradcam", "threshold-gradcam"):
            assert -1 / 0.65753 <= row[explainer] <= 1 / 0.65753
            lines = (results.run_dir(row["family"], row["variant"], row["seed"]) / f"alignment-{explainer}.jsonl")
            assert sum(json.loads(l)["type"] == "image" for l in lines.read_text().splitlines()) == 8
    saved = json.loads((tmp_path / "study.json").read_text())
    assert saved["rows"] == results.rows and saved["run"]["profile"] == "smoke"
    assert (tmp_path / "study.md").read_text().strip() == results.table()

    checkpoint = results.run_dir("resnet", "dcls", 1) / "checkpoint.pt"
    before = checkpoint.stat().st_mtime_ns
    again = run_study(out_dir=tmp_path, plan=plan, device="cpu", progress=False)
    assert checkpoint.stat().st_mtime_ns == before, "a finished run is reloaded, not retrained"
    assert again.rows == results.rows
    loaded = load_study(tmp_path)
    assert loaded.plan == plan and loaded.rows == results.rows and loaded.table() == results.table()


def test_a_study_loads_its_models_and_its_test_split(tiny_study):
    _, results = tiny_study
    runs = results.load_models(seed=1, device="cpu")
    assert set(runs) == {("resnet", "baseline"), ("resnet", "dcls")}
    assert all(run.config.seed == 1 and not run.model.training for run in runs.values())
    test = results.test_split()
    config = runs["resnet", "dcls"].config
    assert (len(test), test.image_size, test.split) == (TINY.test_size, config.image_size, "test")
    images, labels, _ = test.batch()
    _, accuracy, _ = evaluate_accuracy(runs["resnet", "dcls"].model, (images * 255).round().to(torch.uint8), labels, "cpu")
    row = next(r for r in results.rows if (r["variant"], r["seed"]) == ("dcls", 1))
    assert accuracy == row["test_acc"], "the split the study scored"
    clickme = type(results)(StudyPlan("clickme", families=("resnet50",)), [], results.out_dir, {})
    with pytest.raises(ValueError, match="SynthClick"):
        clickme.test_split()


def test_unknown_profile_is_named():
    with pytest.raises(ValueError, match="profile"):
        run_study("laptop")


def test_figures_and_tables_of_a_study(tiny_study):
    import matplotlib

    matplotlib.use("Agg")
    from dcls_lib.chapters.study_plots import accuracy_rows, alignment_bars, position_maps, spread_over_training, training_curves

    _, results = tiny_study
    curves = training_curves(results)
    assert len(curves.axes) == 2 and len(curves.axes[1].lines) == 4 + 1  # 4 runs and the chance line
    rows = accuracy_rows(results)
    assert [(r["variant"], r["seed"]) for r in rows] == [("baseline", 0), ("baseline", 1), ("dcls", 0), ("dcls", 1)]
    assert all(r["test accuracy"].endswith("%") for r in rows)
    dcls_run = results.run_dir("resnet", "dcls", 0)
    maps = position_maps(dcls_run, size=7)
    shares = [ax.images[0].get_array() for ax in maps.axes]
    assert all(abs(float(a.sum()) - 1) < 1e-6 for a in shares), "each panel shows the share of taps per cell"
    assert len(spread_over_training(dcls_run).axes[0].lines) == len(maps.axes) // 2
    bars = alignment_bars(results)
    assert len(bars.axes) == 2 and len(bars.axes[0].patches) == 2


def test_paired_differences_and_heatmaps_of_a_study(tiny_study):
    import matplotlib

    matplotlib.use("Agg")
    from dcls_lib.chapters.study_plots import example_heatmaps, paired_differences, per_image_scores, score_distributions

    _, results = tiny_study
    scores = per_image_scores(results, "gradcam")
    a, b = scores["resnet", "baseline", 0], scores["resnet", "dcls", 0]
    assert len(a) == len(b) == 8
    (row,) = paired_differences(results, "gradcam")
    expected = np.mean([scores["resnet", "dcls", s][i] - scores["resnet", "baseline", s][i] for s in (0, 1) for i in a])
    assert row["images"] == 16 and float(row["mean difference"]) == pytest.approx(expected, abs=5e-4)
    low, high = (float(x) for x in row["95% interval"].strip("[]").split(","))
    assert low <= float(row["mean difference"]) <= high
    assert len(score_distributions(results).axes) == 2

    images, labels, human = SynthClick("test", image_size=results.plan.configs()[0].image_size, seed=0, size=3).batch()
    fig = example_heatmaps(results, images, labels, human, "threshold-gradcam")
    assert len(fig.axes) == 3 * (2 + 2), "rows: image, human map and the two seed-0 models; a column per image"
    titles = [ax.get_title() for ax in fig.axes[6:]]
    assert all(t.startswith("ρ =") or t == "constant map" for t in titles)


def test_the_published_study_on_clickme_files_in_the_real_formats(tmp_path):
    """run_clickme_study reads ClickMe shards and the published weights from a cache; both are written
    here in their exact formats (random values: this checks the wiring, not the published numbers)."""
    import numpy as np
    import timm
    from safetensors.torch import save_file

    from authors_layouts import make_state_dict, resnet50_layout, timm_training_checkpoint
    from dcls_lib.data.clickme import write_clickme_shard
    from dcls_lib.models import PUBLISHED
    from dcls_lib.study import run_clickme_study

    rng = np.random.default_rng(0)
    samples = [(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8), rng.integers(0, 256, (256, 256), dtype=np.uint8), k)
               for k in (3, 7)]
    write_clickme_shard(tmp_path / "shards" / "val-0.tfrecords", samples)
    cache = tmp_path / "cache"
    cache.mkdir()
    baseline = timm.create_model("resnet50")
    save_file({k: v.contiguous() for k, v in baseline.state_dict().items()}, str(cache / PUBLISHED["resnet50"].filename))
    authors = make_state_dict(resnet50_layout(taps=5), seed=1, positions_limit=3)
    torch.save(timm_training_checkpoint(authors), cache / PUBLISHED["resnet50_dcls"].filename)

    results = run_clickme_study(tmp_path / "shards", names=("resnet50",), out_dir=tmp_path / "out", cache_dir=cache,
                                batch_size=2, device="cpu", progress=False)
    assert [(r["family"], r["variant"]) for r in results.rows] == [("resnet50", "baseline"), ("resnet50", "dcls")]
    assert all(r["test_acc"] is None and abs(r["threshold-gradcam"]) <= 1 / 0.65753 for r in results.rows)
    assert "| resnet50 | dcls | 1 | n/a |" in results.table()
    assert load_study(tmp_path / "out").rows == results.rows
    with pytest.raises(ValueError, match="not one of the study's models"):
        run_clickme_study(tmp_path / "shards", names=("vgg16",), out_dir=tmp_path / "out", progress=False)
