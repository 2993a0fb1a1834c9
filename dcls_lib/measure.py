"""Measuring what code costs, one way for the book's tables and the benchmarks: wall time with the
device synchronised, the bytes autograd keeps for backward, and peak CUDA memory."""

from __future__ import annotations

import statistics
import time
from typing import Callable, Iterable, TypeVar

import torch
from torch import Tensor

from .validation import check_positive_int

T = TypeVar("T")


def synchronize(device=None) -> None:
    """Wait for ``device``'s queued work (CUDA only; the CPU runs synchronously)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], T], device=None) -> tuple[float, T]:
    """Seconds one ``fn()`` takes, ``device`` synchronised before and after, and what it returned."""
    synchronize(device)
    start = time.perf_counter()
    value = fn()
    synchronize(device)
    return time.perf_counter() - start, value


def median_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1, device=None) -> float:
    """Median wall time in seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    check_positive_int(repeats=repeats)
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup!r}")
    for _ in range(warmup):
        fn()
    return statistics.median(timed(fn, device)[0] for _ in range(repeats))


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
