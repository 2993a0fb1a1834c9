"""Speed of a DCLS layer: forward+backward against nn.Conv2d and the reference library (dcls 0.1.1).

The ConvNeXt-dcls depthwise layer: C=96, 17x17, 34 taps, batch 8, 56x56.  They run in interleaved
rounds in one process; each round gives a ratio against the plain depthwise 17x17 nn.Conv2d of the
same round, and the medians of those ratios are printed (machines here are noisy).  Also against
what the baseline model pays: its own 7x7 depthwise nn.Conv2d (and a 3x3, ResNet's size), each in
its faster memory format.  Target on CPU: ours at most 1.05x the plain 17x17 conv.

Run: python benchmarks/layer_speed.py [--device cuda] [--rounds 15] [--version gauss]
"""

from __future__ import annotations

import argparse
import logging
import statistics

import torch

from bench_common import interleaved, machine_line, median_ratio


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

    torch.manual_seed(0)
    C, K, taps = 96, 17, 34
    layers = {
        "nn.Conv2d 17x17 depthwise": torch.nn.Conv2d(C, C, K, padding=K // 2, groups=C),
        "ours": Dcls2d(C, C, taps, dilated_kernel_size=K, padding=K // 2, groups=C, version=args.version),
        "reference": ReferenceDcls2d(C, C, taps, dilated_kernel_size=K, padding=K // 2, groups=C,
                                     version=args.version, use_implicit_gemm=False),
    }
    small = {f"nn.Conv2d {k}x{k} depthwise ({fmt})": (torch.nn.Conv2d(C, C, k, padding=k // 2, groups=C), fmt)
             for k in (7, 3) for fmt in ("contiguous", "channels-last")}
    for layer in list(layers.values()) + [m for m, _ in small.values()]:
        layer.to(device)
    x = torch.randn(args.batch, C, 56, 56, device=device, requires_grad=True)
    x_last = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()

    def step(layer, inp=x):
        layer(inp).sum().backward()

    def build(layer):
        kernel = layer.construct_kernel() if hasattr(layer, "construct_kernel") else layer.DCK(layer.weight, layer.P, layer.SIG)
        kernel.sum().backward()

    fns = {name: (lambda layer=layer: step(layer)) for name, layer in layers.items()}
    for name, (layer, fmt) in small.items():
        fns[name] = lambda layer=layer, fmt=fmt: step(layer, x_last if fmt == "channels-last" else x)
    for name in ("ours", "reference"):
        fns[f"build {name}"] = lambda name=name: build(layers[name])
    # warm-up inside: allocator, cuDNN/oneDNN choices, the reference's index cache
    times = interleaved(fns, args.rounds, device)

    base = times["nn.Conv2d 17x17 depthwise"]
    print(f"# DCLS layer speed, forward+backward, {args.version}, {args.batch}x{C}x56x56, {K}x{K}, {taps} taps")
    print(f"{machine_line(device)}; {args.rounds} interleaved rounds, medians\n")
    print("| layer | median time | median ratio to nn.Conv2d 17x17 (paired per round) | ours / this |")
    print("|---|---|---|---|")
    for name in list(layers) + list(small):
        ts = times[name]
        print(f"| {name} | {statistics.median(ts) * 1e3:.1f} ms | {median_ratio(ts, base):.3f}x "
              f"| {median_ratio(times['ours'], ts):.2f}x |")
    builds = {name: times[f"build {name}"] for name in ("ours", "reference")}
    print("\n| kernel construction alone (forward+backward) | median time |")
    print("|---|---|")
    for name, ts in builds.items():
        print(f"| {name} | {statistics.median(ts) * 1e3:.2f} ms |")
    ratio = statistics.median(b / o for b, o in zip(builds["reference"], builds["ours"]))
    print(f"\nKernel construction: ours is {ratio:.0f}x faster than the reference (median of paired ratios).")


if __name__ == "__main__":
    main()
