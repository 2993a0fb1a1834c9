"""The study's 16 models: they build, run forward and backward, round-trip, count parameters as
published, convert to dense exactly, and expose their Grad-CAM target.

To keep the suite fast on two cores, each baseline is built by timm on the meta device and given a
cheap deterministic init (timm's own init of the big models takes seconds each); its DCLS version is
the converter applied to a copy; the registered ``<name>_dcls`` is checked to build the same model.
"""

import copy
import dataclasses

import pytest
import timm
import torch

import dcls_lib  # noqa: F401  registers the _dcls models
from dcls_lib import Dcls2d
from dcls_lib.models import (
    PUBLISHED,
    STUDY_MODELS,
    cam_target,
    convert_to_dcls,
    parameter_count,
    study_model_names,
    tie_positions,
    to_dense,
)

NAMES = study_model_names()
DCLS_NAMES = [n for n in NAMES if n.endswith("_dcls")]
BASELINES = [n for n in NAMES if not n.endswith("_dcls")]
INPUT = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))

# Published sizes (ConvNeXt-dcls README, "#params" in millions, the same for baseline and DCLS)
PUBLISHED_MILLIONS = {"convnext_tiny": 28, "convnext_small": 50, "convnext_base": 89}

EXPECTED_TARGETS = {
    "resnet50": ("layer4", 2048),
    "convnext_tiny": ("stages.3", 768),
    "convnext_small": ("stages.3", 768),
    "convnext_base": ("stages.3", 1024),
    "caformer_s18": ("stages.3", 512),
    "convformer_s18": ("stages.3", 512),
    "fastvit_sa24": ("final_conv", 1024),
    "fastvit_sa36": ("final_conv", 1024),
}


# the first layer: a gradient there means it flowed through the whole network
FIRST_CONV = {
    "resnet50": "conv1", "convnext_tiny": "stem.0", "convnext_small": "stem.0", "convnext_base": "stem.0",
    "caformer_s18": "stem.conv", "convformer_s18": "stem.conv",
    "fastvit_sa24": "stem.0.conv_kxk.0.conv", "fastvit_sa36": "stem.0.conv_kxk.0.conv",
}


@torch.no_grad()
def quick_init(model, seed=0):
    """Weights N(0, 0.02); biases 0; other vectors (norm weights, residual and layer scales) 1;
    BatchNorm statistics 0 and 1: sane activations, and much faster than timm's init."""
    generator = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            p.zero_()
        elif p.dim() == 1:
            p.fill_(1.0)
        else:
            p.copy_(torch.randn(p.shape, generator=generator) * 0.02)
    for name, b in model.named_buffers():
        if name.endswith("running_var"):
            b.fill_(1.0)
        elif name.endswith("running_mean"):
            b.zero_()
    return model


class Zoo:
    """Builds each model once per module, and runs it on INPUT once (eval mode, with autograd),
    keeping the output and the Grad-CAM target's activations for the other tests."""

    def __init__(self):
        self.models, self.outputs, self.activations, self.live = {}, {}, {}, {}

    def model(self, name):
        if name not in self.models:
            if name.endswith("_dcls"):
                study = STUDY_MODELS[name[: -len("_dcls")]]
                model = copy.deepcopy(self.model(study.base))
                torch.manual_seed(0)
                convert_to_dcls(model, **study.defaults.options())
            else:
                model = quick_init(timm.create_model(name, device="meta").to_empty(device="cpu"))
            self.models[name] = model.eval()
        return self.models[name]

    def run(self, name):
        """The output on INPUT; the first call keeps its autograd graph in ``live`` for one backward."""
        if name not in self.outputs:
            model = self.model(name)
            seen = []
            handle = cam_target(model).layer.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
            try:
                out = model(INPUT)
            finally:
                handle.remove()
            self.outputs[name], self.activations[name], self.live[name] = out.detach(), seen[-1], out
        return self.outputs[name]


@pytest.fixture(scope="module")
def zoo():
    return Zoo()


def test_the_study_has_sixteen_models():
    assert len(NAMES) == 16 and len(DCLS_NAMES) == 8
    assert set(PUBLISHED) == set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_forward_and_backward(zoo, name):
    model = zoo.model(name)  # eval mode: BatchNorm uses its statistics, so a batch of one works
    zoo.run(name)
    out = zoo.live.pop(name, None)
    if out is None:  # the forward ran without its graph being kept for us
        out = model(INPUT)
    try:
        assert out.shape == (1, 1000) and torch.isfinite(out).all()
        out.logsumexp(1).sum().backward()
        grads = {n: p.grad for n, p in model.named_parameters()}
        assert all(g is not None for g in grads.values()), [n for n, g in grads.items() if g is None][:5]
        positions = [m.P.grad for m in model.modules() if isinstance(m, Dcls2d)]
        assert bool(positions) == name.endswith("_dcls")
        assert all(g.abs().sum() > 0 for g in positions)
        assert all(torch.isfinite(g).all() for g in grads.values())
        assert model.get_submodule(FIRST_CONV[name.removesuffix("_dcls")]).weight.grad.abs().sum() > 0
    finally:
        model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip(zoo, name):
    model = zoo.model(name)
    fresh = timm.create_model(name, device="meta").to_empty(device="cpu").eval()
    if name.endswith("_dcls"):
        tie_positions(fresh)  # to_empty() unties shared parameters
    saved = model.state_dict()
    fresh.load_state_dict(saved, strict=True)
    loaded = fresh.state_dict()
    assert loaded.keys() == saved.keys()
    for key, value in saved.items():
        assert torch.equal(loaded[key], value), key
    groups = lambda m: sorted(len([x for x in m.modules() if isinstance(x, Dcls2d) and x.P is p]) for p in
                              {x.P for x in m.modules() if isinstance(x, Dcls2d)})
    assert groups(fresh) == groups(model)


@pytest.mark.parametrize("name", DCLS_NAMES)
def test_registered_name_builds_the_converted_model(zoo, name):
    study = STUDY_MODELS[name[: -len("_dcls")]]
    registered = timm.create_model(name, device="meta")
    converted = zoo.model(name)
    assert {k: v.shape for k, v in registered.state_dict().items()} == {k: v.shape for k, v in converted.state_dict().items()}
    spec = registered.dcls_spec
    assert (spec.dilated_kernel_size, spec.kernel_count, spec.version) == dataclasses.astuple(study.defaults)
    assert registered.pretrained_cfg["url"] == PUBLISHED[name].url


def test_parameter_counts(zoo):
    rows = []
    for base in BASELINES:
        baseline, dcls = parameter_count(zoo.model(base)), parameter_count(zoo.model(base + "_dcls"))
        rows.append((base, baseline, dcls, dcls / baseline - 1))
    print("\nmodel             baseline      DCLS  change")
    for base, baseline, dcls, change in rows:
        print(f"{base:16s} {baseline / 1e6:8.3f}M {dcls / 1e6:8.3f}M {change:+7.2%}")
    # iso-parameters as published: within 0.5% for the depthwise families; ResNet-50's 5 taps in
    # 7x7 (the largest count at or below its 3x3 budget, positions shared per stage) give 6% fewer.
    for base, _, _, change in rows:
        if base == "resnet50":
            assert -0.07 < change < -0.05
        else:
            assert abs(change) < 0.005, base
    for base, millions in PUBLISHED_MILLIONS.items():
        for name in (base, base + "_dcls"):
            assert abs(parameter_count(zoo.model(name)) / 1e6 - millions) < 1, name


@pytest.mark.parametrize("name", DCLS_NAMES)
def test_to_dense_gives_the_same_outputs(zoo, name):
    expected = zoo.run(name)
    dense = to_dense(copy.deepcopy(zoo.model(name)))
    assert not any(isinstance(m, Dcls2d) for m in dense.modules())
    with torch.no_grad():
        torch.testing.assert_close(dense(INPUT), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_cam_target_gives_nchw_activations_before_pooling(zoo, name):
    model = zoo.model(name)
    target = cam_target(model)
    layer_name, channels = EXPECTED_TARGETS[name.removesuffix("_dcls")]
    assert target.name == layer_name and target.layer is model.get_submodule(layer_name)
    zoo.run(name)
    activations = zoo.activations[name]
    if target.reshape_transform is not None:
        activations = target.reshape_transform(activations)
    assert activations.shape == (1, channels, 2, 2)  # 64 px / stride 32, channels first
