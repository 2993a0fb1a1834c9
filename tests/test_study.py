"""The study runner: trains and scores each run once, aggregates over seeds, writes what the book reads."""

import json
import math

import pytest

from dcls_lib.study import PLANS, StudyPlan, aggregate, load_study, markdown_table, run_study


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


def test_run_study_trains_scores_and_reloads(tmp_path):
    plan = StudyPlan("smoke", families=("resnet",), variants=("baseline", "dcls"), seeds=(0, 1), test_size=8,
                     train_overrides={"epochs": 1})
    results = run_study(out_dir=tmp_path, plan=plan, device="cpu", progress=False)
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


def test_unknown_profile_is_named():
    with pytest.raises(ValueError, match="profile"):
        run_study("laptop")
