"""What a layer costs: parameters, memory kept for backward, and time, measured the same way for all.

Used by the book to compare a DCLS layer with dense convolutions on the same input, in the same
process (timings are medians of repeated runs; on CUDA the device is synchronised around them).
These are measurements for the book's tables, not benchmarks: ``benchmarks/`` holds those.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Iterable

import torch
from torch import Tensor, nn


def parameter_count(module: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameter elements of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def saved_for_backward_bytes(fn: Callable[[], Tensor], existing: Iterable[Tensor] = ()) -> int:
    """Bytes of the tensors that autograd keeps for the backward pass of ``fn()``.

    Counts each storage once (a tensor saved twice, or views of one tensor, cost one storage) and
    leaves out the storages of ``existing`` tensors (the parameters and inputs, which exist anyway).
    """
    known = {t.untyped_storage().data_ptr() for t in existing}
    storages: dict[int, int] = {}

    def pack(tensor: Tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in known:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = fn()
    del out
    return sum(storages.values())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1, device=None) -> float:
    """Median wall time in seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def forward_backward(module: nn.Module, x: Tensor) -> Callable[[], None]:
    """A closure running one forward and backward pass of ``module`` on ``x`` (gradients discarded)."""

    def step() -> None:
        module.zero_grad(set_to_none=True)
        module(x).sum().backward()

    return step


def peak_cuda_memory(fn: Callable[[], object], device) -> int:
    """Peak CUDA memory allocated (bytes) while running ``fn()``, above what was allocated before."""
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError(f"peak memory is measured on CUDA devices only, got {device}")
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before
