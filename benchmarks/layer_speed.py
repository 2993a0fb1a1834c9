"""Speed of a DCLS layer: forward+backward against nn.Conv2d and the reference library (dcls 0.1.1).

The ConvNeXt-dcls depthwise layer: C=96, 17x17, 34 taps, batch 8, 56x56.  The three run in
interleaved rounds in one process; each round gives a ratio against the plain depthwise 17x17
nn.Conv2d of the same round, and the medians of those ratios are printed (machines here are
noisy).  Target on CPU: ours at most 1.05x the plain conv (the reference: 1.2-1.3x).

Run: python benchmarks/layer_speed.py [--device cuda] [--rounds 15] [--version gauss]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import torch


def _timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--version", default="gauss")
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    device = torch.device(args.device)

    logging.disable(logging.WARNING)
    from DCLS.construct.modules import Dcls2d as ReferenceDcls2d

    from dcls_lib import Dcls2d
    from dcls_lib.runtime import run_label

    torch.manual_seed(0)
    C, K, taps = 96, 17, 34
    layers = {
        "nn.Conv2d 17x17 depthwise": torch.nn.Conv2d(C, C, K, padding=K // 2, groups=C),
        "ours": Dcls2d(C, C, taps, dilated_kernel_size=K, padding=K // 2, groups=C, version=args.version),
        "reference": ReferenceDcls2d(C, C, taps, dilated_kernel_size=K, padding=K // 2, groups=C,
                                     version=args.version, use_implicit_gemm=False),
    }
    for layer in layers.values():
        layer.to(device)
    x = torch.randn(args.batch, C, 56, 56, device=device, requires_grad=True)

    def step(layer):
        layer(x).sum().backward()

    def build(layer):
        kernel = layer.construct_kernel() if hasattr(layer, "construct_kernel") else layer.DCK(layer.weight, layer.P, layer.SIG)
        kernel.sum().backward()

    for layer in layers.values():  # warm-up: allocator, cuDNN/oneDNN choices, the reference's index cache
        step(layer)
    times = {name: [] for name in layers}
    builds = {"ours": [], "reference": []}
    for _ in range(args.rounds):
        for name, layer in layers.items():
            times[name].append(_timed(lambda: step(layer), device))
        for name in builds:
            builds[name].append(_timed(lambda: build(layers[name]), device))

    base = times["nn.Conv2d 17x17 depthwise"]
    print(f"# DCLS layer speed, forward+backward, {args.version}, {args.batch}x{C}x56x56, {K}x{K}, {taps} taps")
    print(f"{run_label(device, profile='benchmark')}; {args.rounds} interleaved rounds, medians\n")
    print("| layer | median time | median ratio to nn.Conv2d (paired per round) |")
    print("|---|---|---|")
    for name, ts in times.items():
        ratio = statistics.median(t / b for t, b in zip(ts, base))
        print(f"| {name} | {statistics.median(ts) * 1e3:.1f} ms | {ratio:.3f}x |")
    print("\n| kernel construction alone (forward+backward) | median time |")
    print("|---|---|")
    for name, ts in builds.items():
        print(f"| {name} | {statistics.median(ts) * 1e3:.2f} ms |")
    ratio = statistics.median(b / o for b, o in zip(builds["reference"], builds["ours"]))
    print(f"\nKernel construction: ours is {ratio:.0f}x faster than the reference (median of paired ratios).")


if __name__ == "__main__":
    main()
