"""How fast is SynthClick generated on the fly?  Median time per item on one core, per image size,
next to decoding the same image from a PNG file (what a stored dataset would cost) in the same process.

    PYTHONPATH=. python benchmarks/synthclick_speed.py [--items 200]

The target is under 5 ms per 64x64 item on one core.  Timings on a shared machine are noisy:
read the CPU time per item (this process only), the medians of per-item wall times, and the ratio
to the PNG baseline measured alongside.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time

import numpy as np
import torch
from PIL import Image

from dcls_lib.data.synthclick import SynthClick
from bench_common import cpu_description
from dcls_lib.measure import timed
from dcls_lib.runtime import run_label


def median_ms(fn, items: int) -> float:
    """Median wall-clock milliseconds of ``fn(i)`` over ``items`` calls."""
    return 1000 * statistics.median(timed(lambda: fn(i))[0] for i in range(items))


def cpu_ms(fn, items: int) -> float:
    """Mean CPU milliseconds of this process per call: less sensitive than wall time to other
    processes competing for the cores (the generator runs on one thread)."""
    start = time.process_time()
    for i in range(items):
        fn(i)
    return 1000 * (time.process_time() - start) / items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--sizes", default="64,128,224")
    args = parser.parse_args()
    torch.set_num_threads(1)

    rows = []
    for size in map(int, args.sizes.split(",")):
        dataset = SynthClick("train", size, seed=0, size=args.items)
        dataset[0]  # warm the per-size tables
        generate = median_ms(lambda i: dataset[i], args.items)
        generate_cpu = cpu_ms(lambda i: dataset[i], args.items)
        scene = median_ms(lambda i: dataset.scene(i), args.items)

        pngs = []
        for i in range(min(args.items, 50)):
            buffer = io.BytesIO()
            Image.fromarray((dataset[i][0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(buffer, "PNG")
            pngs.append(buffer.getvalue())

        def decode(i):
            array = np.asarray(Image.open(io.BytesIO(pngs[i % len(pngs)])).convert("RGB"), dtype=np.float32) / 255
            return torch.from_numpy(array).permute(2, 0, 1)

        png = median_ms(decode, args.items)
        cached = SynthClick("train", size, seed=0, size=args.items, cache=True)
        for i in range(args.items):
            cached[i]
        from_memory = median_ms(lambda i: cached[i], args.items)
        rows.append(
            {
                "image_size": size,
                "generate_ms": round(generate, 2),
                "generate_cpu_ms": round(generate_cpu, 2),
                "of_which_scene_layout_ms": round(scene, 2),
                "from_memory_cache_ms": round(from_memory, 3),
                "png_decode_ms": round(png, 3),
                "generate_over_png_decode": round(generate / png, 1),
                "items_per_second_one_core_cpu": round(1000 / generate_cpu),
            }
        )
        print(json.dumps(rows[-1]))
    label = run_label(data=f"SynthClick train split, {args.items} items per size")
    print(json.dumps({"label": label, "cpu": cpu_description(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
