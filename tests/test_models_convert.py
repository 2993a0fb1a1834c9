"""convert_to_dcls, convert_to_dilated and to_dense on small members of the four families.

The study's full-size models are covered in test_models_study.py; here the rules are checked on
the small models a training run would use, which the converter must recognise by type, not name.
"""

import copy
import re

import pytest
import timm
import torch
from timm.models.metaformer import Attention, LayerNorm2dNoBias, LayerNormNoBias, MetaFormer, SepConv
from torch import nn

from dcls_lib import Dcls2d
from dcls_lib.models import (
    convert_to_dcls,
    convert_to_dilated,
    default_dilation,
    detect_family,
    iso_kernel_count,
    parameter_count,
    to_dense,
)


def tiny_metaformer(**kwargs):
    """A CAFormer-like MetaFormer with small depths and dims (SepConv stages, then attention)."""
    return MetaFormer(
        depths=(1, 2, 1, 1), dims=(16, 32, 64, 96), token_mixers=(SepConv, SepConv, Attention, Attention),
        norm_layers=[LayerNorm2dNoBias] * 2 + [LayerNormNoBias] * 2,
        num_classes=10, **kwargs,
    )


def build(name):
    torch.manual_seed(0)
    if name == "tiny_metaformer":
        return tiny_metaformer().eval()
    extra = {"zero_init_last": False} if name.startswith("resnet") else {}  # else residual branches start silent
    return timm.create_model(name, num_classes=10, **extra).eval()


# Which convolutions each family must replace, written as name patterns independent of the converter.
EXPECTED = {
    "resnet18": r"layer\d\.\d\.conv[12]",
    "resnet10t": r"layer\d\.\d\.conv[12]",
    "convnext_atto": r"stages\.\d\.blocks\.\d\.conv_dw",
    "fastvit_t8": r"stages\.\d\.blocks\.\d\.mlp\.conv\.conv",
    "tiny_metaformer": r"stages\.[01]\.blocks\.\d\.token_mixer\.dwconv",
}
SMALL = list(EXPECTED)
# forward passes: resnet10t stands for ResNet (resnet18's dense 3x3 DCLS kernels cost seconds per pass)
RUNS = ["resnet10t", "convnext_atto", "fastvit_t8", "tiny_metaformer"]


def dcls_layers(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, Dcls2d)}


@pytest.mark.parametrize("name", SMALL)
def test_converts_exactly_the_published_convolutions(name):
    model = build(name)
    original = copy.deepcopy(model)
    convert_to_dcls(model)
    replaced = set(dcls_layers(model))
    candidates = {n for n, m in original.named_modules() if isinstance(m, nn.Conv2d)}
    assert replaced == {n for n in candidates if re.fullmatch(EXPECTED[name], n)}
    # everything else is untouched: same module types and the same parameters and buffers
    for n, m in original.named_modules():
        if n not in replaced and not any(n.startswith(r + ".") for r in replaced):
            assert type(model.get_submodule(n)) is type(m), n
    kept = {k: v for k, v in original.state_dict().items() if k.rsplit(".", 1)[0] not in replaced}
    now = model.state_dict()
    for k, v in kept.items():
        assert torch.equal(now[k], v), k


@pytest.mark.parametrize("name", RUNS)
def test_converted_model_keeps_shapes_and_learns_positions(name):
    model = build(name)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected_shape = model(x).shape
    convert_to_dcls(model).train()
    out = model(x)
    assert out.shape == expected_shape
    out.square().mean().backward()
    for layer_name, layer in dcls_layers(model).items():
        assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0, layer_name
        assert layer.P.grad is not None and layer.P.grad.abs().sum() > 0, layer_name


@pytest.mark.parametrize("name", SMALL)
def test_positions_are_shared_per_stage_and_shape(name):
    model = convert_to_dcls(build(name), version="gauss")
    groups = {}
    for layer_name, layer in dcls_layers(model).items():
        stage = re.match(r"(layer\d|stages\.\d)", layer_name).group(1)
        groups.setdefault((stage, layer.weight.shape), []).append(layer)
    for layers in groups.values():
        assert all(layer.P is layers[0].P and layer.SIG is layers[0].SIG for layer in layers)
    firsts = [layers[0].P for layers in groups.values()]
    assert len({id(p) for p in firsts}) == len(firsts)  # no two groups share
    unshared = convert_to_dcls(build(name), share_positions=False)
    assert len({id(layer.P) for layer in dcls_layers(unshared).values()}) == len(dcls_layers(unshared))


def test_basic_blocks_keep_stride_and_get_their_own_positions_when_shapes_differ():
    model = convert_to_dcls(build("resnet18"))
    first = model.layer2[0].conv1  # 64 -> 128, stride 2
    assert first.stride == (2, 2) and first.weight.shape == (128, 64, 5)
    assert first.P is not model.layer2[0].conv2.P
    assert model.layer2[0].conv2.P is model.layer2[1].conv1.P is model.layer2[1].conv2.P


def test_deep_stem_3x3_convs_are_not_replaced():
    model = convert_to_dcls(build("resnet10t"))
    assert all(isinstance(m, nn.Conv2d) and not isinstance(m, Dcls2d) for m in model.conv1.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize(
    "name, defaults",
    [("resnet18", (7, 5, "v0")), ("convnext_atto", (17, 34, "v0")), ("fastvit_t8", (17, 34, "v1")), ("tiny_metaformer", (17, 34, "v1"))],
)
def test_family_defaults_and_overrides(name, defaults):
    model = convert_to_dcls(build(name))
    layer = next(iter(dcls_layers(model).values()))
    assert (layer.dilated_kernel_size[0], layer.kernel_count, layer.version) == defaults
    assert model.dcls_spec.family == detect_family(model).name
    model = convert_to_dcls(build(name), dilated_kernel_size=9, kernel_count=7, version="gaussian")
    layer = next(iter(dcls_layers(model).values()))
    assert (layer.dilated_kernel_size, layer.kernel_count, layer.version, layer.padding) == ((9, 9), 7, "gauss", (4, 4))


@pytest.mark.parametrize("name", SMALL)
def test_iso_kernel_count_is_the_largest_count_within_the_baseline(name):
    baseline = parameter_count(build(name))
    count = iso_kernel_count(build(name))
    assert parameter_count(convert_to_dcls(build(name), kernel_count="iso")) <= baseline
    assert parameter_count(convert_to_dcls(build(name), kernel_count=count + 1)) > baseline


@pytest.mark.parametrize("name, published", [("convnext_tiny", 34), ("convnext_small", 40), ("convnext_base", 40), ("resnet50", 5)])
def test_iso_rule_gives_the_published_tap_counts(name, published):
    # the authors chose these counts to stay at iso-parameters; counting as they do reproduces them
    assert iso_kernel_count(timm.create_model(name, device="meta")) == published


@pytest.mark.parametrize("name", RUNS)
def test_to_dense_gives_the_same_outputs(name):
    model = convert_to_dcls(build(name), version="gauss").eval()
    with torch.no_grad():
        for layer in dcls_layers(model).values():  # move taps off their initial place
            layer.P.uniform_(-3, 3)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        dense = to_dense(copy.deepcopy(model))
        assert not dcls_layers(dense) and not hasattr(dense, "dcls_spec")
        torch.testing.assert_close(dense(x), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name, kernel, dilation", [("convnext_atto", 7, 2), ("resnet10t", 3, 3), ("fastvit_t8", 7, 2)])
def test_dilated_baseline_keeps_parameters_and_shapes(name, kernel, dilation):
    model = build(name)
    assert default_dilation(model, kernel) == dilation
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected_shape = model(x).shape
    before = parameter_count(model)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    convert_to_dilated(model)
    assert parameter_count(model) == before
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())
    dilated = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.dilation != (1, 1)]
    assert dilated and all(m.dilation == (dilation, dilation) for m in dilated)
    with torch.no_grad():
        assert model(x).shape == expected_shape


def test_fastvit_positional_encoding_is_converted_and_shares_its_stage_positions():
    model = convert_to_dcls(timm.create_model("fastvit_sa12", device="meta"))
    pos = model.stages[3].pos_emb.pos_enc
    assert isinstance(pos, Dcls2d) and pos.bias is not None
    assert pos.P is model.stages[3].blocks[0].mlp.conv.conv.P
    assert not isinstance(model.stages[0].blocks[0].token_mixer.mixer.conv_kxk[0].conv, Dcls2d)


def test_clear_errors():
    with pytest.raises(TypeError, match="supported: resnet"):
        convert_to_dcls(nn.Sequential(nn.Conv2d(3, 8, 3)))
    model = convert_to_dcls(build("convnext_atto"))
    with pytest.raises(ValueError, match="already converted"):
        convert_to_dcls(model)
    with pytest.raises(ValueError, match="odd"):
        convert_to_dcls(build("convnext_atto"), dilated_kernel_size=16)
    with pytest.raises(ValueError, match="kernel_count"):
        convert_to_dcls(build("convnext_atto"), kernel_count=0)
    with pytest.raises(ValueError, match="version"):
        convert_to_dcls(build("convnext_atto"), version="cubic")
    with pytest.raises(ValueError, match="dilation"):
        convert_to_dilated(build("convnext_atto"), dilation=0)
    with pytest.raises(ValueError, match="dilated convolution"):
        convert_to_dcls(timm.create_model("resnet18", output_stride=16, device="meta"))
