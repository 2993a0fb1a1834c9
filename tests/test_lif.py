"""LIF neurons: membrane dynamics against the closed form, firing and reset, the surrogate gradient."""

import math

import pytest
import torch

from dcls_lib.snn import LIF, LeakyReadout, lif_dynamics, spike


def test_membrane_matches_the_closed_form_for_a_constant_input():
    tau, current, steps = 4.0, 0.2, 12
    beta = 1 - 1 / tau
    x = torch.full((1, 1, steps), current, dtype=torch.float64)
    spikes, potential = lif_dynamics(x, tau, threshold=10.0)
    t = torch.arange(steps, dtype=torch.float64)
    closed_form = current * (1 - beta ** (t + 1)) / (1 - beta)
    torch.testing.assert_close(potential[0, 0], closed_form)
    assert spikes.sum() == 0
    assert potential[0, 0, -1] < current * tau, "approaches I * tau from below"


def test_fires_when_the_threshold_is_crossed_and_resets():
    x = torch.full((1, 1, 9), 0.375)  # exact in binary: 0.375, 0.75, 1.125 -> spike
    spikes, potential = lif_dynamics(x, tau=math.inf, threshold=1.0, reset="zero")
    assert torch.nonzero(spikes[0, 0]).flatten().tolist() == [2, 5, 8]
    assert potential[0, 0, 3].item() == 0.375, "reset to zero after the spike"
    spikes, _ = lif_dynamics(x, tau=math.inf, threshold=1.0, reset="subtract")
    # 0.375, 0.75, 1.125 (spike, 0.125 left), 0.5, 0.875, 1.25 (spike, 0.25 left), 0.625, 1.0 (spike)
    assert torch.nonzero(spikes[0, 0]).flatten().tolist() == [2, 5, 7]
    assert set(LIF(tau=math.inf)(x).unique().tolist()) == {0.0, 1.0}


def test_tau_one_forgets_everything_after_a_step():
    x = torch.tensor([[[0.6, 0.6, 1.2, 0.0]]])
    spikes, potential = lif_dynamics(x, tau=1.0)
    torch.testing.assert_close(potential, x)
    assert spikes[0, 0].tolist() == [0.0, 0.0, 1.0, 0.0]


def test_surrogate_gradient_peaks_at_the_threshold():
    x = torch.tensor([-10.0, -0.05, 0.0, 0.05, 10.0], requires_grad=True)
    spike(x, alpha=5.0).sum().backward()
    grad = x.grad
    assert grad[2].item() == pytest.approx(2.5), "alpha / 2 at the threshold"
    assert grad[1] > 1.0 and grad[3] > 1.0, "nonzero near the threshold"
    assert grad[0] < 1e-3 and grad[4] < 1e-3, "vanishing far from it"
    assert torch.equal(spike(x.detach()), torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0]))


def test_gradient_flows_back_through_time_through_the_membrane():
    x = torch.full((1, 1, 4), 0.3, requires_grad=True)
    spikes, _ = lif_dynamics(x, tau=2.0, threshold=0.55)
    spikes[0, 0, 3].backward()
    assert (x.grad[0, 0] != 0).all(), "the spike at t=3 depends on inputs at t=0..3"
    assert x.grad[0, 0, 3] > x.grad[0, 0, 0] > 0, "older inputs have leaked more"


def test_leaky_readout_integrates_without_firing():
    x = torch.zeros(1, 2, 6)
    x[0, :, 0] = torch.tensor([1.0, 100.0])
    trace = LeakyReadout(tau=2.0)(x)
    torch.testing.assert_close(trace[0, 0], 0.5 ** torch.arange(6.0))
    assert trace[0, 1, 0] == 100.0, "no threshold, no reset"


def test_bad_arguments_name_the_problem():
    with pytest.raises(ValueError, match="tau"):
        LIF(tau=0.5)
    with pytest.raises(ValueError, match="reset"):
        LIF(reset="never")
    with pytest.raises(ValueError, match="batch, neurons, time"):
        LIF()(torch.zeros(3, 4))
