"""The model-parameter randomisation test: which layers, what a reset does, and that the test tells a
map that depends on the model from one that does not."""

import pytest
import torch
from torch import nn

from dcls_lib.cam import EXPLAINERS
from dcls_lib.data.synthclick import SynthClick
from dcls_lib.evaluate import PixelNormalize
from dcls_lib.models import cam_target
from dcls_lib.metrics import spearman
from dcls_lib.models.small import create_small_model
from dcls_lib.sanity import (
    parameter_counts,
    parameter_randomisation,
    randomisation_layers,
    randomise_,
    randomised_copy,
    summarise,
)
from dcls_lib.sanity.randomisation import MapSource, map_functions
from dcls_lib.train import profile_config, train


class Decoy(nn.Module):
    """A conv (the target layer) and a linear head, plus a layer whose output is multiplied by zero:
    its weights cannot matter to any map."""

    def __init__(self):
        super().__init__()
        self.features = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)
        self.decoy = nn.Linear(4, 4)

    def forward(self, x):
        logits = self.head(torch.relu(self.features(x)).mean(dim=(2, 3)))
        return logits + 0 * self.decoy(logits)


@pytest.fixture(scope="module")
def trained():
    """A resnet-dcls trained for a few seconds on SynthClick (the smoke profile), and 24 test images."""
    run = train(profile_config("smoke", family="resnet", variant="dcls"), progress=False)
    images, labels, _ = SynthClick("test", 64, size=24).batch()
    return run.model, images, labels


def test_layers_are_the_blocks_from_the_head_down():
    assert randomisation_layers(create_small_model("resnet", width=8)) == [
        "fc", "layer4.1", "layer4.0", "layer3.1", "layer3.0", "layer2.1", "layer2.0", "layer1.1", "layer1.0", "bn1", "conv1"]
    convnext = randomisation_layers(create_small_model("convnext", "dcls", width=8))
    assert convnext[0] == "head" and convnext[-1] == "stem"
    assert convnext[1:4] == ["stages.3.blocks.0", "stages.3.downsample", "stages.2.blocks.2"]
    assert randomisation_layers(Decoy()) == ["decoy", "head", "features"]


def test_counts_say_what_a_reset_keeps_and_shares():
    model = create_small_model("convnext", "dcls", width=8)
    block = parameter_counts(model, "stages.2.blocks.1")
    assert block.kept == 32, "the block's own layer scale (gamma, 4 * 8 channels) has no reset_parameters"
    assert block.shared > 0, "DCLS positions are shared by the blocks of a stage"
    assert parameter_counts(model, "head").shared == 0 and parameter_counts(model, "head").kept == 0


def test_randomise_redraws_weights_and_statistics_reproducibly():
    model = create_small_model("resnet", "dcls", width=8)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model.layer4[1].bn1.running_mean.fill_(3.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a = randomised_copy(model, ["layer4.1"], seed=0)
    b = randomised_copy(model, ["layer4.1"], seed=0)
    c = randomised_copy(model, ["layer4.1"], seed=1)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items()), "the original is untouched"
    assert torch.equal(a.layer4[1].conv1.weight, b.layer4[1].conv1.weight)
    assert not torch.equal(a.layer4[1].conv1.weight, c.layer4[1].conv1.weight)
    assert not torch.equal(a.layer4[1].conv1.P, model.layer4[1].conv1.P)
    assert not a.layer4[1].bn1.running_mean.any(), "batch norms reset their statistics"
    assert torch.equal(a.layer3[0].conv1.weight, model.layer3[0].conv1.weight), "other layers keep their weights"
    state = torch.get_rng_state()
    randomise_(model, ["fc"], seed=5)
    assert torch.equal(torch.get_rng_state(), state), "the global generator is left as it was"


def test_a_layer_the_maps_do_not_depend_on_gives_correlation_one():
    torch.manual_seed(0)
    model, images = Decoy(), torch.rand(10, 3, 16, 16)
    result = parameter_randomisation(model, model.features, images, torch.arange(10) % 4, layers=["decoy"])
    assert len(result.rows) == 4  # 2 modes x 2 maps
    for key, rho in result.correlations.items():
        defined = rho[~torch.isnan(rho)]
        assert defined.numel() > 0 and torch.allclose(defined, torch.ones_like(defined)), key
    head = parameter_randomisation(model, model.features, images, torch.arange(10) % 4, layers=["head"])
    assert all(r["mean"] < 0.9 for r in head.rows), "the head's weights do change the maps"


def test_maps_of_a_trained_model_decorrelate_and_the_model_is_untouched(trained):
    model, images, labels = trained
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = parameter_randomisation(model, cam_target(model).layer, images, labels,
                                     preprocess=PixelNormalize(SynthClick.mean, SynthClick.std), resamples=200)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    layers = randomisation_layers(model)
    assert [r["layer"] for r in result.rows if r["mode"] == "cascading" and r["explainer"] == "gradcam"] == layers
    for explainer in ("gradcam", "threshold-gradcam"):
        last = next(r for r in result.rows if r["mode"] == "cascading" and r["explainer"] == explainer and r["layer"] == "conv1")
        # a map that ignores the weights stays at 1 (the decoy test above); these fall clearly below it
        assert last["ci low"] <= last["mean"] <= last["ci high"] < 0.9, (explainer, last)
        first = [r for r in result.rows if r["step"] == 1 and r["explainer"] == explainer]
        assert first[0]["mean"] == first[1]["mean"], "step 1 randomises the same layer with the same weights in both modes"
    assert "| cascading | 1 | fc | Grad-CAM |" in result.table()
    assert "independent" not in result.table("cascading")


def test_summary_counts_constant_pairs_by_the_policy():
    values = torch.tensor([1.0, float("nan"), 0.5, 0.5])
    zero, skip = summarise(values), summarise(values, constant="skip")
    assert zero["mean"] == pytest.approx(0.5) and skip["mean"] == pytest.approx(2 / 3)
    assert zero["undefined"] == skip["undefined"] == 1
    assert skip["ci low"] <= skip["mean"] <= skip["ci high"]
    assert summarise([float("nan")], constant="skip")["mean"] != summarise([float("nan")], constant="skip")["mean"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(layers=["nope"]), "'nope' is not a submodule"),
    (dict(layers=[]), "non-empty list of module names"),
    (dict(modes=("sideways",)), "modes must be"),
    (dict(explainers=("saliency",)), "explainer must be one of"),
    (dict(constant="ignore"), "constant must be one of"),
    (dict(labels=torch.zeros(3)), "one entry per image"),
])
def test_bad_arguments_get_one_line_errors(kwargs, message):
    model = Decoy()
    args = {"labels": torch.zeros(4), "layers": ["decoy"], **kwargs}
    with pytest.raises(ValueError, match=message):
        parameter_randomisation(model, model.features, torch.rand(4, 3, 8, 8), args.pop("labels"), **args)


def test_a_target_layer_outside_the_model_is_refused():
    with pytest.raises(ValueError, match="not a submodule"):
        parameter_randomisation(Decoy(), nn.Conv2d(3, 8, 3), torch.rand(2, 3, 8, 8), [0, 1])


def test_replaying_the_unchanged_layers_gives_the_maps_of_a_randomised_copy(trained):
    """The fast path (outputs below the randomised layers replayed, weights swapped in place) against
    the plain one: a deep copy randomised by ``randomised_copy`` and its maps computed from scratch."""
    model, images, labels = trained
    images, labels = images[:10], labels[:10]
    target = cam_target(model)
    normalise = PixelNormalize(SynthClick.mean, SynthClick.std)
    result = parameter_randomisation(model, target.layer, images, labels, preprocess=normalise, batch_size=4)
    source = MapSource(target.name, images, labels, map_functions(EXPLAINERS), preprocess=normalise)
    reference = source(model)
    order = randomisation_layers(model)
    for k in (0, 1, 4, len(order) - 1):
        cascade = source(randomised_copy(model, order[:k + 1]))
        alone = source(randomised_copy(model, [order[k]]))
        for explainer in EXPLAINERS:
            for mode, maps in (("cascading", cascade), ("independent", alone)):
                expected = spearman(reference[explainer], maps[explainer])
                got = result.correlations[mode, order[k], explainer]
                assert torch.allclose(got, expected, atol=1e-6, equal_nan=True), (mode, order[k], explainer)
