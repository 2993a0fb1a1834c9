"""Receptive fields: the theoretical width formula and the gradient-based effective receptive field."""

import pytest
import torch
from torch import nn

from dcls_lib import Dcls2d
from dcls_lib.chapters.receptive_field import (
    conv_stack,
    effective_receptive_field,
    footprint,
    mass_radius,
    theoretical_receptive_field,
)


def test_footprint_and_theoretical_width():
    assert footprint(3) == 3 and footprint(3, 4) == 9 and footprint(17) == 17
    assert theoretical_receptive_field([3, 3, 3]) == 7
    assert theoretical_receptive_field([3, 3], dilations=[1, 4]) == 1 + 2 + 8
    # a stride multiplies the reach of every later layer
    assert theoretical_receptive_field([3, 3], strides=[2, 1]) == 1 + 2 + 2 * 2
    with pytest.raises(ValueError, match="one dilation and one stride per layer"):
        theoretical_receptive_field([3, 3], dilations=[1])
    with pytest.raises(ValueError, match="kernel_size must be a positive int"):
        footprint(0)


def _support(erf):
    return {tuple(i) for i in torch.nonzero(erf > 0).tolist()}


def test_erf_of_one_dense_conv_is_its_footprint():
    conv = nn.Conv2d(2, 2, 3, padding="same", bias=False)
    erf = effective_receptive_field(conv, 2, 9, samples=3)
    assert erf.shape == (9, 9)
    assert torch.isclose(erf.sum(), torch.tensor(1.0))
    assert _support(erf) == {(r, c) for r in range(3, 6) for c in range(3, 6)}


def test_erf_of_a_dilated_conv_has_holes():
    conv = nn.Conv2d(1, 1, 3, padding="same", dilation=3, bias=False)
    erf = effective_receptive_field(conv, 1, 11, samples=2)
    assert _support(erf) == {(r, c) for r in (2, 5, 8) for c in (2, 5, 8)}


def test_erf_of_a_dcls_layer_is_where_its_taps_are():
    layer = Dcls2d(1, 1, 3, dilated_kernel_size=9, padding="same", bias=False, version="v1")
    with torch.no_grad():
        layer.P.copy_(torch.tensor([[-4.0, 0.0, 2.0], [3.0, 0.0, -1.0]]).view(2, 1, 1, 3))
        layer.weight.copy_(torch.tensor([1.0, -2.0, 0.5]).view(1, 1, 3))
    erf = effective_receptive_field(layer, 1, 15, samples=2)
    # cross-correlation: a tap at offset p reads input pixel centre + p
    assert _support(erf) == {(7 - 4, 7 + 3), (7, 7), (7 + 2, 7 - 1)}
    # |weight| sets the share of each input pixel
    assert torch.isclose(erf[7, 7], torch.tensor(2.0 / 3.5))


def test_erf_of_stacks_grows_with_depth():
    shallow = effective_receptive_field(conv_stack(1, 2), 2, 15, samples=2)
    deep = effective_receptive_field(conv_stack(3, 2), 2, 15, samples=2)
    assert len(_support(shallow)) == 9
    assert {r for r, _ in _support(deep)} == set(range(7 - 3, 7 + 4))
    assert mass_radius(deep) > mass_radius(shallow)


def test_conv_stack_builds_the_requested_layers():
    dense = conv_stack(3, 4, kernel_size=3, dilation=2, seed=1)
    convs = [m for m in dense if isinstance(m, nn.Conv2d)]
    assert len(convs) == 3 and all(c.dilation == (2, 2) for c in convs)
    assert sum(isinstance(m, nn.ReLU) for m in dense) == 2
    ref = conv_stack(1, 4, kernel_size=17, taps=9, seed=1)[0]
    uniform = conv_stack(1, 4, kernel_size=17, taps=9, positions="uniform", seed=1)[0]
    assert isinstance(ref, Dcls2d) and ref.dilated_kernel_size == (17, 17)
    # the reference initialisation keeps taps near the centre; uniform spreads them over the grid
    assert ref.P.abs().mean() < 1.0 < uniform.P.abs().mean()
    assert uniform.P.min() >= -8 and uniform.P.max() <= 8
    # the seed makes stacks reproducible and leaves the global generator alone
    state = torch.random.get_rng_state()
    again = conv_stack(3, 4, kernel_size=3, dilation=2, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(again[0].weight, convs[0].weight)
    with pytest.raises(ValueError, match="dilation must be 1"):
        conv_stack(2, 2, kernel_size=9, dilation=2, taps=3)
    with pytest.raises(ValueError, match="positions"):
        conv_stack(2, 2, taps=3, positions="random")


def test_effective_receptive_field_rejects_models_that_change_size():
    with pytest.raises(ValueError, match="keep the spatial size"):
        effective_receptive_field(nn.Conv2d(1, 1, 3), 1, 9, samples=1)


def test_mass_radius():
    erf = torch.zeros(9, 9)
    erf[4, 4] = 1.0
    assert mass_radius(erf) == 0.0
    erf[4, 7] = 1.0  # half of the mass 3 pixels to the right
    assert mass_radius(erf, 0.5) == 0.0
    assert mass_radius(erf, 0.9) == 3.0
    with pytest.raises(ValueError, match="fraction"):
        mass_radius(erf, 0.0)
