"""Memory of DCLS layers: this library against the reference library (dcls 0.1.1) and nn.Conv2d.

1. Bytes that building the kernel saves for backward (autograd's saved tensors, counted once per
   storage), for the ConvNeXt-dcls depthwise layer: C=96, 17x17, 34 taps.  Target: at most 4x the
   dense kernel's own size (the reference: 25.3 MiB for a 0.11 MiB kernel).
2. Peak extra memory of one forward+backward of a dense 256->256 layer, 17x17, 34 taps, gauss,
   each measurement in a fresh process (peak RSS on CPU, peak allocation on CUDA).  Target: under
   1 GiB.  The reference needs ~17 GiB there, too much for this machine: it is measured at 32->32
   and 64->64 instead and its growth shown.

Run: python benchmarks/layer_memory.py [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import subprocess
import sys

import torch

MiB = 2**20


def _make_layer(impl: str, cin: int, cout: int, groups: int, taps: int, size: int, version: str, device):
    if impl == "ours":
        from dcls_lib import Dcls2d

        return Dcls2d(cin, cout, taps, dilated_kernel_size=size, padding=size // 2, groups=groups, version=version)
    if impl == "reference":
        logging.disable(logging.WARNING)
        from DCLS.construct.modules import Dcls2d

        return Dcls2d(cin, cout, taps, dilated_kernel_size=size, padding=size // 2, groups=groups, version=version,
                      use_implicit_gemm=False).to(device)
    return torch.nn.Conv2d(cin, cout, size, padding=size // 2, groups=groups)


def kernel_saved_bytes(layer) -> tuple[int, int, int]:
    """What autograd keeps for backward while the layer builds its kernel (not the conv itself):
    bytes beyond the parameters, bytes of the parameters it keeps, and the dense kernel's own bytes."""
    from dcls_lib.measure import saved_for_backward_bytes

    build = layer.construct_kernel if hasattr(layer, "construct_kernel") else lambda: layer.DCK(layer.weight, layer.P, layer.SIG)
    beyond = saved_for_backward_bytes(build, layer.parameters())
    parameter_bytes = saved_for_backward_bytes(build) - beyond
    with torch.no_grad():
        kernel = build()
    return beyond, parameter_bytes, kernel.numel() * kernel.element_size()


def _vm(key: str) -> int:
    return int(re.search(key + r":\s+(\d+) kB", open("/proc/self/status").read()).group(1)) * 1024


def child(args) -> None:
    """One forward+backward in this fresh process; prints the peak extra memory in bytes."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    layer = _make_layer(args.impl, args.cin, args.cout, args.groups, args.taps, args.size, args.version, device).to(device)
    x = torch.randn(args.batch, args.cin, args.hw, args.hw, device=device, requires_grad=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _vm("VmRSS")
        open("/proc/self/clear_refs", "w").write("5")  # reset the peak-RSS counter to now
    layer(x).sum().backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = _vm("VmHWM")
    print(json.dumps({"extra_bytes": peak - before}))


def measure(impl, cin, cout, groups, taps, size, version, batch, hw, device) -> int:
    cmd = [sys.executable, __file__, "--child", impl, "--device", device, "--version", version]
    cmd += [f"--{k}={v}" for k, v in dict(cin=cin, cout=cout, groups=groups, taps=taps, size=size, batch=batch, hw=hw).items()]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["extra_bytes"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--child", choices=["ours", "reference", "conv"])
    parser.add_argument("--version", default="gauss")
    for name, default in dict(cin=96, cout=96, groups=96, taps=34, size=17, batch=8, hw=56).items():
        parser.add_argument(f"--{name}", type=int, default=default)
    args = parser.parse_args()
    if args.child:
        args.impl = args.child
        return child(args)

    from bench_common import machine_line

    print(f"# DCLS layer memory. {machine_line(args.device)}\n")
    print("## 1. Saved for backward by kernel construction: depthwise C=96, 17x17, 34 taps (float32)\n")
    print("| version | dense kernel | ours: beyond parameters | ours: incl. parameters | reference | reference / ours (incl.) | ours (incl.) / kernel |")
    print("|---|---|---|---|---|---|---|")
    logging.disable(logging.WARNING)
    for version in ("gauss", "v1", "max", "v0"):
        ours = _make_layer("ours", 96, 96, 96, 34, 17, version, args.device).to(args.device)
        ref = _make_layer("reference", 96, 96, 96, 34, 17, version, args.device)
        o_extra, o_params, kernel = kernel_saved_bytes(ours)
        r_extra, r_params, _ = kernel_saved_bytes(ref)
        o_total, r_total = o_extra + o_params, r_extra + r_params
        print(f"| {version} | {kernel / MiB:.3f} MiB | {o_extra / MiB:.3f} MiB | {o_total / MiB:.3f} MiB | "
              f"{r_total / MiB:.1f} MiB | {r_total / o_total:.0f}x | {o_total / kernel:.2f}x |")

    print("\n## 2. Peak extra memory of forward+backward, dense layers, 17x17, 34 taps, gauss, input 1x C x 32x32\n")
    print("| layer | extra memory |")
    print("|---|---|")
    rows = [("ours 256->256", "ours", 256), ("nn.Conv2d 256->256 17x17 (same input)", "conv", 256),
            ("reference 32->32", "reference", 32), ("reference 64->64", "reference", 64)]
    results = {}
    for label, impl, c in rows:
        results[label] = measure(impl, c, c, 1, 34, 17, "gauss", 1, 32, args.device)
        print(f"| {label} | {results[label] / MiB:,.0f} MiB |")
    growth = results["reference 64->64"] / results["reference 32->32"]
    print(f"\nReference growth from 32->32 to 64->64: {growth:.1f}x for 4x the filters; "
          f"extrapolated to 256->256 (16x more): ~{results['reference 64->64'] * 16 / 2**30:.0f} GiB (not run).")
    ours_extra = results["ours 256->256"] - results["nn.Conv2d 256->256 17x17 (same input)"]
    print(f"Ours beyond what nn.Conv2d itself needs: {ours_extra / MiB:,.0f} MiB "
          f"(target: the whole forward+backward under 1024 MiB: {results['ours 256->256'] / MiB:,.0f} MiB).")


if __name__ == "__main__":
    main()
