"""SynapticDelays: integer delays after rounding, gradients to positions, the recipe's schedule and groups."""

import math

import pytest
import torch

from dcls_lib.recipe import SigmaSchedule, param_groups, set_sigma
from dcls_lib.snn import DelaySNN, SynapticDelays
from dcls_lib.snn.train import DelayRunConfig


def shifted(x: torch.Tensor, delay: int) -> torch.Tensor:
    """x delayed by ``delay`` steps along the last axis (zeros enter at the start)."""
    out = torch.zeros_like(x)
    if delay < x.shape[-1]:
        out[..., delay:] = x[..., : x.shape[-1] - delay]
    return out


def expected_output(x, weight, delays):
    """sum_i w[o, i] * x_i(t - d[o, i]), written out synapse by synapse."""
    batch, n_in, steps = x.shape
    n_out = weight.shape[0]
    y = torch.zeros(batch, n_out, steps, dtype=x.dtype)
    for o in range(n_out):
        for i in range(n_in):
            y[:, o] += weight[o, i] * shifted(x[:, i], int(delays[o, i]))
    return y


def test_rounded_delays_shift_spike_trains_exactly():
    torch.manual_seed(0)
    layer = SynapticDelays(3, 2, max_delay=7)
    learned = torch.tensor([[2.3, 4.6, 0.2], [6.0, 1.49, 3.51]])  # real-valued, as after training
    with torch.no_grad():
        layer.positions.copy_((layer.delay_offset - learned).view_as(layer.positions))
        layer.weight.copy_(torch.tensor([[1.0, 2.0, -1.0], [0.5, 1.0, 3.0]]).unsqueeze(-1))
    assert layer.delays().tolist() == [[2, 5, 0], [6, 1, 4]]

    x = (torch.rand(4, 3, 20) < 0.3).float()
    layer.eval()
    y = layer(x)
    want = expected_output(x, layer.weight.detach()[..., 0], layer.delays())
    assert y.shape == (4, 2, 20)
    # exact zeros wherever no delayed spike lands, and the spike's weight (to float precision) where one does
    assert torch.equal(y == 0, want == 0)
    torch.testing.assert_close(y, want, rtol=1e-6, atol=1e-6)
    # one nonzero kernel cell per synapse, at index max_delay - 1 - delay
    kernel = layer.kernel()
    assert torch.equal((kernel != 0).sum(-1), torch.ones(2, 3, dtype=torch.long))
    for o in range(2):
        for i in range(3):
            assert kernel[o, i, 6 - layer.delays()[o, i]] != 0


def test_delay_zero_is_the_identity_and_tail_keeps_late_spikes():
    layer = SynapticDelays(1, 1, max_delay=5, tail=4)
    layer.set_delays(torch.tensor([[3]]))
    with torch.no_grad():
        layer.weight.fill_(1.0)
    x = torch.zeros(1, 1, 6)
    x[0, 0, 1] = x[0, 0, 5] = 1.0
    layer.eval()
    y = layer(x)
    assert y.shape == (1, 1, 10)
    assert torch.nonzero(y[0, 0]).flatten().tolist() == [4, 8]  # the spike at t=5 arrives after the input's end
    layer.set_delays(torch.tensor([[0]]))
    torch.testing.assert_close(layer(x)[..., :6], x, rtol=1e-6, atol=0)


def test_gradients_reach_the_positions_and_match_finite_differences():
    torch.manual_seed(1)
    layer = SynapticDelays(4, 3, max_delay=9, dtype=torch.float64)
    layer.set_sigma(1.5)
    x = torch.rand(2, 4, 16, dtype=torch.float64)
    target = torch.rand(2, 3, 16, dtype=torch.float64)

    def loss_fn():
        return ((layer(x) - target) ** 2).sum()

    loss_fn().backward()
    grad = layer.positions.grad
    assert grad is not None and torch.isfinite(grad).all()
    assert (grad.abs() > 1e-8).all(), "every synapse's position gets a gradient"
    assert layer.dcls.SIG.grad is None, "SIG is scheduled, not learned"
    eps = 1e-6
    with torch.no_grad():
        for index in [(0, 0, 0, 0), (0, 2, 3, 0), (0, 1, 1, 0)]:
            layer.positions[index] += eps
            up = loss_fn()
            layer.positions[index] -= 2 * eps
            down = loss_fn()
            layer.positions[index] += eps
            assert (up - down) / (2 * eps) == pytest.approx(float(grad[index]), rel=1e-5)


def test_training_mode_interpolates_and_eval_mode_rounds():
    torch.manual_seed(2)
    layer = SynapticDelays(2, 2, max_delay=9)
    x = (torch.rand(1, 2, 12) < 0.5).float()
    train_out = layer(x)
    layer.eval()
    assert not torch.allclose(layer(x), train_out), "a wide Gaussian spreads spikes over time"
    layer.discrete_eval = False
    torch.testing.assert_close(layer(x), train_out)


def test_set_delays_round_trip_and_clamping():
    layer = SynapticDelays(3, 2, max_delay=6)  # even size: delays 0..5 all on the grid
    delays = torch.tensor([[0, 5, 2], [3, 1, 4]])
    layer.set_delays(delays)
    assert torch.equal(layer.delays(), delays)
    with torch.no_grad():
        layer.positions.add_(100.0)
    layer.clamp_parameters()
    assert layer.delays().min() == 0 and layer.delays(rounded=False).min() == 0
    with torch.no_grad():
        layer.positions.sub_(200.0)
    layer.clamp_parameters()
    assert layer.delays().max() == 5
    with torch.no_grad():
        layer.positions.add_(0.4)
    layer.round_positions()
    assert torch.equal(layer.positions, layer.positions.round())


def test_max_delay_one_is_a_linear_layer_at_every_step():
    layer = SynapticDelays(5, 3, max_delay=1)
    x = torch.rand(2, 5, 7)
    want = torch.einsum("oi,bit->bot", layer.weight.detach()[..., 0], x)
    torch.testing.assert_close(layer(x), want, rtol=1e-6, atol=1e-6)
    layer.eval()
    torch.testing.assert_close(layer(x), want, rtol=1e-6, atol=1e-6)


def test_fixed_delays_are_integers_and_frozen():
    torch.manual_seed(3)
    layer = SynapticDelays(6, 4, max_delay=8, learn_delays=False)
    assert not layer.positions.requires_grad
    assert torch.equal(layer.positions, layer.positions.round())
    x = torch.rand(1, 6, 10)
    torch.testing.assert_close(layer(x), layer.eval()(x))


def test_sigma_schedule_follows_the_recipe():
    schedule = SigmaSchedule.exponential(25, epochs=100)
    assert (schedule.start, schedule.end, schedule.decay_epochs) == (12.0, 0.23, 25)
    values = [schedule(e) for e in range(100)]
    assert values[0] == 12.0
    assert values[25] == pytest.approx(0.23) and values[99] == pytest.approx(0.23)
    assert all(a > b for a, b in zip(values[:25], values[1:26])), "decreasing over the first quarter"
    assert values[12] / values[11] == pytest.approx(values[1] / values[0]), "exponential decay"
    assert SigmaSchedule.constant(0.23)(50) == 0.23
    assert SigmaSchedule.exponential(1, epochs=10)(5) == 0.0, "nothing to decay without delays"
    with pytest.raises(ValueError, match="SigmaSchedule"):
        SigmaSchedule(-1.0)


def test_set_sigma_reaches_every_layer():
    model = DelaySNN(4, 3, n_hidden=5, n_hidden_layers=2, max_delay=7)
    set_sigma(model, 0.5)
    sigmas = [m.sigma for m in model.modules() if isinstance(m, SynapticDelays)]
    assert sigmas == [0.5, 0.5, 0.5]
    with pytest.raises(ValueError, match="sigma"):
        set_sigma(model, -1)


def test_param_groups_give_positions_100x_lr_and_no_weight_decay():
    model = DelaySNN(4, 3, n_hidden=5, max_delay=7)
    config = DelayRunConfig()
    groups = {g["name"]: g for g in param_groups(model, config.lr, config.weight_decay, config.position_lr_scale)}
    assert groups["positions"]["lr"] == pytest.approx(100 * config.lr) and groups["positions"]["weight_decay"] == 0.0
    assert groups["decay"]["lr"] == config.lr and groups["decay"]["weight_decay"] == config.weight_decay
    assert groups["no_decay"]["weight_decay"] == 0.0
    grouped = [id(p) for g in groups.values() for p in g["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(grouped) == sorted(trainable) and len(set(grouped)) == len(grouped)
    sigmas = [id(m.dcls.SIG) for m in model.modules() if isinstance(m, SynapticDelays)]
    assert not set(sigmas) & set(grouped)
    torch.optim.Adam(list(groups.values()))  # a valid optimiser configuration
    fixed = DelaySNN(4, 3, n_hidden=5, max_delay=7, delays="random")
    assert "positions" not in {g["name"] for g in param_groups(fixed, 1e-3, 0.0, config.position_lr_scale)}


def test_bad_arguments_name_the_problem():
    with pytest.raises(ValueError, match="max_delay"):
        SynapticDelays(2, 2, max_delay=0)
    with pytest.raises(ValueError, match="version"):
        SynapticDelays(2, 2, max_delay=5, version="v0")
    layer = SynapticDelays(2, 3, max_delay=5)
    with pytest.raises(ValueError, match="in_features=2"):
        layer(torch.rand(1, 3, 10))
    with pytest.raises(ValueError, match="shape"):
        layer.set_delays(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="0 .. 4"):
        layer.set_delays(torch.full((3, 2), 5))
    with pytest.raises(ValueError, match="delays must be one of"):
        DelaySNN(2, 2, delays="sometimes")


def test_layer_moves_with_to_and_keeps_its_delays():
    layer = SynapticDelays(2, 2, max_delay=5)
    layer.set_delays(torch.tensor([[1, 2], [3, 4]]))
    layer = layer.to(torch.float64)
    assert layer.weight.dtype == torch.float64
    assert layer.delays().tolist() == [[1, 2], [3, 4]]
    assert math.isclose(layer.sigma, 2.0)
