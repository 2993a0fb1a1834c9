"""Training: the DCLS recipe's pieces, resumable runs, the command line."""

import dataclasses
import json

import pytest
import torch

import dcls_lib.train as training
from dcls_lib.layers import position_limits
from dcls_lib.models.small import SMALL_FAMILIES, VARIANTS, SubsampledPointwiseConv2d, create_small_model
from dcls_lib.recipe import SigmaSchedule, dcls_layers, param_groups, position_parameters, repulsion_loss
from dcls_lib.train import (
    TrainConfig,
    load_positions,
    load_run,
    profile_config,
    run_sigma_schedule,
    train,
    warmup_cosine,
)


@pytest.fixture(scope="module")
def dcls_convnext():
    torch.manual_seed(0)
    return create_small_model("convnext", "dcls", width=8)


def test_param_groups_follow_the_published_recipe(dcls_convnext):
    groups = {g["name"]: g for g in param_groups(dcls_convnext, lr=1e-3, weight_decay=0.05, position_lr_scale=5.0)}
    positions = {id(p) for p in position_parameters(dcls_convnext).values()}
    assert {id(p) for p in groups["positions"]["params"]} == positions
    assert groups["positions"]["lr"] == pytest.approx(5e-3) and groups["positions"]["weight_decay"] == 0
    assert all(p.dim() <= 1 for p in groups["no_decay"]["params"]) and groups["no_decay"]["weight_decay"] == 0
    assert groups["decay"]["weight_decay"] == 0.05
    grouped = [id(p) for g in groups.values() for p in g["params"]]
    assert sorted(grouped) == sorted({id(p) for p in dcls_convnext.parameters()}), "every parameter exactly once"


def test_scheduled_sigma_is_left_out_of_the_optimiser():
    model = create_small_model("convnext", "dcls", width=8, version="gauss")
    sigmas = {id(p) for n, p in position_parameters(model).items() if n.endswith(".SIG")}
    assert sigmas
    groups = param_groups(model, 1e-3, 0.05, 5.0, learn_sigma=False)
    assert not sigmas & {id(p) for g in groups for p in g["params"]}


def test_positions_are_shared_per_stage_and_clamped_after_each_step():
    config = profile_config("smoke", family="convnext", variant="dcls", lr=50.0, warmup_steps=1, epochs=1)
    run = train(config, progress=False)
    names = list(position_parameters(run.model))
    assert len(names) == 4, f"one P per stage of the 4-stage model, got {names}"
    for layer in dcls_layers(run.model):
        for d, size in enumerate(layer.dilated_kernel_size):
            lo, hi = position_limits(size)
            assert layer.P[d].min() >= lo and layer.P[d].max() <= hi


def test_repulsion_loss_pushes_coinciding_taps_apart():
    model = create_small_model("convnext", "dcls", width=8)
    positions = [p for n, p in position_parameters(model).items() if n.endswith(".P")]
    with torch.no_grad():
        for P in positions:  # taps on a grid of spacing 2: no pair closer than 1
            taps = torch.arange(P.shape[-1])
            P[0] = (2 * (taps // 6) - 5).float()
            P[1] = (2 * (taps % 6) - 5).float()
    P = positions[0]
    assert repulsion_loss(model) == 0
    with torch.no_grad():
        P[:, :, :, 1] = P[:, :, :, 0] + 0.1  # two taps almost on top of each other
    loss = repulsion_loss(model)
    assert loss > 0
    loss.backward()
    push = P.grad[:, :, :, 1] - P.grad[:, :, :, 0]  # descent moves tap 1 by -grad: away from tap 0
    assert (push < 0).all()


def test_linear_sigma_schedule_decays_over_the_first_quarter():
    config = profile_config("smoke", epochs=8, dilated_kernel_size=17, sigma="linear", version="gauss")
    model = create_small_model("convnext", "dcls", width=8, dilated_kernel_size=17, version="gauss")
    values = [run_sigma_schedule(config, model)(e) for e in range(8)]
    assert values[0] == 8 and values[1] == pytest.approx((8 + 0.23) / 2) and values[2:] == [0.23] * 6


def test_exponential_sigma_schedule_is_the_theses():
    values = [SigmaSchedule.exponential(17, 8)(e) for e in range(4)]
    assert values[0] == 8 and values[1] == pytest.approx((8 * 0.23) ** 0.5) and values[2:] == [0.23] * 2


def test_sigma_schedule_starts_from_the_family_default_kernel_size():
    """ResNet's default dilated kernel is 7 (ConvNeXt's 17): a ResNet run starts SIG at 3, not 8."""
    config = profile_config("smoke", family="resnet", epochs=8, sigma="exponential", version="gauss")
    model = create_small_model("resnet", "dcls", width=8, version="gauss")
    assert run_sigma_schedule(config, model)(0) == 3
    assert run_sigma_schedule(profile_config("smoke", family="resnet"), model) is None, "learned SIG has no schedule"


def test_warmup_then_cosine():
    f = warmup_cosine(10, 110)
    assert f(0) == pytest.approx(0.1) and f(9) == 1.0
    assert f(60) == pytest.approx(0.5) and f(110) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("family", sorted(SMALL_FAMILIES))
def test_every_small_family_member_builds_in_every_variant(family):
    counts = {}
    for variant in VARIANTS:
        model = create_small_model(family, variant, width=8)
        counts[variant] = sum(p.numel() for p in model.parameters())
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 12)
    assert counts["dilated"] == counts["baseline"]
    assert bool(dcls_layers(create_small_model(family, "dcls", width=8)))


def test_subsampled_pointwise_convolution_equals_the_strided_one_forward_and_backward():
    torch.manual_seed(0)
    strided = torch.nn.Conv2d(8, 16, 1, stride=2)
    subsampled = SubsampledPointwiseConv2d(8, 16, 1, stride=2)
    subsampled.load_state_dict(strided.state_dict())
    x = torch.randn(2, 8, 15, 14, requires_grad=True)  # odd and even sides: the last row is read or not alike
    outputs = [conv(x) for conv in (strided, subsampled)]
    torch.testing.assert_close(outputs[1], outputs[0])
    grads = [torch.autograd.grad(out.square().sum(), (x, conv.weight)) for out, conv in zip(outputs, (strided, subsampled))]
    for ours, theirs in zip(grads[1], grads[0]):
        torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("family", sorted(SMALL_FAMILIES))
def test_every_small_family_trains_channels_last_on_the_cpu(family):
    """torch 2.14.1's oneDNN aborts the process in the backward of a channels-last 1x1 convolution at
    stride 2 on 56x56 maps; the small models compute those on a subsampled input instead."""
    torch.manual_seed(0)
    model = create_small_model(family, "baseline", width=8).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 112, 112).contiguous(memory_format=torch.channels_last)
    model(x).logsumexp(1).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


def test_channels_last_training_computes_what_contiguous_training_does():
    """The memory format is a speed setting: the same run in either format ends with the same weights."""
    config = profile_config("smoke", family="resnet", variant="dcls", epochs=1, curve_points=1)
    runs = [train(dataclasses.replace(config, channels_last=c), progress=False) for c in (True, False)]
    assert next(runs[0].model.parameters()).is_contiguous(memory_format=torch.channels_last)
    for key, value in runs[1].model.state_dict().items():
        torch.testing.assert_close(runs[0].model.state_dict()[key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_bad_configurations_name_the_field():
    with pytest.raises(ValueError, match="family"):
        TrainConfig(family="vgg")
    with pytest.raises(ValueError, match="variant"):
        TrainConfig(variant="deformable")
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="profile"):
        profile_config("laptop")


def test_a_run_resumes_after_an_interruption_and_ends_where_an_uninterrupted_one_does(tmp_path, monkeypatch):
    config = profile_config("smoke", family="convnext", variant="dcls", epochs=2, curve_points=1)
    whole = train(config, tmp_path / "whole", progress=False)

    real = training.evaluate_accuracy
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # the second epoch never gets saved
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "evaluate_accuracy", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "cut", progress=False)
    assert [e["epoch"] for e in json.loads((tmp_path / "cut" / "log.json").read_text())["epochs"]] == [1]
    monkeypatch.setattr(training, "evaluate_accuracy", real)
    resumed = train(config, tmp_path / "cut", progress=False)

    assert [e["epoch"] for e in resumed.log["epochs"]] == [1, 2]
    for key, value in whole.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, msg=key)
    assert not list((tmp_path / "cut").glob("*.tmp")), "no half-written file is left behind"

    before = (tmp_path / "cut" / "checkpoint.pt").stat().st_mtime_ns
    again = train(config, tmp_path / "cut", progress=False)  # finished: loaded, not retrained
    assert (tmp_path / "cut" / "checkpoint.pt").stat().st_mtime_ns == before
    assert again.log == resumed.log
    loaded = load_run(tmp_path / "cut")
    assert loaded.config == config and loaded.log == resumed.log
    positions = load_positions(tmp_path / "cut")
    assert list(positions) == ["init", "epoch 1", "epoch 2"]
    moved = [not torch.equal(positions["init"][n], positions["epoch 2"][n]) for n in positions["init"]]
    assert any(moved), "training moves the positions"


def test_a_finished_run_is_loaded_without_generating_its_data(tmp_path, monkeypatch):
    config = profile_config("smoke", family="resnet", variant="baseline", epochs=1)
    first = train(config, tmp_path, progress=False)

    def no_data(*args, **kwargs):
        raise AssertionError("a finished run generated its training data again")

    monkeypatch.setattr(training, "synthclick_tensors", no_data)
    again = train(config, tmp_path, progress=False)
    assert again.log == first.log and not again.model.training


def test_the_training_curve_has_points_within_each_epoch():
    config = profile_config("smoke", family="resnet", variant="baseline", train_size=64, batch_size=8, epochs=2,
                            curve_points=4, curve_val_size=8)
    log = train(config, progress=False).log
    assert [p["epoch"] for p in log["curve"]] == [0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0]
    ends = [p for p in log["curve"] if float(p["epoch"]).is_integer()]
    assert [p["val_acc"] for p in ends] == [e["val_acc"] for e in log["epochs"]], "an epoch ends on the full set"
    assert all(0 <= p["train_acc"] <= 1 and p["train_loss"] > 0 for p in log["curve"])
    assert training.curve_step_numbers(3, 10) == [1, 2, 3], "never more points than steps"


def test_a_folder_of_another_configuration_is_refused(tmp_path):
    train(profile_config("smoke", family="convnext", variant="baseline", epochs=1), tmp_path, progress=False)
    with pytest.raises(ValueError, match="another configuration"):
        train(profile_config("smoke", family="convnext", variant="baseline", epochs=1, lr=0.1), tmp_path, progress=False)


def test_training_learns_the_training_images():
    """Memorising a few images is the least a working loop does: training loss falls epoch by epoch."""
    config = profile_config("smoke", family="resnet", variant="baseline", train_size=32, epochs=20, batch_size=16,
                            lr=3e-3)
    losses = [e["train_loss"] for e in train(config, progress=False).log["epochs"]]
    assert losses[-1] < 0.8 * losses[0], losses


def test_command_line(tmp_path, capsys):
    run = training.main(["--family", "convnext", "--variant", "dilated", "--profile", "smoke", "--epochs", "1",
                         "--out", str(tmp_path)])
    assert run.config.variant == "dilated" and run.config.epochs == 1
    assert "val accuracy" in capsys.readouterr().out
    log = json.loads((tmp_path / "log.json").read_text())
    assert log["config"]["variant"] == "dilated" and log["run"]["profile"] == "smoke"


def test_synthclick_models_are_fed_images_normalised_with_its_channel_statistics():
    from dcls_lib.data.synthclick import SynthClick
    from dcls_lib.train import normalize_synthclick

    x = torch.rand(2, 3, 8, 8)
    mean, std = torch.tensor(SynthClick.mean).view(1, 3, 1, 1), torch.tensor(SynthClick.std).view(1, 3, 1, 1)
    assert torch.equal(normalize_synthclick(x), (x - mean) / std)
