"""Outputs and gradients equal the reference library (dcls 0.1.1) given the same parameters.

The reference is run as published; its parameters are converted to this library's convention with
``from_reference_state_dict``.  Shapes, strides, paddings, groups and parameter values are randomised.
"""

import logging
import random

import pytest
import torch

from dcls_lib import Dcls1d, Dcls2d, Dcls3d, from_reference_state_dict

logging.getLogger().setLevel(logging.ERROR)  # the reference logs warnings about its CUDA fast path
reference = pytest.importorskip("DCLS.construct.modules", reason="the reference library dcls==0.1.1 is a test dependency")

OURS = {1: Dcls1d, 2: Dcls2d, 3: Dcls3d}
REFERENCE = {1: reference.Dcls1d, 2: reference.Dcls2d, 3: reference.Dcls3d}
VERSIONS = ["gauss", "v1", "max", "v0"]


def _random_config(rng: random.Random, ndim: int, square: bool):
    groups = rng.choice([1, 2, 3])
    size = rng.choice([3, 4, 5, 7]) if ndim == 3 else rng.choice([3, 4, 5, 7, 9])
    sizes = (size,) * ndim if square else tuple(rng.choice([3, 4, 5, 6]) for _ in range(ndim))
    return dict(
        in_channels=groups * rng.randint(1, 3),
        out_channels=groups * rng.randint(1, 3),
        kernel_count=rng.randint(1, 6),
        stride=rng.choice([1, 2]),
        padding=rng.randint(0, 2),
        dilated_kernel_size=sizes,
        groups=groups,
        bias=rng.random() < 0.5,
    )


def _reference_layer(ndim, version, config):
    kwargs = dict(config, version=version)
    if ndim == 2:
        kwargs["use_implicit_gemm"] = False
    layer = REFERENCE[ndim](**kwargs).double()
    with torch.no_grad():
        for d, size in enumerate(config["dilated_kernel_size"]):
            layer.P[d].uniform_(-(size // 2) - 0.5, size // 2 + 0.5)  # some taps partly off the grid
        if layer.SIG is not None:
            layer.SIG.uniform_(-0.8, 0.8)
    return layer


def _grads(out, layer, upstream):
    names = [n for n in ("weight", "P", "SIG", "bias") if getattr(layer, n) is not None]
    grads = torch.autograd.grad(out, [getattr(layer, n) for n in names], upstream)
    return dict(zip(names, grads))


def _assert_close(actual, expected, what):
    scale = expected.abs().max().clamp_min(1e-12)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * scale.item(), msg=what)


SHAPES = [(1, True), (2, True), (2, False), (3, True), (3, False)]


@pytest.mark.parametrize("ndim,square", SHAPES, ids=["1d", "2d", "2d-non-square", "3d", "3d-non-square"])
@pytest.mark.parametrize("version", VERSIONS)
def test_outputs_and_gradients_match_the_reference(ndim, version, square):
    rng = random.Random(f"{ndim}-{version}-{square}")
    torch.manual_seed(rng.randint(0, 2**31))
    for trial in range(3):
        config = _random_config(rng, ndim, square)
        ref = _reference_layer(ndim, version, config)
        ours = OURS[ndim](**config, version=version).double()
        ours.load_state_dict(from_reference_state_dict(ref.state_dict(), version, ndim, config["dilated_kernel_size"]))

        spatial = [rng.randint(9, 12) for _ in range(ndim)]
        x = torch.randn(2, config["in_channels"], *spatial, dtype=torch.float64, requires_grad=True)
        out_ref, out_ours = ref(x), ours(x)
        _assert_close(out_ours, out_ref, f"output, trial {trial}, {config}")

        upstream = torch.randn_like(out_ref)
        grads_ref, grads_ours = _grads(out_ref, ref, upstream), _grads(out_ours, ours, upstream)
        assert grads_ref.keys() == grads_ours.keys()
        for name in ("P", "SIG"):
            if name in grads_ref:  # gradients follow the parameters into our convention
                grads_ref[name] = from_reference_state_dict({name: grads_ref[name]}, version, ndim)[name]
        for name in grads_ref:
            _assert_close(grads_ours[name], grads_ref[name], f"grad {name}, trial {trial}, {config}")
        gx_ref = torch.autograd.grad(ref(x), x, upstream)[0]
        gx_ours = torch.autograd.grad(ours(x), x, upstream)[0]
        _assert_close(gx_ours, gx_ref, f"input grad, trial {trial}, {config}")


@pytest.mark.parametrize("version", VERSIONS)
def test_float32_outputs_match_the_reference(version):
    """The everyday dtype: the depthwise 17x17 layer of the published ConvNeXt, in float32."""
    torch.manual_seed(0)
    config = dict(in_channels=8, out_channels=8, kernel_count=34, padding=8, dilated_kernel_size=17, groups=8)
    ref = REFERENCE[2](**config, version=version, use_implicit_gemm=False)
    ours = Dcls2d(**config, version=version)
    ours.load_reference_state_dict(ref.state_dict())
    x = torch.randn(2, 8, 20, 20)
    _assert_close(ours(x), ref(x), "float32 output")


def test_reference_layout_conversion_reorders_axes():
    """What the converter does to a 2-D gauss P: reverse the axes (the reference's P[0] moves columns)."""
    P = torch.arange(2 * 3).reshape(2, 1, 1, 3).double()
    converted = from_reference_state_dict({"block.conv.P": P, "block.conv.weight": P}, "gauss", 2)
    assert torch.equal(converted["block.conv.P"], P.flip(0))
    assert converted["block.conv.weight"] is P
    assert torch.equal(from_reference_state_dict({"P": P}, "v0", 2)["P"], P)
