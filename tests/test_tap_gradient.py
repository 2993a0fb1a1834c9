"""One tap's kernel and its gradient with respect to position: autograd, finite differences, formula."""

import pytest
import torch

from dcls_lib.chapters.tap_gradient import (
    autograd_gradient,
    finite_difference_gradient,
    tap_loss,
    kernel_position_derivative,
    loss_landscape,
    tap_kernel,
)


@pytest.mark.parametrize("version", ["v1", "gauss", "max", "v0"])
def test_a_tap_spreads_unit_weight(version):
    kernel = tap_kernel(version, 9, (0.3, -1.6))
    assert kernel.shape == (9, 9)
    assert torch.isclose(kernel.sum(), torch.tensor(1.0, dtype=kernel.dtype), atol=1e-6)


def test_bilinear_tap_at_a_cell_is_one_hot_and_between_cells_is_shared():
    kernel = tap_kernel("v1", 7, (1.0, -2.0))
    one_hot = torch.zeros(7, 7, dtype=kernel.dtype)
    one_hot[4, 1] = 1.0
    assert torch.allclose(kernel, one_hot, atol=1e-6)  # normalisation divides by 1 + 1e-7
    kernel = tap_kernel("v1", 7, (0.0, 0.25))
    assert torch.allclose(kernel[3, 3:5], torch.tensor([0.75, 0.25], dtype=kernel.dtype))


def test_kernel_derivative_of_a_bilinear_tap():
    dk = kernel_position_derivative("v1", 5, (0.0, 0.3))
    assert dk.shape == (2, 5, 5)
    expected = torch.zeros(5, 5, dtype=dk.dtype)
    expected[2, 2], expected[2, 3] = -1.0, 1.0  # moving right takes weight from cell 0 to cell +1
    assert torch.allclose(dk[1], expected, atol=1e-6)
    assert torch.allclose(dk[0], torch.zeros(5, 5, dtype=dk.dtype))  # moving along rows: no cell changes


@pytest.mark.parametrize("version,sigma", [("v1", None), ("gauss", None), ("gauss", 0.73), ("max", 0.5)])
@pytest.mark.parametrize("position", [(0.3, 1.3), (-0.2, -0.6), (1.1, 2.4)])
def test_autograd_matches_finite_differences(version, sigma, position):
    target = torch.zeros(9, 9, dtype=torch.float64)
    target[4, 6] = 1.0
    target[2, 3] = -0.5

    def loss(p):
        return tap_loss(version, 9, p, target, sigma)

    assert torch.allclose(autograd_gradient(loss, position), finite_difference_gradient(loss, position), atol=1e-7)


def test_loss_landscape_gradient_is_the_slope_of_the_loss():
    target = torch.zeros(9, 9, dtype=torch.float64)
    target[4, 6] = 1.0
    columns = torch.linspace(-3, 3, 241, dtype=torch.float64)
    losses, grads = loss_landscape("gauss", 9, columns, target, sigma=0.5)
    assert losses.shape == grads.shape == columns.shape
    slope = torch.gradient(losses, spacing=(columns,))[0]
    assert torch.allclose(slope[1:-1], grads[1:-1], atol=2e-2)
    assert float(columns[losses.argmin()]) == pytest.approx(2.0, abs=0.05)


def test_tap_kernel_checks_position():
    with pytest.raises(ValueError, match="position must be"):
        tap_kernel("v1", 5, (0.0, 1.0, 2.0))
    with pytest.raises(ValueError, match="target must be"):
        tap_loss("v1", 5, (0.0, 0.0), torch.zeros(3, 3))
