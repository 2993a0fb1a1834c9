"""What a DCLS model costs against its baseline: one training step and inference, ratios in one process.

For each study model, ``timm.create_model("<name>_dcls")`` against ``timm.create_model("<name>")``
(random weights): a training step (batch 4, 224 px, forward, backward and an SGD step) and
inference (same batch, no gradients, eval mode, on a copy whose weights the training steps leave
alone, as in evaluation or serving), each model in both memory formats.  Rounds interleave every
(model, format) pair; a model's time is the median over rounds in its faster format, and the ratio
is DCLS / baseline, each in its own faster format.  Targets on 2 CPU cores (issue 12):
ConvNeXt-T-DCLS training step at most 1.3x ConvNeXt-T, inference at most 1.2x.

Run: python benchmarks/model_speed.py [--models convnext_tiny resnet50] [--rounds 5] [--device cuda]
     python benchmarks/model_speed.py --models fastvit_sa24 --formats contiguous   # see --formats
"""

from __future__ import annotations

import argparse
import copy
import statistics

import timm
import torch

import dcls_lib  # noqa: F401  (registers the <name>_dcls models with timm)
from bench_common import interleaved, machine_line

MODELS = ("resnet50", "convnext_tiny", "caformer_s18", "fastvit_sa24")
FORMATS = {"contiguous": torch.contiguous_format, "channels-last": torch.channels_last}


def _workloads(name: str, fmt, batch: int, size: int, device) -> dict:
    torch.manual_seed(0)
    model = timm.create_model(name).to(device, memory_format=fmt)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=fmt)
    target = torch.randint(0, 1000, (batch,), device=device)

    def train():
        model.train()
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), target).backward()
        optimizer.step()

    fixed = copy.deepcopy(model).eval()  # inference serves fixed weights: the training step never changes them

    @torch.no_grad()
    def infer():
        fixed(x)

    return {"train": train, "infer": infer}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=list(FORMATS),
                        help="memory formats to try (torch 2.14.1 on CPU aborts with heap corruption in a channels-last "
                             "training step of fastvit_sa24, timm's own model as well as the DCLS one)")
    args = parser.parse_args()
    formats = {name: FORMATS[name] for name in args.formats}
    device = torch.device(args.device)

    print(f"# Model speed: DCLS / baseline, batch {args.batch}, {args.size} px, {args.rounds} interleaved rounds")
    print(machine_line(device) + "\n")
    print("| model | train step: baseline | DCLS | **ratio** | inference: baseline | DCLS | **ratio** |")
    print("|---|---|---|---|---|---|---|")
    for base in args.models:
        fns = {}
        for variant in (base, f"{base}_dcls"):
            for fmt_name, fmt in formats.items():
                for job, fn in _workloads(variant, fmt, args.batch, args.size, device).items():
                    fns[(variant, fmt_name, job)] = fn
        times = interleaved(fns, args.rounds, device)
        cells = []
        for job in ("train", "infer"):
            best = {}
            for variant in (base, f"{base}_dcls"):
                fmt_name = min(formats, key=lambda f: statistics.median(times[(variant, f, job)]))
                best[variant] = (statistics.median(times[(variant, fmt_name, job)]), fmt_name)
            (tb, fb), (td, fd) = best[base], best[f"{base}_dcls"]
            cells += [f"{tb * 1e3:.0f} ms ({fb})", f"{td * 1e3:.0f} ms ({fd})", f"**{td / tb:.2f}x**"]
        print(f"| {base} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
