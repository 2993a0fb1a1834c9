"""The _dcls models behave as timm's baselines do: feature extraction, fx tracing, TorchScript, and
fine-tuning from the published weights (files written here in the authors' layouts); and state dicts
saved by the reference DCLS library are recognised instead of loading silently wrong."""

import copy

import pytest
import timm
import torch
from timm.layers import create_feature_extractor, get_graph_node_names

import dcls_lib  # noqa: F401  registers the _dcls models
from dcls_lib import Dcls2d, from_reference_state_dict
from dcls_lib.models import PUBLISHED, CheckpointError

from DCLS.construct.modules import Dcls2d as ReferenceDcls2d

from authors_layouts import make_state_dict
from test_models_checkpoints import CASES, wrap

FAMILIES = ["resnet50_dcls", "convnext_tiny_dcls", "caformer_s18_dcls", "fastvit_sa24_dcls"]
X = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def dcls_count(model):
    return sum(isinstance(m, Dcls2d) for m in model.modules())


@pytest.mark.parametrize("name", FAMILIES)
def test_features_only_wraps_the_converted_model_like_the_baseline(name):
    ours = timm.create_model(name, features_only=True, out_indices=(1, 2)).eval()
    base = timm.create_model(name[: -len("_dcls")], features_only=True, out_indices=(1, 2)).eval()
    assert type(ours) is type(base) and dcls_count(ours) > 0
    assert ours.feature_info.channels() == base.feature_info.channels()
    assert ours.feature_info.reduction() == base.feature_info.reduction()
    with torch.no_grad():
        assert [f.shape for f in ours(X)] == [f.shape for f in base(X)]


def test_forward_intermediates_run_through_dcls_layers():
    model = timm.create_model("convnext_tiny_dcls").eval()
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(X)
        torch.testing.assert_close(model.forward_head(final), model(X))
    assert [t.shape[1] for t in intermediates] == [96, 192, 384, 768]


@pytest.mark.parametrize("name", ["convnext_tiny_dcls", "caformer_s18_dcls"])
def test_fx_forward_and_backward(name):
    model = timm.create_model(name)
    train_nodes, eval_nodes = get_graph_node_names(model)
    model.eval()
    traced = create_feature_extractor(model, return_nodes=[eval_nodes[-1]])
    with torch.no_grad():
        torch.testing.assert_close(next(iter(traced(X).values())), model(X))
    model.train()
    traced = create_feature_extractor(model, return_nodes=[train_nodes[-1]])
    next(iter(traced(torch.randn(2, 3, 64, 64)).values())).mean().backward()
    layers = [m for m in traced.modules() if isinstance(m, Dcls2d)]
    assert layers and all(m.P.grad is not None and m.weight.grad is not None for m in layers)


def test_torchscript_compiles_the_dense_equivalent_and_leaves_the_model_alone():
    for name in ("convnext_tiny_dcls", "resnet50_dcls"):  # two in a row: no state left behind by the first
        model = timm.create_model(name).eval()
        before = dcls_count(model)
        scripted = torch.jit.script(model)
        with torch.no_grad():
            torch.testing.assert_close(scripted(X), model(X), rtol=1e-4, atol=1e-5)
        assert dcls_count(model) == before > 0
    with pytest.raises(NotImplementedError, match="to_dense"):
        torch.jit.script(torch.nn.Sequential(Dcls2d(2, 2, 3, dilated_kernel_size=5, padding=2)))


def test_torch_export_traces_dcls_layers():
    layer = Dcls2d(4, 4, 3, dilated_kernel_size=7, padding=3, groups=4, version="v1").eval()
    x = torch.randn(1, 4, 12, 12)
    exported = torch.export.export(layer, (x,))
    torch.testing.assert_close(exported.module()(x), layer(x))


@pytest.fixture(scope="module")
def published_files(tmp_path_factory):
    """Each family's published checkpoint, written in the authors' layout with random values."""
    directory = tmp_path_factory.mktemp("published")
    files = {}
    for name in FAMILIES:
        layout, limit, *_ = CASES[name]
        path = directory / PUBLISHED[name].filename
        torch.save(wrap(name, make_state_dict(layout(), seed=1, positions_limit=limit)), path)
        files[name] = path
    return files


@pytest.mark.parametrize("name", FAMILIES)
def test_checkpoint_path_and_overlay_file_go_through_the_published_mapping(name, published_files):
    path = published_files[name]
    reference = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    loaded = timm.create_model(name, checkpoint_path=str(path)).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(X), reference(X), rtol=0, atol=0)
    fresh = timm.create_model(name).eval()
    with torch.no_grad():
        assert not torch.allclose(fresh(X), reference(X))

    tuned = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), num_classes=5)
    classifier = reference.pretrained_cfg["classifier"]
    body = {k: v for k, v in reference.state_dict().items() if not k.startswith(classifier + ".")}
    tuned_state = tuned.state_dict()
    assert all(torch.equal(tuned_state[k], v) for k, v in body.items())
    assert tuned_state[f"{classifier}.weight"].shape[0] == 5
    with torch.no_grad():
        assert tuned.eval()(X).shape == (1, 5)


def test_fine_tuning_another_stem_or_no_head(published_files):
    path = str(published_files["resnet50_dcls"])
    reference = timm.create_model("resnet50_dcls", pretrained=True, pretrained_cfg_overlay=dict(file=path))
    gray = timm.create_model("resnet50_dcls", pretrained=True, pretrained_cfg_overlay=dict(file=path), in_chans=1)
    torch.testing.assert_close(gray.conv1.weight, reference.conv1.weight.sum(1, keepdim=True))
    torch.testing.assert_close(gray.layer3[2].conv2.P, reference.layer3[2].conv2.P)
    path = str(published_files["caformer_s18_dcls"])
    pooled = timm.create_model("caformer_s18_dcls", pretrained=True, pretrained_cfg_overlay=dict(file=path), num_classes=0)
    with torch.no_grad():
        assert pooled.eval()(X).shape == (1, 512)


def test_checkpoint_path_refuses_positions_the_model_shares_but_the_file_does_not(tmp_path):
    layout, limit, *_ = CASES["resnet50_dcls"]
    state = make_state_dict(layout(), seed=1, positions_limit=limit)
    state["layer2.1.conv2.P"] = state["layer2.1.conv2.P"] + 1  # one P per block, as a user's file may hold
    path = tmp_path / "resnet.pth.tar"
    torch.save(wrap("resnet50_dcls", state), path)
    with pytest.raises(CheckpointError, match="layer2.0.conv2.P != layer2.1.conv2.P"):
        timm.create_model("resnet50_dcls", checkpoint_path=str(path))


def test_a_reference_state_dict_is_refused_and_loads_once_converted():
    torch.manual_seed(0)
    reference = ReferenceDcls2d(3, 4, kernel_count=5, dilated_kernel_size=7, padding=3, version="gauss")
    with torch.no_grad():
        reference.P.uniform_(-3, 3)
    ours = Dcls2d(3, 4, 5, dilated_kernel_size=7, padding=3, version="gauss")
    saved = reference.state_dict()
    with pytest.raises(ValueError, match="from_reference_state_dict"):
        ours.load_state_dict(saved)
    ours.load_state_dict(from_reference_state_dict(saved, "gauss", 2))
    x = torch.randn(2, 3, 10, 10)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-4, atol=1e-5)
    # our own state dicts carry the marker and round-trip, also through a copy
    twin = Dcls2d(3, 4, 5, dilated_kernel_size=7, padding=3, version="gauss")
    twin.load_state_dict(copy.deepcopy(ours.state_dict()))
    assert torch.equal(twin.P, ours.P)
    assert ours.state_dict()._metadata[""]["version"] == 2
