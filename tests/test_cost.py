"""Measurements (dcls_lib.measure) and chapter 3's cost table (dcls_lib.chapters.cost)."""

import time

import pytest
import torch
from torch import nn

import dcls_lib.layers.convolve as convolve_module
from dcls_lib import Dcls2d
from dcls_lib.chapters.cost import cost_rows, forward_backward, trainable_parameter_count
from dcls_lib.measure import median_time, peak_cuda_memory, saved_for_backward_bytes, timed
from dcls_lib.models import parameter_count


def test_trainable_parameter_count():
    assert trainable_parameter_count(nn.Linear(3, 4)) == 16
    frozen = nn.Linear(3, 4)
    frozen.bias.requires_grad_(False)
    assert trainable_parameter_count(frozen) == 12 and parameter_count(frozen) == 16
    layer = Dcls2d(8, 8, 5, dilated_kernel_size=7, groups=8, version="gauss")
    # weight + P + SIG (2 axes each) + bias
    assert trainable_parameter_count(layer) == 8 * 5 + 2 * 8 * 5 * 2 + 8


def test_saved_for_backward_counts_intermediate_tensors_once():
    x = torch.randn(100, requires_grad=True)
    assert saved_for_backward_bytes(lambda: (x * 2).exp(), [x]) == 100 * 4  # exp keeps its output
    y = torch.randn(50, requires_grad=True)
    assert saved_for_backward_bytes(lambda: y * y, [y]) == 0  # only y, which exists anyway
    assert saved_for_backward_bytes(lambda: y * y) == 50 * 4  # counted once although saved twice


def test_saved_for_backward_of_a_dcls_layer_is_its_dense_kernel(monkeypatch):
    """The kernel is rebuilt in backward: only the dense kernel that the convolution needs is kept.

    On the CPU's FFT path (depthwise, 13x13 and larger) the convolution keeps the spectra of the input
    and the kernel instead (grid 20 + 6 -> 27 cells per axis, 27 // 2 + 1 = 14 frequencies).
    """
    layer = Dcls2d(16, 16, 10, dilated_kernel_size=13, padding="same", groups=16)
    x = torch.randn(2, 16, 20, 20)
    assert saved_for_backward_bytes(lambda: layer(x), [x, *layer.parameters()]) == (2 + 1) * 16 * 27 * 14 * 8
    monkeypatch.setattr(convolve_module, "FFT_MIN_CELLS", 14 * 14)
    assert saved_for_backward_bytes(lambda: layer(x), [x, *layer.parameters()]) == 16 * 1 * 13 * 13 * 4
    dense = nn.Conv2d(16, 16, 13, padding="same", groups=16)
    assert saved_for_backward_bytes(lambda: dense(x), [x, *dense.parameters()]) == 0


def test_median_time_runs_the_function_and_bounds_below():
    calls = []

    def work():
        calls.append(1)
        time.sleep(0.01)

    t = median_time(work, repeats=3, warmup=2)
    assert len(calls) == 5
    assert t >= 0.01
    with pytest.raises(ValueError, match="repeats"):
        median_time(work, repeats=0)


def test_timed_returns_the_seconds_and_the_value():
    seconds, value = timed(lambda: time.sleep(0.01) or 42)
    assert value == 42 and seconds >= 0.01


def test_cost_rows_measure_every_layer_against_the_first():
    x = torch.randn(1, 4, 8, 8)
    rows = cost_rows({"dense 3x3": lambda: nn.Conv2d(4, 4, 3, padding=1, groups=4),
                      "dcls": lambda: Dcls2d(4, 4, 2, dilated_kernel_size=5, padding=2, groups=4)}, x, repeats=1)
    assert [r["layer (depthwise)"] for r in rows] == ["dense 3x3", "dcls"]
    assert rows[0]["fwd+bwd / dense 3x3"] == "1.00x"
    assert rows[0]["positions & widths"] == "-" and rows[1]["positions & widths"] == f"{2 * (2 * 4 * 2)}"  # P and SIG: (2 axes, 4 filters, 2 taps)
    assert rows[1]["saved for backward"] == f"{4 * 5 * 5 * 4 / 2**10:,.1f} KiB"  # the dense kernel


def test_forward_backward_fills_gradients():
    layer = nn.Conv2d(2, 2, 3)
    step = forward_backward(layer, torch.randn(1, 2, 5, 5))
    step()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


def test_peak_cuda_memory_needs_cuda():
    with pytest.raises(ValueError, match="CUDA"):
        peak_cuda_memory(lambda: None, "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_peak_cuda_memory_sees_an_allocation():
    def allocate():
        return torch.empty(1 << 20, device="cuda")

    assert peak_cuda_memory(allocate, "cuda") >= 4 << 20
