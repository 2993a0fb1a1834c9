"""Training in smoke mode: learned delays beat the no-delay baseline; logs and the command line."""

import json

import pytest
import torch

from dcls_lib.recipe import SigmaSchedule
from dcls_lib.snn.train import delay_ablation, delay_profile_config, delay_task_data, main, run_delay_study, train_run


def test_learned_delays_beat_no_delays_on_the_tiny_task(tmp_path):
    config = delay_profile_config("smoke")
    log = tmp_path / "runs" / "study.json"
    study = run_delay_study(config, runs=[("learned", "recipe"), ("none", "recipe")], device="cpu", log_path=log,
                      progress=False, profile="smoke")
    learned, none = study["runs"]
    chance = 1 / config.task.n_classes
    assert none["test_acc"] == pytest.approx(chance, abs=0.05), "without delays the task is at chance"
    assert learned["test_acc"] >= none["test_acc"] + 0.3, (learned["test_acc"], none["test_acc"])

    schedule = SigmaSchedule.exponential(config.max_delay, config.epochs)
    sigmas = [h["sigma"] for h in learned["history"]]
    assert sigmas == pytest.approx([schedule(e) for e in range(config.epochs)])
    assert sigmas[0] == config.max_delay // 2 and sigmas[-1] == pytest.approx(0.23)
    assert learned["delays_final"] != learned["delays_initial"], "the delays moved"
    assert all(0 <= d < config.max_delay for row in learned["delays_final"][0] for d in row)

    model = learned["model"]
    before = [p.detach().clone() for p in model.parameters()]
    ablation = delay_ablation(model, delay_task_data(config).test, "cpu")
    assert ablation["learned"] == learned["test_acc"]
    assert ablation["zero"] == pytest.approx(chance, abs=0.05), "the same weights without their delays are at chance"
    assert ablation["shuffled"] < learned["test_acc"] - 0.3
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters())), "the ablation restores the delays"

    logged = json.loads(log.read_text())
    assert [r["test_acc"] for r in logged["runs"]] == [learned["test_acc"], none["test_acc"]]
    assert "profile smoke" in logged["label"] and "delay task" in logged["label"]
    assert "model" not in logged["runs"][0]
    assert [p.name for p in log.parent.iterdir()] == ["study.json"], "written atomically, no temporary file left"


def test_command_line_writes_a_log(tmp_path, capsys):
    out = tmp_path / "cli.json"
    assert main(["--profile", "smoke", "--runs", "random", "--epochs", "2", "--out", str(out), "--no-progress",
                 "--device", "cpu"]) == 0
    logged = json.loads(out.read_text())
    assert [(r["delays"], len(r["history"])) for r in logged["runs"]] == [("random", 2)]
    assert "random delays" in capsys.readouterr().out


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="sigma schedule"):
        train_run(delay_profile_config("smoke"), "learned", "sometimes", device="cpu", progress=False)


def test_results_rows_have_a_row_per_run():
    from dcls_lib.chapters.delay_plots import ablation_rows, results_rows
    from dcls_lib.tables import table_text

    runs = [{"delays": "none", "test_acc": 0.5, "train_seconds": 90, "history": [{"train_acc": 0.61}]},
            {"delays": "learned", "sigma_schedule": "recipe", "test_acc": 0.875, "train_seconds": 30,
             "history": [{"train_acc": 0.9, "test_acc_interpolated": 0.8}]}]
    lines = table_text(results_rows(runs)).splitlines()
    assert lines[0].startswith("| synapses | test accuracy (integer delays) |") and lines[1] == "|---|---|---|---|---|"
    assert lines[2] == "| no delays | 0.500 | - | 0.610 | 1.5 |"
    assert lines[3] == "| learned delays (sigma recipe) | 0.875 | 0.800 | 0.900 | 0.5 |"
    ablation = ablation_rows({"learned": 0.9, "shuffled": 0.4, "zero": 0.3})
    assert [row["the learned network's delays"] for row in ablation] == ["as learned", "shuffled among synapses", "all zero"]
    assert ablation[1]["test accuracy"] == "0.400"
