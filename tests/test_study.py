"""The study runner: trains and scores each run once, aggregates over seeds, writes what the book reads."""

import json
import math

import numpy as np
import pytest
import torch

from dcls_lib.data.synthclick import SynthClick
from dcls_lib.study import (
    PLANS,
    StudyPlan,
    aggregate,
    claim_counts,
    load_study,
    markdown_table,
    paired_differences as study_paired_differences,
    results_rho,
    run_study,
    span_table,
)
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
    cpu = PLANS["cpu"]
    assert set(cpu.families) == {"resnet", "convnext", "fastvit", "convformer"}
    # issue 13: at least three seeds of the ResNet and the ConvNeXt, one of the others
    assert all(len(cpu.seeds_of(f)) >= 3 for f in ("resnet", "convnext"))
    assert all(len(cpu.seeds_of(f)) >= 1 for f in cpu.families)
    runs = [(c.family, c.variant, c.seed) for c in cpu.configs()]
    assert len(runs) == len(set(runs)) == sum(3 * len(cpu.seeds_of(f)) for f in cpu.families)


def test_aggregate_reports_accuracy_per_span_beside_alignment():
    rows = [{"family": "convnext", "variant": "dcls", "seed": s, "test_acc": 0.5, "near acc": 0.9, "far acc": far,
             "gradcam": 0.1, "gradcam far": 0.2 + far} for s, far in ((0, 0.2), (1, 0.4))]
    (entry,) = aggregate(rows)
    assert entry["far acc"] == pytest.approx(0.3) and entry["far acc std"] == pytest.approx(math.sqrt(0.02))
    assert entry["gradcam far"] == pytest.approx(0.5) and entry["mid acc"] is None
    table = span_table([entry])
    assert "far: accuracy (%)" in table and "| 30.0 ± 14.1 |" in table and "| 50.0 ± 14.1 |" in table


def test_claim_counts_count_families_and_runs_whose_score_rose():
    rows = []
    for family, base, dcls in (("resnet", (0.1, 0.2), (0.3, 0.1)), ("convnext", (0.5, 0.5), (0.4, 0.45))):
        for seed in (0, 1):
            rows.append({"family": family, "variant": "baseline", "seed": seed, "gradcam": base[seed],
                         "threshold-gradcam": 0.0})
            rows.append({"family": family, "variant": "dcls", "seed": seed, "gradcam": dcls[seed],
                         "threshold-gradcam": 0.1})
    counts = {c["explainer"]: c for c in claim_counts(rows)}
    # resnet: mean 0.2 > 0.15 rose (one run of two); convnext fell in both runs
    assert (counts["gradcam"]["families rose"], counts["gradcam"]["families"]) == (1, 2)
    assert (counts["gradcam"]["runs rose"], counts["gradcam"]["runs"]) == (1, 4)
    assert counts["threshold-gradcam"]["families rose"] == 2 and counts["threshold-gradcam"]["runs rose"] == 4


def test_a_family_override_applies_to_every_variant_and_seed_of_that_family_only():
    plan = StudyPlan("smoke", families=("resnet", "convnext"), seeds=(0, 1), family_overrides={"convnext": {"epochs": 5}},
                     train_overrides={"epochs": 2, "lr": 1e-3})
    epochs = {(c.family, c.variant, c.seed): c.epochs for c in plan.configs()}
    assert {e for (f, _, _), e in epochs.items() if f == "convnext"} == {5}
    assert {e for (f, _, _), e in epochs.items() if f == "resnet"} == {2}
    assert {c.lr for c in plan.configs()} == {1e-3}  # the plan-wide override still holds for every family
    with pytest.raises(ValueError, match="family_overrides names families the plan does not train: \\['fastvit'\\]"):
        StudyPlan("smoke", families=("resnet",), family_overrides={"fastvit": {"epochs": 1}})


TINY = StudyPlan("smoke", families=("resnet",), variants=("baseline", "dcls"), seeds=(0, 1), test_size=8,
                 train_overrides={"epochs": 1})


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    folder = tmp_path_factory.mktemp("study")
    return folder, run_study(out_dir=folder, plan=TINY, device="cpu", progress=False, workers=2)


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
    assert (tmp_path / "study.md").read_text().strip() == results.report()

    checkpoint = results.run_dir("resnet", "dcls", 1) / "checkpoint.pt"
    before = checkpoint.stat().st_mtime_ns
    again = run_study(out_dir=tmp_path, plan=plan, device="cpu", progress=False, workers=1)
    assert checkpoint.stat().st_mtime_ns == before, "a finished run is reloaded, not retrained"
    assert again.rows == results.rows, "two worker processes give the rows one process gives, in the plan's order"
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


def test_worker_count_is_checked(tmp_path):
    with pytest.raises(ValueError, match="workers"):
        run_study(out_dir=tmp_path, plan=TINY, device="cpu", progress=False, workers=0)


def test_figures_and_tables_of_a_study(tiny_study):
    import matplotlib

    matplotlib.use("Agg")
    from dcls_lib.chapters.study_plots import accuracy_rows, alignment_bars, position_maps, spread_over_training, training_curves

    _, results = tiny_study
    curves = training_curves(results)
    assert len(curves.axes) == 2 and len(curves.axes[1].lines) == 4 + 1  # 4 runs and the chance line
    rows = accuracy_rows(results)
    assert [(r["variant"], r["seed"]) for r in rows] == [("baseline", 0), ("dcls", 0), ("baseline", 1), ("dcls", 1)]
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
    assert (row["seeds"], row["images"]) == (2, 8)
    assert float(row["mean difference"]) == pytest.approx(expected / 0.65753 * 100, abs=0.06)
    low, high = (float(x) for x in row["95% interval"].strip("[]").split(","))
    assert low <= float(row["mean difference"]) <= high
    assert len(score_distributions(results).axes) == 2

    images, labels, human = SynthClick("test", image_size=results.plan.configs()[0].image_size, seed=0, size=3).batch()
    fig = example_heatmaps(results, images, labels, human, "threshold-gradcam")
    assert len(fig.axes) == 3 * (2 + 2), "rows: image, human map and the two seed-0 models; a column per image"
    titles = [ax.get_title() for ax in fig.axes[6:]]
    assert all(t.startswith("ρ =") or t == "constant map" for t in titles)


def test_paired_differences_resample_seeds_and_images(tiny_study):
    _, results = tiny_study
    (row,) = study_paired_differences(results, "threshold-gradcam", resamples=4000)
    base = [results_rho(results.run_dir("resnet", "baseline", s), "threshold-gradcam") for s in (0, 1)]
    dcls = [results_rho(results.run_dir("resnet", "dcls", s), "threshold-gradcam") for s in (0, 1)]
    d = np.array([[dcls[s][i] - base[s][i] for i in sorted(base[s], key=int)] for s in (0, 1)]) / 0.65753
    assert row["mean difference"] == pytest.approx(d.mean())
    assert row["low"] <= d.mean() <= row["high"]
    # resampling seeds too: the interval is at least as wide as resampling the pooled images alone
    pooled = np.random.default_rng(1).choice(d.ravel(), size=(4000, d.size)).mean(1)
    width = np.subtract(*np.percentile(pooled, [97.5, 2.5]))
    assert row["high"] - row["low"] >= 0.8 * width
    assert row["dcls higher on"] == pytest.approx((d > 0).mean())


def test_study_rows_report_accuracy_per_span_and_the_report_has_every_table(tiny_study):
    _, results = tiny_study
    for row in results.rows:
        assert {"span acc", "orientation acc", "near acc", "mid acc"} <= set(row)
        assert "gradcam near" in row and "threshold-gradcam mid" in row  # the smoke test split: near and mid items
    report = results.report()
    assert results.table() in report and "near: accuracy (%)" in report and "families rose" in report
    assert "Paired per-image differences" in report


def test_one_part_control_at_smoke_size(tiny_study):
    from dcls_lib.controls import one_part_control, study_control

    _, results = tiny_study
    run = results.load_models(seed=0, device="cpu")["resnet", "dcls"]
    test = SynthClick("test", 64, seed=0, size=24)
    rows = one_part_control(run.model, test, device="cpu", bound_count=200)
    assert [r["span"] for r in rows] == ["near", "mid", "far"] and sum(r["images"] for r in rows) == 24
    for r in rows:
        assert 0 <= r["both rings"] <= 1 and 0 <= r["one ring"] <= 1 and 0 <= r["one ring's place (bound)"] <= 1
    images, labels, _ = test.batch()
    _, accuracy, _ = evaluate_accuracy(run.model, (images * 255).round().to(torch.uint8), labels, "cpu")
    assert sum(r["both rings"] * r["images"] for r in rows) / 24 == pytest.approx(accuracy)
    rows = study_control(results, seed=1, device="cpu", size=12)
    assert {(r["family"], r["variant"]) for r in rows} == {("resnet", "baseline"), ("resnet", "dcls")}
    with pytest.raises(ValueError, match="transform"):
        one_part_control(run.model, SynthClick("test", 64, size=4, transform=lambda x: x))


def test_control_text_gives_each_spans_range_and_names_the_runs_above_one_class():
    from dcls_lib.controls import control_text

    def row(variant, span, one):
        return {"family": "resnet", "variant": variant, "seed": 0, "span": span, "images": 80, "both rings": 1.0,
                "one ring": one, "one ring's place (bound)": 0.6 if span == "far" else 0.05, "chance": 1 / 12}

    rows = [row("baseline", "near", 0.0), row("dcls", "near", 0.1), row("baseline", "far", 0.5), row("dcls", "far", 0.2)]
    text = control_text(rows)
    assert "near pairs 0% to 10% (the ring's place alone: at most 5%)" in text
    assert "far pairs 20% to 50% (the ring's place alone: at most 60%)" in text
    assert text.endswith("(25%) with one ring: resnet baseline on far pairs (50%).")
    assert "No run does better" in control_text(rows[:2])
    with pytest.raises(ValueError, match="at least one run"):
        control_text([])


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


def test_the_claim_is_counted_over_families_that_learned(tiny_study):
    from dcls_lib.chapters.study_plots import accuracy_text, finding_text, learned_claim_counts, learned_rows

    _, results = tiny_study
    learned = [dict(r, family="convnext", test_acc=0.9) for r in results.rows]
    failed = [dict(r, test_acc=0.05 if r["variant"] == "dcls" else 0.9) for r in results.rows]
    mixed = type(results)(results.plan, learned + failed, results.out_dir, results.info)
    assert {r["family"] for r in learned_rows(mixed)} == {"convnext"}, "a family with a run at chance is left out"
    assert {c["families"] for c in learned_claim_counts(mixed)} == {1}
    text = finding_text(mixed)
    assert "2 of 8 runs stayed below twice chance" in text and "resnet-dcls-seed0" in text and "resnet is left out" in text
    all_learned = type(results)(results.plan, learned, results.out_dir, results.info)
    assert finding_text(all_learned).endswith("every run learned the task (accuracy above twice chance).")
    mean = 100 * (results.rows[0]["test_acc"] + results.rows[2]["test_acc"]) / 2
    assert f"resnet: baseline {mean:.0f}%" in accuracy_text(results)
