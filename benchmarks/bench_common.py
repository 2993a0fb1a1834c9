"""What every benchmark shares: a line saying which machine ran it, and interleaved timing.

Machines differ (an AVX-512 Intel Xeon ran the DCLS layer 1.6x slower than an AMD machine before the
kernel lost its denormals), so each benchmark prints the CPU model, core count, torch version and
whether the CPU has AVX-512, and the GPU where one is used.
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Callable

import torch

from dcls_lib.measure import timed
from dcls_lib.runtime import run_label


def cpu_description() -> str:
    """'<model name>, <n> cores (<t> torch threads), AVX-512 yes/no' from /proc/cpuinfo where there is one."""
    model, avx512 = "unknown CPU", "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        text = cpuinfo.read_text()
        names = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")]
        model = names[0] if names else model
        avx512 = "yes" if "avx512f" in text else "no"
    return f"{model}, {os.cpu_count()} cores ({torch.get_num_threads()} torch threads), AVX-512 {avx512}"


def machine_line(device: torch.device | str = "cpu", profile: str = "benchmark") -> str:
    """One line for a benchmark's output: the run label (device, torch, commit, date) and the CPU."""
    return f"{run_label(device, profile=profile)}; {cpu_description()}"


def interleaved(fns: dict[str, Callable[[], object]], rounds: int, device="cpu", warmup: int = 1) -> dict[str, list[float]]:
    """Times of each function over ``rounds`` rounds, one call of each per round (noise hits all alike)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(timed(fn, device)[0])
    return times


def median_ratio(times: list[float], base: list[float]) -> float:
    """Median over rounds of time / base time of the same round."""
    return statistics.median(t / b for t, b in zip(times, base))
