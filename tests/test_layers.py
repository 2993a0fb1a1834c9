"""Behaviour of the DCLS layers: where taps land, devices and dtypes, state, compile, bad input."""

import itertools
import warnings

import pytest
import torch
from torch import nn

import dcls_lib.layers.kernel as kernel_module
from dcls_lib import Dcls1d, Dcls2d, Dcls3d, construct_kernel
from dcls_lib.layers import position_limits

LAYERS = {1: Dcls1d, 2: Dcls2d, 3: Dcls3d}
VERSIONS = ["gauss", "v1", "max", "v0"]


def _one_tap_layer(sizes, version, offsets):
    """A single-channel layer with one unit-weight tap at integer ``offsets`` (SIG=0: sharpest)."""
    layer = LAYERS[len(sizes)](1, 1, kernel_count=1, dilated_kernel_size=sizes, bias=False, version=version)
    with torch.no_grad():
        layer.weight.fill_(1.0)
        layer.P.copy_(torch.tensor(offsets, dtype=torch.float32).view(-1, 1, 1, 1))
        if layer.SIG is not None:
            layer.SIG.zero_()
    return layer


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_P_d_moves_a_tap_along_spatial_axis_d(version, ndim):
    """The reference's measurement, made on ours: one tap with P[d] = 2 in a 7-wide kernel."""
    for d in range(ndim):
        offsets = [0] * ndim
        offsets[d] = 2
        kernel = _one_tap_layer((7,) * ndim, version, offsets).construct_kernel()[0, 0]
        peak = torch.nonzero(kernel == kernel.max()).tolist()
        expected = [3] * ndim
        expected[d] = 5
        assert peak == [expected], f"P[{d}]=2 should land at {expected}, landed at {peak}"


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("sizes", [(5, 7), (7, 4), (3, 6, 5)])
def test_non_square_kernels_place_every_tap_at_centre_plus_P(version, sizes):
    """Tap by tap, over every integer offset that stays on the grid."""
    centre = [s // 2 for s in sizes]
    ranges = [range(lo, hi + 1) for lo, hi in map(position_limits, sizes)]
    for offsets in itertools.product(*ranges):
        kernel = _one_tap_layer(sizes, version, offsets).construct_kernel()[0, 0]
        expected = tuple(c + o for c, o in zip(centre, offsets))
        assert kernel.shape == sizes
        peak = [tuple(i) for i in torch.nonzero(kernel == kernel.max()).tolist()]
        assert peak == [expected], f"offsets {offsets} should land at {expected}, landed at {peak}"
        if version != "gauss":  # integer positions of the bilinear and triangle profiles are one-hot
            assert kernel[expected].item() == pytest.approx(1.0, abs=1e-6)
            assert kernel.sum().item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("version", ["gauss", "v1", "max"])
def test_normalised_versions_keep_each_taps_weight(version):
    """A tap on the grid spreads exactly its weight: the kernel sums to the sum of the tap weights."""
    torch.manual_seed(0)
    layer = Dcls2d(3, 6, kernel_count=5, dilated_kernel_size=9, groups=3, version=version)
    with torch.no_grad():
        layer.P.uniform_(-3, 3)
    kernel = layer.construct_kernel()
    torch.testing.assert_close(kernel.sum((-1, -2)), layer.weight.sum(-1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ndim", [1, 2, 3])
@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "circular"])
def test_to_dense_gives_the_same_outputs(ndim, padding_mode):
    torch.manual_seed(ndim)
    sizes = (5, 4, 3)[:ndim]
    for padding, stride in (("same", 1), (2, 2)):
        layer = LAYERS[ndim](
            4, 6, 3, stride=stride, padding=padding, dilated_kernel_size=sizes, groups=2, padding_mode=padding_mode
        )
        dense = layer.to_dense()
        assert isinstance(dense, (nn.Conv1d, nn.Conv2d, nn.Conv3d)[ndim - 1])
        with warnings.catch_warnings():  # torch.jit is deprecated, but still how some export
            warnings.simplefilter("ignore", FutureWarning)
            scripted = torch.jit.script(dense)  # as a plain nn.ConvNd
        x = torch.randn(2, 4, *(8,) * ndim)
        torch.testing.assert_close(dense(x), layer(x), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(scripted(x), layer(x), rtol=1e-5, atol=1e-6)


def test_same_padding_keeps_the_size_for_even_kernels():
    layer = Dcls2d(2, 2, 3, dilated_kernel_size=(4, 6), padding="same")
    assert layer(torch.randn(1, 2, 9, 11)).shape == (1, 2, 9, 11)


def test_unbatched_input():
    layer = Dcls1d(3, 5, 2, dilated_kernel_size=5, padding=2)
    x = torch.randn(3, 10)
    torch.testing.assert_close(layer(x), layer(x.unsqueeze(0))[0])


def test_clamp_parameters_keeps_taps_on_the_grid():
    layer = Dcls2d(2, 2, 4, dilated_kernel_size=(7, 6), version="v1")
    with torch.no_grad():
        layer.P.fill_(100.0)
        layer.P[:, 0].fill_(-100.0)
    layer.clamp_parameters()
    assert layer.P[0].max() == 3 and layer.P[0].min() == -3  # odd size: -K//2 .. K//2
    assert layer.P[1].max() == 2 and layer.P[1].min() == -3  # even size: -K/2 .. K/2 - 1


def test_initialisation_follows_the_reference():
    torch.manual_seed(0)
    layer = Dcls2d(64, 64, 34, dilated_kernel_size=17, groups=64, version="gauss")
    assert layer.weight.shape == (64, 1, 34) and layer.P.shape == layer.SIG.shape == (2, 64, 1, 34)
    assert torch.all(layer.SIG == 0.23)
    assert abs(layer.P.std().item() - 0.5) < 0.02 and abs(layer.P.mean().item()) < 0.02
    assert Dcls2d(4, 4, 3, version="max").SIG.abs().max() == 0
    assert Dcls2d(4, 4, 3, version="v1").SIG is None and Dcls2d(4, 4, 3, version="bilinear").version == "v1"


def test_state_dict_round_trip():
    torch.manual_seed(0)
    a = Dcls3d(2, 4, 5, dilated_kernel_size=(3, 5, 5), padding=1, version="gauss")
    b = Dcls3d(2, 4, 5, dilated_kernel_size=(3, 5, 5), padding=1, version="gauss")
    assert set(a.state_dict()) == {"weight", "P", "SIG", "bias"}
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 2, 6, 7, 7)
    assert torch.equal(a(x), b(x))


def test_a_layer_pickles_whole_and_still_checks_what_it_loads(tmp_path):
    """Whole-model torch.save and worker processes pickle the module, hooks included."""
    layer = Dcls2d(4, 4, kernel_count=3, dilated_kernel_size=7, padding=3, groups=4)
    torch.save(layer, tmp_path / "layer.pt")
    loaded = torch.load(tmp_path / "layer.pt", weights_only=False)
    x = torch.randn(1, 4, 9, 9)
    torch.testing.assert_close(loaded(x), layer(x))
    state = layer.state_dict()
    state["P"] = torch.full_like(state["P"], float("nan"))
    with pytest.raises(ValueError):
        loaded.load_state_dict(state)


def test_no_tensor_stays_behind_when_the_module_moves():
    """Every tensor the layer holds is a parameter, so .to()/.half()/.double() move all of it."""
    layer = Dcls2d(2, 2, 3, dilated_kernel_size=5, padding=2)
    layer(torch.randn(1, 2, 8, 8))
    stray = [k for k, v in vars(layer).items() if isinstance(v, torch.Tensor)]
    assert stray == [] and dict(layer.named_buffers()) == {}
    layer = layer.double()
    assert layer(torch.randn(1, 2, 8, 8, dtype=torch.float64)).dtype == torch.float64
    meta = Dcls2d(2, 2, 3, dilated_kernel_size=5).to("meta")
    assert all(p.device.type == "meta" for p in meta.parameters())


@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-12), (torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("version", VERSIONS)
def test_dtypes(dtype, tolerance, version):
    torch.manual_seed(0)
    exact = Dcls2d(4, 4, 6, dilated_kernel_size=9, padding=4, groups=4, version=version).double()
    layer = Dcls2d(4, 4, 6, dilated_kernel_size=9, padding=4, groups=4, version=version).to(dtype)
    layer.load_state_dict(exact.state_dict())
    x = torch.randn(2, 4, 12, 12, dtype=torch.float64)
    y = layer(x.to(dtype))
    assert y.dtype == dtype
    scale = exact(x).abs().max()
    assert (y.double() - exact(x)).abs().max() <= tolerance * scale
    y.float().square().sum().backward()
    assert layer.P.grad.dtype == dtype and torch.isfinite(layer.P.grad.float()).all()


def test_works_under_torch_compile():
    torch.manual_seed(0)
    layer = Dcls2d(4, 4, 5, dilated_kernel_size=(5, 7), padding="same", groups=2, version="gauss")
    compiled = torch.compile(layer)
    x = torch.randn(2, 4, 10, 10)
    eager_out = layer(x)
    eager_grads = torch.autograd.grad(eager_out.square().sum(), [layer.weight, layer.P, layer.SIG])
    compiled_out = compiled(x)
    compiled_grads = torch.autograd.grad(compiled_out.square().sum(), [layer.weight, layer.P, layer.SIG])
    torch.testing.assert_close(compiled_out, eager_out, rtol=1e-4, atol=1e-5)
    for c, e in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(c, e, rtol=1e-4, atol=1e-5)


def test_kernel_construction_saves_nothing_but_its_parameters_for_backward():
    """The memory property of this library, checked exactly (the benchmark measures the bytes)."""
    layer = Dcls2d(96, 96, 34, dilated_kernel_size=17, groups=96, version="gauss")
    params = {p.data_ptr() for p in layer.parameters()}
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer.construct_kernel()
    assert saved and all(t.untyped_storage().data_ptr() in params for t in saved)


@pytest.mark.parametrize("version", ["gauss", "v1"])
def test_chunked_construction_equals_one_piece(monkeypatch, version):
    torch.manual_seed(0)
    layer = Dcls2d(6, 6, 4, dilated_kernel_size=(5, 7), groups=2, version=version)
    params = [p for p in (layer.weight, layer.P, layer.SIG) if p is not None]
    whole = layer.construct_kernel()
    grads = torch.autograd.grad(whole.square().sum(), params)
    monkeypatch.setattr(kernel_module, "CHUNK_ELEMENTS", 200)
    builder = kernel_module._builder(layer.interpolation)
    assert len(kernel_module._chunks(builder, 18, (5, 7), 4)) > 1
    chunked = layer.construct_kernel()
    torch.testing.assert_close(chunked, whole)
    for c, w in zip(torch.autograd.grad(chunked.square().sum(), params), grads):
        torch.testing.assert_close(c, w)


@pytest.mark.parametrize("version", ["v0", "v1"])
@pytest.mark.parametrize("sizes", [(9,), (5, 8), (3, 6, 5)])
def test_bilinear_corners_equal_the_dense_profiles(version, sizes):
    """The bilinear versions scatter 2^D corners; the general dense-profile builder must agree."""
    from dcls_lib.layers.interpolation import get_interpolation

    torch.manual_seed(len(sizes))
    interp = get_interpolation(version)
    rows, taps = 7, 5
    weight = torch.randn(rows, taps, dtype=torch.float64)
    P = torch.stack([torch.empty(rows, taps, dtype=torch.float64).uniform_(-s / 2 - 1, s / 2 + 1) for s in sizes])
    grad = torch.randn(rows, *sizes, dtype=torch.float64)
    corners = kernel_module.Corners
    dense = kernel_module.DenseProfiles
    torch.testing.assert_close(corners.forward(interp, sizes, weight, P, None), dense.forward(interp, sizes, weight, P, None))
    for c, d in zip(corners.backward(interp, sizes, weight, P, None, grad)[:2],
                    dense.backward(interp, sizes, weight, P, None, grad)[:2]):
        torch.testing.assert_close(c, d)


@pytest.mark.parametrize("version", ["max", "gauss"])
def test_a_width_starting_at_zero_can_learn(version):
    """The reference's d|SIG|/dSIG is 0 at SIG = 0, where the triangle starts: its width never moves."""
    torch.manual_seed(0)
    layer = Dcls2d(2, 2, 3, dilated_kernel_size=7, padding=3, groups=2, version=version)
    with torch.no_grad():
        layer.SIG.zero_()
    layer(torch.randn(1, 2, 9, 9)).square().sum().backward()
    assert layer.SIG.grad.abs().min() > 0


def test_positions_shared_by_several_layers_collect_both_gradients():
    a = Dcls2d(2, 2, 3, dilated_kernel_size=5, padding=2, groups=2)
    b = Dcls2d(2, 2, 3, dilated_kernel_size=5, padding=2, groups=2)
    b.P = a.P
    x = torch.randn(1, 2, 6, 6)
    b(a(x)).sum().backward()
    only_b = torch.autograd.grad(b(x.detach()).sum(), b.P)[0]
    assert a.P.grad is b.P.grad and not torch.allclose(a.P.grad, only_b)


def test_extra_repr_says_what_the_layer_is():
    text = repr(Dcls2d(8, 16, 34, dilated_kernel_size=17, padding=8, groups=8, version="gauss", bias=False))
    for part in ("8, 16", "kernel_count=34", "(17, 17)", "gauss", "Gaussian", "padding=(8, 8)", "groups=8", "bias=False"):
        assert part in text


@pytest.mark.parametrize(
    "kwargs,names",
    [
        (dict(kernel_count=0), "kernel_count"),
        (dict(dilated_kernel_size=0), "dilated_kernel_size"),
        (dict(dilated_kernel_size=(3, 3, 3)), "dilated_kernel_size"),
        (dict(in_channels=3, groups=2), "in_channels"),
        (dict(out_channels=3, groups=2), "out_channels"),
        (dict(in_channels=0), "in_channels"),
        (dict(stride=0), "stride"),
        (dict(padding=-1), "padding"),
        (dict(padding="full"), "padding"),
        (dict(padding="same", stride=2), "padding='same'"),
        (dict(version="cubic"), "version"),
        (dict(padding_mode="mirror"), "padding_mode"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, names):
    args = dict(in_channels=4, out_channels=4, kernel_count=3, dilated_kernel_size=5)
    args.update(kwargs)
    with pytest.raises(ValueError, match=names.replace("(", r"\(").replace(")", r"\)")):
        Dcls2d(**args)


def test_bad_inputs_and_parameters_name_the_problem():
    layer = Dcls2d(4, 4, 3, dilated_kernel_size=5, padding=2)
    with pytest.raises(ValueError, match=r"in_channels = 4.*\(2, 3, 8, 8\)"):
        layer(torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\).*\(4, 8\)"):
        layer(torch.randn(4, 8))
    with torch.no_grad():
        layer.P[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="parameter P has non-finite"):
        layer.clamp_parameters()  # training calls it after every optimiser step
    gauss = Dcls2d(4, 4, 3, dilated_kernel_size=5, padding=2, version="gauss")
    state = gauss.state_dict()
    state["SIG"][1, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="parameter SIG has non-finite"):
        gauss.load_state_dict(state)
    with pytest.raises(ValueError, match="P must have shape"):
        construct_kernel(layer.weight, layer.P[:1], None, (5, 5), "v1")
