"""Learning tap positions: fitting a DCLS kernel to a target moves the taps onto the target's cells."""

import pytest
import torch

from dcls_lib import Dcls2d
from dcls_lib.chapters.kernel_fit import fit_kernel, kernel_loss


def _one_tap(version, row, col, size=9):
    layer = Dcls2d(1, 1, 1, dilated_kernel_size=size, bias=False, version=version)
    with torch.no_grad():
        layer.P.copy_(torch.tensor([row, col]).view(2, 1, 1, 1))
        layer.weight.fill_(1.0)
    return layer


@pytest.mark.parametrize("version", ["gauss", "v1"])
def test_a_tap_moves_onto_its_target(version):
    target = torch.zeros(1, 1, 9, 9)
    target[0, 0, 4 + 1, 4 + 2] = 1.0  # one cell at (row +1, col +2)
    layer = _one_tap(version, 0.6, 1.4)
    history = fit_kernel(layer, target, steps=150, lr=0.02)
    assert history.steps == 150
    assert history.positions.shape == (151, 2, 1, 1, 1)
    assert torch.equal(history.positions[0].flatten(), torch.tensor([0.6, 1.4]))
    final = history.positions[-1].flatten()
    assert torch.allclose(final, torch.tensor([1.0, 2.0]), atol=0.15)
    assert history.loss[-1] < 0.5 * history.loss[0]
    assert torch.isclose(history.loss[-1], kernel_loss(layer, target).detach())
    assert (history.sigmas is not None) == (version == "gauss")


def test_positions_stay_on_the_grid():
    target = torch.zeros(1, 1, 7, 7)
    target[0, 0, 3, 6] = 1.0  # at the right edge
    layer = _one_tap("gauss", 0.0, 2.5, size=7)
    history = fit_kernel(layer, target, steps=60, lr=0.2)
    assert history.positions.max() <= 3.0 and history.positions.min() >= -3.0


def test_bad_target_shape():
    layer = _one_tap("v1", 0.0, 0.0)
    with pytest.raises(ValueError, match="target must have the kernel's shape"):
        fit_kernel(layer, torch.zeros(9, 9), steps=1)
    with pytest.raises(ValueError, match="steps"):
        fit_kernel(layer, torch.zeros(1, 1, 9, 9), steps=-1)
