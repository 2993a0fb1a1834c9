"""What a layer costs, as chapter 3's table shows it: parameters, memory kept for backward, and time,
measured the same way for every layer with :mod:`dcls_lib.measure` (medians of repeated runs, the
device synchronised around them).  These are the book's measurements; ``benchmarks/`` holds the
targets."""

from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch import Tensor, nn

from ..measure import median_time, peak_cuda_memory, saved_for_backward_bytes


def trainable_parameter_count(module: nn.Module) -> int:
    """Number of trainable parameter elements of ``module`` (``models.parameter_count`` counts all)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def forward_backward(module: nn.Module, x: Tensor) -> Callable[[], None]:
    """A closure running one forward and backward pass of ``module`` on ``x`` (gradients discarded)."""

    def step() -> None:
        module.zero_grad(set_to_none=True)
        module(x).sum().backward()

    return step


def layer_cost(layer: nn.Module, x: Tensor, repeats: int) -> dict:
    """One layer's costs on ``x``: weights, positions and widths, bytes saved for backward, median
    seconds of forward+backward and of forward alone; on CUDA also the peak memory and the time under
    bfloat16 autocast (a message where the layer does not support it)."""
    device = x.device
    step = forward_backward(layer, x)
    row = {
        "weights": layer.weight.numel(),
        "positions & widths": sum(p.numel() for n, p in layer.named_parameters() if n in ("P", "SIG")),
        "saved for backward": saved_for_backward_bytes(lambda: layer(x), [x, *layer.parameters()]),
        "forward+backward": median_time(step, repeats=repeats, device=device),
    }
    with torch.no_grad():
        row["forward"] = median_time(lambda: layer(x), repeats=repeats, device=device)
    if device.type == "cuda":
        row["peak memory, fwd+bwd"] = peak_cuda_memory(step, device)
        try:  # mixed precision: the reference library does not support bfloat16
            with torch.autocast("cuda", dtype=torch.bfloat16):
                row["fwd+bwd, bf16 autocast"] = median_time(step, repeats=repeats, device=device)
        except RuntimeError as error:
            row["fwd+bwd, bf16 autocast"] = f"fails ({type(error).__name__})"
    return row


def _cell(key: str, value) -> str:
    if isinstance(value, str):
        return value
    if key in ("saved for backward", "peak memory, fwd+bwd"):
        return f"{value / 2**10:,.1f} KiB"
    if key in ("forward+backward", "forward", "fwd+bwd, bf16 autocast"):
        return f"{value * 1e3:,.2f} ms"
    return f"{value:,}" if value else "-"


def cost_rows(layers: Mapping[str, Callable[[], nn.Module]], x: Tensor, repeats: int, seed: int = 0) -> list[dict]:
    """Chapter 3's table: one row per ``name -> layer factory`` (each built with ``seed``, on ``x``'s
    device), its costs as text, and its forward+backward time over the first layer's."""
    costs = {}
    for name, make in layers.items():
        torch.manual_seed(seed)
        costs[name] = layer_cost(make().to(x.device), x, repeats)
    base = next(iter(costs.values()))["forward+backward"]
    return [{"layer (depthwise)": name, **{key: _cell(key, value) for key, value in row.items()},
             f"fwd+bwd / {next(iter(costs))}": f"{row['forward+backward'] / base:.2f}x"}
            for name, row in costs.items()]
