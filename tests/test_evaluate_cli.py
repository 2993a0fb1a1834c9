"""The evaluation command as a user runs it: the real CLI (no fake model loading) on checkpoint files
in the authors' own containers, ClickMe shards written here, and every promise of the README."""

import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dcls_lib import evaluate
from dcls_lib.data.clickme import write_clickme_shard
from dcls_lib.data.tfrecords import index_tfrecord

from authors_layouts import (
    convnext_layout,
    fastvit_sa_layout,
    make_state_dict,
    metaformer_s18_layout,
    resnet50_layout,
    timm_training_checkpoint,
)
from test_evaluate import shard_samples

ROOT = Path(__file__).resolve().parents[1]
T = ((3, 3, 9, 3), (96, 192, 384, 768))
FAST = ["--limit", "1", "--batch-size", "1", "--image-size", "64", "--no-progress"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clickme")
    write_clickme_shard(folder / "val-0.tfrecords", shard_samples(3, seed=0))
    return folder


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Checkpoint files as the authors' code saved them (random values)."""
    folder = tmp_path_factory.mktemp("checkpoints")

    def save(name, obj):
        torch.save(obj, folder / name)
        return folder / name

    resnet = {f"module.{k}": v for k, v in make_state_dict(resnet50_layout(taps=5), seed=2, positions_limit=3).items()}
    return {
        "convnext_tiny_dcls": save("convnext_dcls_tiny_1k_224_ema.pth", {"model": make_state_dict(convnext_layout(*T, taps=34), seed=1)}),
        "resnet50_dcls": save("resnet_dcls_kernel_5_model_best.pth.tar", timm_training_checkpoint(resnet)),  # DDP's module. prefix
        "caformer_s18_dcls": save("caformer.pth.tar", timm_training_checkpoint(make_state_dict(metaformer_s18_layout("caformer", taps=34), seed=3))),
        "fastvit_sa24_dcls": save("fastvit.pth.tar", timm_training_checkpoint(make_state_dict(fastvit_sa_layout((4, 4, 12, 4), taps=34), seed=4))),
        "convnext_base_width": save("base_width.pth", {"model": make_state_dict(convnext_layout((1, 1, 1, 1), (128, 256, 512, 1024), taps=40))}),
    }


def cli(argv, capsys):
    code = evaluate.cli([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def settings_line(path):
    return json.loads(Path(path).read_text().splitlines()[0])


def image_lines(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if '"type": "image"' in line]


def test_readme_commands_run_as_printed(shards, files, tmp_path, capsys, monkeypatch):
    """Each `python -m dcls_lib.evaluate` line of the README, run in a folder holding the files it names:
    the first as a new process (the module's entry point), the second in this one (a SynthClick run
    trained here is scored at the size it was trained at)."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("**Evaluating a model**"):]
    block = section[section.index("```bash") + len("```bash"):]
    commands = [shlex.split(line) for line in block[: block.index("```")].splitlines() if line.strip()]
    assert len(commands) == 2 and all(c[:3] == ["python", "-m", "dcls_lib.evaluate"] for c in commands)
    os.symlink(files["convnext_tiny_dcls"], tmp_path / "convnext_dcls_tiny_1k_224_ema.pth")
    os.symlink(shards, tmp_path / "clickme-val")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, *commands[0][1:]], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "3 evaluated, 3 scored" in done.stdout and "top-10% Dice" in done.stdout
    digest = hashlib.sha256(files["convnext_tiny_dcls"].read_bytes()).hexdigest()
    results = tmp_path / f"runs/alignment/convnext_tiny_dcls_convnext_dcls_tiny_1k_224_ema-{digest[:8]}_threshold-gradcam_clickme.jsonl"
    assert settings_line(results)["checkpoint_sha256"] == digest and len(image_lines(results)) == 3

    from dcls_lib.train import profile_config, train

    monkeypatch.chdir(tmp_path)
    train(profile_config("smoke", family="resnet", variant="baseline", epochs=1), tmp_path / "runs/my_resnet_dcls", progress=False)
    code, out, err = cli(commands[1][3:], capsys)
    assert code == 0, err
    assert "100 evaluated" in out and "synthclick:test:64px" in out


@pytest.mark.parametrize("name", ["resnet50_dcls", "caformer_s18_dcls", "fastvit_sa24_dcls"])
def test_authors_files_of_each_family_load_through_the_cli(name, shards, files, tmp_path, capsys):
    results = tmp_path / "r.jsonl"
    code, out, err = cli(["--model", name, "--checkpoint", files[name], "--data", f"clickme:{shards}",
                          "--results", results, *FAST], capsys)
    assert code == 0, err
    assert "1 evaluated, 1 scored" in out
    assert settings_line(results)["checkpoint_sha256"] == hashlib.sha256(files[name].read_bytes()).hexdigest()


@pytest.mark.parametrize("model", ["convnext_tiny_dcls", "convnext_tiny"])
def test_a_convnext_file_of_another_width_is_refused_with_its_keys(model, shards, files, capsys):
    code, _, err = cli(["--model", model, "--checkpoint", files["convnext_base_width"], "--data", f"clickme:{shards}", *FAST], capsys)
    assert code == 2 and "Traceback" not in err
    first = err.splitlines()[0]
    assert first.startswith(f"error: checkpoint {files['convnext_base_width']} does not fit model {model} (ConvNeXt)")
    assert "missing" in first and "mis-shaped" in first
    assert "stages.0.blocks.0.mlp.fc1.weight: checkpoint (512, 128), model (384, 96)" in err
    assert ("unexpected" in first) == (model == "convnext_tiny")  # the plain model has no positions P


def test_a_file_of_another_family_is_refused(shards, files, capsys):
    code, _, err = cli(["--model", "fastvit_sa24_dcls", "--checkpoint", files["caformer_s18_dcls"], "--data", f"clickme:{shards}", *FAST], capsys)
    assert code == 2 and re.search(r"does not fit model fastvit_sa24_dcls \(FastVit\): \d+ missing, \d+ unexpected", err.splitlines()[0])
    code, _, err = cli(["--model", "convnext_tiny_dcls", "--checkpoint", files["resnet50_dcls"], "--data", f"clickme:{shards}", *FAST], capsys)
    assert code == 2 and len(err.splitlines()) == 1  # ConvNeXt files hold their weights under "model": the container is named
    assert f"error: checkpoint {files['resnet50_dcls']} has none of the entries ['model']" in err and "'state_dict_ema'" in err


# --- the command as a tool (a small timm model, random or saved weights) -----------------------------


SMALL = ["--model", "resnet10t", "--image-size", "128", "--batch-size", "1", "--no-progress"]


def test_errors_are_one_line_with_status_2_and_a_traceback_with_debug(shards, tmp_path, capsys):
    missing = tmp_path / "nowhere.pth"
    code, _, err = cli([*SMALL, "--checkpoint", missing, "--data", "clickme:/no/such/folder"], capsys)
    assert code == 2 and err == f"error: checkpoint file {missing} does not exist (--debug shows the traceback)\n"  # before the data
    code, _, err = cli([*SMALL, "--data", f"clickme:{shards}"], capsys)
    assert code == 2 and err.startswith("error: give either --checkpoint FILE or --random-init") and len(err.splitlines()) == 1
    code, _, err = cli(["--model", "no_such_net", "--random-init", "--data", f"clickme:{shards}", "--no-progress"], capsys)
    assert code == 2 and err.startswith("error: --model 'no_such_net'") and len(err.splitlines()) == 1
    with pytest.raises(FileNotFoundError):
        evaluate.cli([*SMALL, "--checkpoint", str(missing), "--data", f"clickme:{shards}", "--debug"])
    with pytest.raises(SystemExit) as usage:
        evaluate.cli([*SMALL, "--random-init", "--limit", "0"])
    assert usage.value.code == 2


def test_status_lines_say_what_is_happening(shards, tmp_path, capsys):
    code, _, err = cli([*SMALL[:-1], "--random-init", "--data", f"clickme:{shards}", "--results", tmp_path / "r.jsonl", "--limit", "1"], capsys)
    assert code == 0
    assert f"reading clickme:{shards} ..." in err and "3 images; loading resnet10t ..." in err and "indexing shards" in err


def test_random_init_is_seeded_and_resuming_refuses_another_model(shards, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = [*SMALL, "--random-init", "--data", f"clickme:{shards}", "--limit", "2"]
    assert cli([*base, "--results", "a.jsonl"], capsys)[0] == 0
    assert cli([*base, "--results", "b.jsonl"], capsys)[0] == 0
    assert [e["spearman"] for e in image_lines("a.jsonl")] == [e["spearman"] for e in image_lines("b.jsonl")]
    code, _, err = cli([*base, "--results", "a.jsonl", "--seed", "1"], capsys)
    assert code == 2 and "seed: file 0 vs now 1" in err
    assert cli([*base, "--seed", "1"], capsys)[0] == 0  # the default name keeps seeds apart
    assert (tmp_path / "runs/alignment/resnet10t_random-seed1_threshold-gradcam_clickme.jsonl").is_file()


def test_checkpoint_digest_is_recorded_and_another_file_is_refused(shards, tmp_path, capsys, monkeypatch):
    import timm

    monkeypatch.chdir(tmp_path)
    for seed in (0, 1):
        torch.manual_seed(seed)
        torch.save(timm.create_model("resnet10t").state_dict(), tmp_path / f"w{seed}.pth")
    base = [*SMALL, "--data", f"clickme:{shards}", "--limit", "1"]
    assert cli([*base, "--checkpoint", "w0.pth", "--results", "r.jsonl"], capsys)[0] == 0
    code, _, err = cli([*base, "--checkpoint", "w1.pth", "--results", "r.jsonl"], capsys)
    assert code == 2 and "checkpoint_sha256: file" in err and "use another --results path" in err
    assert cli([*base, "--checkpoint", "w0.pth"], capsys)[0] == 0
    assert cli([*base, "--checkpoint", "w1.pth"], capsys)[0] == 0  # default names differ by the digest
    names = sorted(p.name for p in (tmp_path / "runs/alignment").glob("*.jsonl"))
    digests = [hashlib.sha256((tmp_path / f"w{s}.pth").read_bytes()).hexdigest()[:8] for s in (0, 1)]
    assert names == sorted(f"resnet10t_w{s}-{d}_threshold-gradcam_clickme.jsonl" for s, d in zip((0, 1), digests))


def test_ctrl_c_says_how_to_resume_and_the_same_command_resumes(shards, tmp_path, capsys, monkeypatch):
    argv = [*SMALL, "--random-init", "--data", f"clickme:{shards}", "--results", tmp_path / "r.jsonl"]
    score = evaluate.BatchScorer.score
    calls = []

    def interrupted_second_batch(self, *args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return score(self, *args)

    monkeypatch.setattr(evaluate.BatchScorer, "score", interrupted_second_batch)
    code, _, err = cli(argv, capsys)
    assert code == 130 and "run the same command again to resume" in err
    assert len(image_lines(tmp_path / "r.jsonl")) == 1
    monkeypatch.setattr(evaluate.BatchScorer, "score", score)
    code, out, _ = cli(argv, capsys)
    assert code == 0 and "3 evaluated" in out and re.search(r"this run\s+2 images", out)


def test_damaged_records_through_the_cli(shards, tmp_path, capsys):
    folder = tmp_path / "damaged"
    folder.mkdir()
    data = bytearray((shards / "val-0.tfrecords").read_bytes())
    data[index_tfrecord(shards / "val-0.tfrecords")[1][0] + 12 + 40] ^= 0xFF
    (folder / "val-0.tfrecords").write_bytes(bytes(data))
    argv = [*SMALL, "--random-init", "--data", f"clickme:{folder}", "--results", tmp_path / "r.jsonl"]
    code, _, err = cli(argv, capsys)
    assert code == 2 and "val-0.tfrecords: record 1: data CRC mismatch" in err and "--skip-damaged" in err
    assert len(image_lines(tmp_path / "r.jsonl")) == 1
    code, out, _ = cli([*argv, "--skip-damaged"], capsys)
    assert code == 0 and "2 evaluated, 2 scored" in out and "1 skipped" in out and "val-0.tfrecords#1: " in out


def test_study_quirks_switch(shards, tmp_path, capsys):
    base = [*SMALL, "--random-init", "--limit", "2"]
    code, out, _ = cli([*base, "--data", f"clickme:{shards}", "--study-quirks", "--results", tmp_path / "q.jsonl"], capsys)
    assert code == 0 and "(counted as skip)" in out and settings_line(tmp_path / "q.jsonl")["study_quirks"] is True
    assert cli([*base, "--data", f"clickme:{shards}", "--results", tmp_path / "c.jsonl"], capsys)[0] == 0
    quirky, clean = image_lines(tmp_path / "q.jsonl"), image_lines(tmp_path / "c.jsonl")
    assert [e["spearman"] for e in quirky] != [e["spearman"] for e in clean]  # the uint8 cast changes the inputs
    code, _, err = cli([*base, "--data", f"clickme:{shards}", "--study-quirks", "--constant-maps", "zero"], capsys)
    assert code == 2 and "cannot be combined" in err
    code, _, err = cli([*base, "--data", "synthclick", "--study-quirks"], capsys)
    assert code == 2 and "--data clickme only" in err


def test_metrics_add_randomisation_and_road_on_a_sample(shards, tmp_path, capsys):
    results = tmp_path / "r.jsonl"
    base = [*SMALL, "--random-init", "--data", f"clickme:{shards}", "--results", results, "--sanity-images", "1"]
    code, out, err = cli([*base, "--limit", "2", "--metrics", "alignment,randomisation,road"], capsys)
    assert code == 0, err
    assert "2 evaluated" in out and "Randomisation test" in out and "first 1 image)" in out and "ROAD" in out
    saved = json.loads(results.with_suffix(".sanity.json").read_text())
    assert saved["images"] == 1 and saved["settings"]["model"] == "resnet10t"
    layers = [row["layer"] for row in saved["randomisation"] if row["mode"] == "cascading"]
    assert layers[0] == "fc" and len(layers) == len(set(layers)) > 3  # top down, one row per layer
    assert len(saved["road"]["rows"]) == 9 and "mean" in saved["road"]["combined"]

    # the checks alone: no alignment results are written or printed
    other = tmp_path / "only.jsonl"
    code, out, _ = cli([*SMALL, "--random-init", "--data", f"clickme:{shards}", "--results", other,
                        "--metrics", "randomisation", "--sanity-images", "1"], capsys)
    assert code == 0 and "Randomisation test" in out and "ROAD" not in out and "evaluated" not in out
    assert not other.exists() and other.with_suffix(".sanity.json").is_file()


@pytest.mark.parametrize("text", ["alignment,alignment", "gradients", ""])
def test_unknown_metrics_are_refused_in_one_line(text, capsys):
    with pytest.raises(SystemExit) as stop:
        evaluate.cli([*SMALL, "--random-init", "--metrics", text])
    assert stop.value.code == 2 and "--metrics" in capsys.readouterr().err
