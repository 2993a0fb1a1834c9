"""Loading the published checkpoints: generated files in the authors' exact layouts, the mapping onto
timm's models, the positions' conventions (checked against the reference DCLS library), the errors
on files that do not fit, and the download code (file:// and a local HTTP server, no internet)."""

import dataclasses
import functools
import hashlib
import http.server
import threading

import pytest
import timm
import torch
from safetensors.torch import save_file

import dcls_lib  # noqa: F401  registers the _dcls models
from dcls_lib import Dcls2d
from dcls_lib.models import (
    PUBLISHED,
    CheckpointError,
    convert_to_dcls,
    create_study_model,
    download,
    load_checkpoint,
    load_pretrained,
)
from dcls_lib.models import checkpoints as checkpoints_module

from DCLS.construct.modules import Dcls2d as ReferenceDcls2d  # the reference library (a test dependency)

from authors_layouts import (
    convnext_layout,
    fastvit_sa_layout,
    make_state_dict,
    metaformer_s18_layout,
    resnet50_layout,
    timm_training_checkpoint,
)


T, S, B = ((3, 3, 9, 3), (96, 192, 384, 768)), ((3, 3, 27, 3), (96, 192, 384, 768)), ((3, 3, 27, 3), (128, 256, 512, 1024))

# name -> (authors' layout, positions limit, authors' key of a DCLS layer, our name of it, a plain key pair)
CASES = {
    "convnext_tiny_dcls": (lambda: convnext_layout(*T, taps=34), 8, "stages.1.2.dwconv", "stages.1.blocks.2.conv_dw",
                           ("stages.2.4.pwconv1.weight", "stages.2.blocks.4.mlp.fc1.weight")),
    "convnext_small_dcls": (lambda: convnext_layout(*S, taps=40), 8, "stages.2.20.dwconv", "stages.2.blocks.20.conv_dw",
                            ("downsample_layers.2.1.weight", "stages.2.downsample.1.weight")),
    "convnext_base_dcls": (lambda: convnext_layout(*B, taps=40), 8, "stages.3.0.dwconv", "stages.3.blocks.0.conv_dw",
                           ("stages.3.2.gamma", "stages.3.blocks.2.gamma")),
    "resnet50_dcls": (lambda: resnet50_layout(taps=5), 3, "layer2.1.conv2", "layer2.1.conv2",
                      ("layer3.0.downsample.1.running_var", "layer3.0.downsample.1.running_var")),
    "caformer_s18_dcls": (lambda: metaformer_s18_layout("caformer", taps=34), 8, "stages.1.2.token_mixer.dwconv",
                          "stages.1.blocks.2.token_mixer.dwconv", ("stages.2.3.token_mixer.qkv.weight",
                                                                    "stages.2.blocks.3.token_mixer.qkv.weight")),
    "convformer_s18_dcls": (lambda: metaformer_s18_layout("convformer", taps=40), 8, "stages.3.1.token_mixer.dwconv",
                            "stages.3.blocks.1.token_mixer.dwconv", ("head.fc2.weight", "head.fc.fc2.weight")),
    "fastvit_sa24_dcls": (lambda: fastvit_sa_layout((4, 4, 12, 4), taps=34), 8, "network.6.pe", "stages.3.pos_emb.pos_enc",
                          ("network.4.3.convffn.fc1.weight", "stages.2.blocks.3.mlp.fc1.weight")),
    "fastvit_sa36_dcls": (lambda: fastvit_sa_layout((6, 6, 18, 6), taps=34), 8, "network.2.5.convffn.conv.conv",
                          "stages.1.blocks.5.mlp.conv.conv", ("conv_exp.se.reduce.weight", "final_conv.se.fc1.weight")),
}


def empty_model(name):
    """The model's structure without timm's (slow) init: every tensor gets loaded anyway."""
    return timm.create_model(name, device="meta").to_empty(device="cpu").eval()


def wrap(name, state_dict):
    """The file content as the authors saved it: ConvNeXt under "model", timm's train.py otherwise."""
    if PUBLISHED[name].state_keys == ("model",):
        return {"model": state_dict}
    return timm_training_checkpoint(state_dict, arch=name)


def reference_layer(our_layer, version):
    """The reference library's layer with the same configuration as ours."""
    return ReferenceDcls2d(
        our_layer.in_channels, our_layer.out_channels, kernel_count=our_layer.kernel_count,
        dilated_kernel_size=our_layer.dilated_kernel_size[0], padding=our_layer.padding[0], stride=our_layer.stride[0],
        groups=our_layer.groups, bias=our_layer.bias is not None, version=version,
    )


@pytest.mark.parametrize("name", list(CASES))
def test_authors_checkpoint_loads_into_the_timm_model(name, tmp_path):
    layout, limit, authors_layer, our_layer_name, (authors_key, our_key) = CASES[name]
    spec = PUBLISHED[name]
    authors = make_state_dict(layout(), seed=1, positions_limit=limit)
    path = tmp_path / spec.filename
    torch.save(wrap(name, authors), path)
    model = empty_model(name)
    load_pretrained(model, name, path=path)

    state = model.state_dict()
    assert torch.equal(state[our_key].flatten(), authors[authors_key].flatten())

    # the DCLS layer computes what the reference library computes with the authors' tensors
    ours = model.get_submodule(our_layer_name)
    assert isinstance(ours, Dcls2d) and ours.version == spec.reference_version
    reference = reference_layer(ours, spec.reference_version)
    reference.load_state_dict({k: authors[f"{authors_layer}.{k}"] for k in reference.state_dict()})
    x = torch.randn(2, ours.in_channels, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-4, atol=1e-5)

    # positions stay shared by the stage after loading
    layers = [m for m in model.modules() if isinstance(m, Dcls2d)]
    assert len({id(m.P) for m in layers}) == len(model.dcls_spec.position_groups)


def test_timm_training_checkpoint_loads_the_ema_weights(tmp_path):
    layout = resnet50_layout(taps=5)
    ema, raw = make_state_dict(layout, seed=1, positions_limit=3), make_state_dict(layout, seed=2, positions_limit=3)
    path = tmp_path / "resnet.pth.tar"
    torch.save(timm_training_checkpoint(ema, state_dict=raw), path)
    model = empty_model("resnet50_dcls")
    load_pretrained(model, "resnet50_dcls", path=path)
    assert torch.equal(model.fc.weight, ema["fc.weight"])
    assert torch.equal(model.layer4[2].conv2.weight, ema["layer4.2.conv2.weight"])


def test_official_convnext_baseline_loads(tmp_path):
    official = make_state_dict(convnext_layout(*T), seed=3)
    path = tmp_path / PUBLISHED["convnext_tiny"].filename
    torch.save({"model": official}, path)
    model = empty_model("convnext_tiny")
    load_pretrained(model, "convnext_tiny", path=path)
    assert torch.equal(model.stages[0].blocks[1].conv_dw.weight, official["stages.0.1.dwconv.weight"])
    assert torch.equal(model.head.fc.weight, official["head.weight"])
    assert torch.equal(model.head.norm.weight, official["norm.weight"])


def test_timm_safetensors_baseline_loads(tmp_path):
    source = timm.create_model("resnet50", device="meta").to_empty(device="cpu")
    with torch.no_grad():
        for v in source.state_dict().values():
            v.normal_() if v.is_floating_point() else v.fill_(7)
    path = tmp_path / PUBLISHED["resnet50"].filename
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    model = empty_model("resnet50")
    load_pretrained(model, "resnet50", path=path)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), source.state_dict().values()))


def test_create_study_model_loads_a_local_copy_the_same_way(tmp_path):
    authors = make_state_dict(resnet50_layout(taps=5), seed=9, positions_limit=3)
    path = tmp_path / "local-copy.pth.tar"
    torch.save(timm_training_checkpoint(authors), path)
    model = create_study_model("resnet50_dcls", checkpoint_path=path)
    assert torch.equal(model.layer1[0].conv2.P, authors["layer1.0.conv2.P"])  # v0: same axis order
    with pytest.raises(KeyError, match="not one of the study's models"):
        create_study_model("resnet18_dcls")


def test_loading_reties_positions_that_to_empty_untied(tmp_path):
    authors = make_state_dict(convnext_layout(*T, taps=34), seed=4)
    path = tmp_path / "c.pth"
    torch.save({"model": authors}, path)
    model = empty_model("convnext_tiny_dcls")
    assert model.stages[0].blocks[0].conv_dw.P is not model.stages[0].blocks[1].conv_dw.P  # untied by to_empty
    load_pretrained(model, "convnext_tiny_dcls", path=path)
    assert model.stages[0].blocks[0].conv_dw.P is model.stages[0].blocks[2].conv_dw.P


# --- checkpoints that do not fit ------------------------------------------------------------------


def atto_layout():
    """The authors' ConvNeXt layout at convnext_atto's size (depths 2, 2, 6, 2)."""
    return convnext_layout((2, 2, 6, 2), (40, 80, 160, 320), taps=34)


def atto_dcls():
    model = timm.create_model("convnext_atto", device="meta").to_empty(device="cpu")
    with torch.no_grad():
        for v in model.state_dict().values():
            v.zero_()
    return convert_to_dcls(model)


def save(tmp_path, obj, name="ckpt.pth"):
    path = tmp_path / name
    torch.save(obj, path)
    return path


def test_mismatches_are_listed_and_nothing_is_loaded(tmp_path):
    state = make_state_dict(atto_layout(), seed=5)
    state["extra.weight"] = torch.zeros(3, 4)  # 2-D: timm's filter looks it up in the model
    del state["stages.1.0.norm.weight"], state["head.bias"]
    state["stages.0.0.dwconv.weight"] = torch.zeros(40, 1, 40)
    model = atto_dcls()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(model, save(tmp_path, {"model": state}), "convnext-official", ("model",), "v0")
    message = str(error.value)
    assert "missing from the checkpoint (2)" in message
    assert "stages.1.blocks.0.norm.weight" in message and "head.fc.bias" in message
    assert "unexpected in the checkpoint (1)" in message and "extra.weight" in message
    assert "stages.0.blocks.0.conv_dw.weight: checkpoint (40, 1, 40), model (40, 1, 34)" in message
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing was half-loaded


def test_unexpected_keys_through_the_metaformer_filter_are_listed(tmp_path):
    state = make_state_dict(metaformer_s18_layout("caformer", taps=34), seed=10)
    state["stages.1.2.token_mixer.extra"] = torch.zeros(5, 5)
    model = empty_model("caformer_s18_dcls")
    with pytest.raises(CheckpointError, match=r"(?s)unexpected in the checkpoint \(1\).*stages.1.blocks.2.token_mixer.extra"):
        load_checkpoint(model, save(tmp_path, timm_training_checkpoint(state)), "metaformer-sail", ("state_dict_ema",), "v1")


def test_unshared_positions_in_a_checkpoint_are_refused(tmp_path):
    state = make_state_dict(atto_layout(), seed=6)
    state["stages.2.3.dwconv.P"] = state["stages.2.3.dwconv.P"] + 1
    with pytest.raises(CheckpointError, match="(?s)different values.*stages.2.blocks.0.conv_dw.P != stages.2.blocks.3.conv_dw.P"):
        load_checkpoint(atto_dcls(), save(tmp_path, {"model": state}), "convnext-official", ("model",), "v0")


def test_wrong_entry_unreadable_and_missing_files(tmp_path):
    state = make_state_dict(atto_layout(), seed=7)
    path = save(tmp_path, {"state_dict": state, "epoch": 3})
    with pytest.raises(CheckpointError, match=r"none of the entries \['model'\].*\['epoch', 'state_dict'\]"):
        load_checkpoint(atto_dcls(), path, "convnext-official", ("model",), "v0")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(atto_dcls(), garbage)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(atto_dcls(), truncated)
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        load_pretrained(atto_dcls(), "convnext_tiny_dcls", path=tmp_path / "nowhere.pth")
    with pytest.raises(KeyError, match="known:"):
        load_pretrained(atto_dcls(), "convnext_huge_dcls", path=path)


class Note:
    """An object that weights-only loading refuses."""


def test_untrusted_pickles_are_refused_unless_trusted(tmp_path):
    model = timm.create_model("resnet10t", device="meta").to_empty(device="cpu")
    path = save(tmp_path, {"state_dict": model.state_dict(), "note": Note()})
    with pytest.raises(CheckpointError, match=r"refuses \(test_models_checkpoints.Note\).*trust=True"):
        load_checkpoint(model, path, state_keys=("state_dict",))
    load_checkpoint(model, path, state_keys=("state_dict",), trust=True)


# --- downloads ------------------------------------------------------------------------------------


class CountingHandler(http.server.SimpleHTTPRequestHandler):
    requests = 0

    def do_GET(self):
        type(self).requests += 1
        if self.path == "/truncated.pth":  # promises 1000 bytes, sends 10, hangs up
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"x" * 10)
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """A local HTTP server on 127.0.0.1 serving tmp_path/served."""
    root = tmp_path / "served"
    root.mkdir()
    CountingHandler.requests = 0
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(CountingHandler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_download_over_http_is_cached(server, tmp_path):
    root, base = server
    payload = bytes(range(256)) * 4096
    (root / "weights.pth").write_bytes(payload)
    cache = tmp_path / "cache"
    first = download(f"{base}/weights.pth", cache, progress=True)
    assert first == cache / "weights.pth" and first.read_bytes() == payload
    again = download(f"{base}/weights.pth", cache)
    assert again == first and CountingHandler.requests == 1
    assert [p.name for p in cache.iterdir()] == ["weights.pth"]


def test_failed_downloads_leave_nothing_behind(server, tmp_path):
    root, base = server
    (root / "weights.pth").write_bytes(b"abc")
    cache = tmp_path / "cache"
    with pytest.raises(CheckpointError, match="could not download.*404"):
        download(f"{base}/missing.pth", cache)
    with pytest.raises(CheckpointError, match="truncated.pth"):
        download(f"{base}/truncated.pth", cache, timeout=10)
    with pytest.raises(CheckpointError, match="sha256"):
        download(f"{base}/weights.pth", cache, sha256="0" * 64)
    assert list(cache.iterdir()) == []
    good = hashlib.sha256(b"abc").hexdigest()
    assert download(f"{base}/weights.pth", cache, sha256=good).read_bytes() == b"abc"


def test_file_urls_and_the_cache_variable(tmp_path, monkeypatch):
    source = tmp_path / "source.bin"
    source.write_bytes(b"weights")
    monkeypatch.setenv("DCLS_CACHE", str(tmp_path / "env-cache"))
    path = download(source.as_uri(), filename="renamed.bin", progress=False)
    assert path == tmp_path / "env-cache" / "renamed.bin" and path.read_bytes() == b"weights"


def test_create_model_pretrained_downloads_and_loads(tmp_path, monkeypatch, server):
    """timm.create_model("<name>_dcls", pretrained=True) end to end, the "server" standing in for Zenodo."""
    root, base = server
    name = "convnext_tiny_dcls"
    spec = PUBLISHED[name]
    authors = make_state_dict(convnext_layout(*T, taps=34), seed=8)
    torch.save({"model": authors}, root / spec.filename)
    monkeypatch.setitem(PUBLISHED, name, dataclasses.replace(spec, url=f"{base}/{spec.filename}"))
    model = timm.create_model(name, pretrained=True, cache_dir=str(tmp_path / "cache"))
    assert torch.equal(model.stages[3].blocks[2].mlp.fc2.weight, authors["stages.3.2.pwconv2.weight"])
    assert (tmp_path / "cache" / spec.filename).is_file()
    assert checkpoints_module.published_checkpoint(name).url.startswith("http://127.0.0.1")


def test_sail_metaformer_files_run_with_the_authors_head_eps(tmp_path):
    """sail-sg's MlpHead normalises with nn.LayerNorm's eps 1e-5 (timm's: 1e-6): their files get theirs,
    timm's own weights of the baselines keep timm's."""
    state = make_state_dict(metaformer_s18_layout("convformer", taps=40), seed=11)
    model = empty_model("convformer_s18_dcls")
    assert model.head.fc.norm.eps == 1e-6
    load_pretrained(model, "convformer_s18_dcls", path=save(tmp_path, timm_training_checkpoint(state)))
    assert model.head.fc.norm.eps == 1e-5
    features = torch.randn(2, 512)
    hidden = model.head.fc.act(model.head.fc.fc1(features))
    authors = torch.nn.functional.layer_norm(hidden, (2048,), state["head.norm.weight"], state["head.norm.bias"], eps=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(model.head.fc(features), torch.nn.functional.linear(authors, state["head.fc2.weight"], state["head.fc2.bias"]))

    file = save(tmp_path, timm_training_checkpoint(state), "again.pth")
    for through_timm in (dict(pretrained=True, pretrained_cfg_overlay=dict(file=str(file))), dict(checkpoint_path=str(file))):
        assert timm.create_model("convformer_s18_dcls", **through_timm).head.fc.norm.eps == 1e-5, through_timm

    baseline = timm.create_model("caformer_s18", device="meta").to_empty(device="cpu")
    path = tmp_path / PUBLISHED["caformer_s18"].filename
    save_file({k: v.contiguous() for k, v in baseline.state_dict().items()}, str(path))
    load_pretrained(baseline, "caformer_s18", path=path)
    assert baseline.head.fc.norm.eps == 1e-6
