"""Cost of the model-parameter randomisation test (issue 14): target, one SynthClick model's test
(both modes, Grad-CAM and Threshold-Grad-CAM) on 600 test images within 2 minutes on 2 CPU cores.

The model is a small family member at the cpu profile's size (``dcls_lib.train.PROFILE_SETTINGS``:
width 16, 96 px), with its initial weights: the cost does not depend on what was learned.  Prints:

- the full test, :func:`dcls_lib.sanity.parameter_randomisation`, timed once per round, in wall time
  and in CPU time (on a shared machine the wall time counts the other processes' share too; CPU
  time divided by the threads is what it would take on idle cores, if it parallelises fully);
- one randomised step (maps of one model for all images and their Spearman correlations with the
  trained maps) against a per-image baseline as a loop over images would compute it
  (pytorch-grad-cam methods with batch 1, ``scipy.stats.spearmanr`` per image), on ``--baseline-images``
  images, medians of interleaved rounds and their ratio;
- ROAD's cost per image for comparison (pytorch-grad-cam's sparse solves, on a few images).

Run: PYTHONPATH=. python benchmarks/sanity_speed.py [--family resnet] [--variant dcls] [--images 600] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
import scipy.stats
import torch
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="resnet")
    parser.add_argument("--variant", default="dcls")
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1, help="rounds of the full test")
    parser.add_argument("--baseline-images", type=int, default=8)
    parser.add_argument("--baseline-rounds", type=int, default=3)
    parser.add_argument("--road-images", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from dcls_lib.cam import StudyGradCAM, ThresholdGradCAM
    from dcls_lib.data.synthclick import SynthClick
    from dcls_lib.evaluate import PixelNormalize
    from dcls_lib.models import cam_target
    from dcls_lib.models.small import create_small_model
    from dcls_lib.runtime import run_label
    from dcls_lib.sanity import parameter_randomisation, randomisation_layers, randomised_copy, road
    from dcls_lib.sanity.randomisation import MapSource, map_functions
    from dcls_lib.metrics import spearman
    from dcls_lib.train import PROFILE_SETTINGS, synthclick_tensors

    width, size = PROFILE_SETTINGS["cpu"]["width"], PROFILE_SETTINGS["cpu"]["image_size"]
    torch.manual_seed(0)
    model = create_small_model(args.family, args.variant, num_classes=SynthClick.num_classes, width=width).eval()
    target = cam_target(model)
    normalise = PixelNormalize(SynthClick.mean, SynthClick.std)
    start = time.perf_counter()
    stored, labels = synthclick_tensors("test", size, 0, args.images)
    images = stored.float() / 255
    generation = time.perf_counter() - start

    print(f"# Randomisation test speed: {args.family}-{args.variant}, width {width}, {size} px, {args.images} SynthClick test images")
    print(f"{run_label('cpu', profile='benchmark')}; CPU: {cpu_name()}; torch threads {args.threads} "
          f"({os.cpu_count()} cores visible, load average {os.getloadavg()[0]:.1f} at start: a shared machine)")
    print(f"(generating the images took {generation:.1f} s, not counted)\n")

    layers = randomisation_layers(model)
    totals, cpu = [], []
    for _ in range(args.rounds):
        start, start_cpu = time.perf_counter(), time.process_time()
        parameter_randomisation(model, target.layer, images, labels, preprocess=normalise)
        totals.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    steps = 1 + 2 * len(layers)
    print("| what | time |")
    print("|---|---|")
    print(f"| full test: {len(layers)} layers x 2 modes x 2 maps, {args.images} images ({steps} map passes) | "
          f"{statistics.median(totals):.1f} s wall (median of {args.rounds}; target 120 s), "
          f"{statistics.median(cpu):.1f} s of CPU time over {args.threads} threads "
          f"(load average {os.getloadavg()[0]:.1f} at the end) |")

    # One randomised step, ours against a per-image loop, on the same images and models.
    n = min(args.baseline_images, args.images)
    few_images, few_labels = images[:n], labels[:n]
    randomised = randomised_copy(model, layers[:1])
    source = MapSource(target.name, few_images, few_labels, map_functions(("gradcam", "threshold-gradcam")),
                       preprocess=normalise)
    trained_maps = source(model)

    def ours():
        maps = source(randomised)
        return {name: spearman(trained_maps[name], maps[name]) for name in maps}

    def per_image():
        out = {}
        for name, method in (("gradcam", StudyGradCAM), ("threshold-gradcam", ThresholdGradCAM)):
            reference = trained_maps[name].numpy()
            with method(randomised, [randomised.get_submodule(target.name)]) as cam:
                out[name] = [scipy.stats.spearmanr(cam(normalise(few_images[i:i + 1]), [ClassifierOutputTarget(int(few_labels[i]))])[0].ravel(),
                                                   reference[i].ravel())[0] for i in range(n)]
        return out

    check_ours, check_base = ours(), per_image()
    agree = all(np.allclose(check_ours[k].numpy(), check_base[k], atol=1e-4, equal_nan=True) for k in check_ours)
    times = {"ours": [], "per-image loop": []}
    for _ in range(args.baseline_rounds):
        for name, fn in (("ours", ours), ("per-image loop", per_image)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    ratios = [b / a for a, b in zip(times["ours"], times["per-image loop"])]
    print(f"| one randomised step, {n} images, batched (ours) | {statistics.median(times['ours']):.2f} s |")
    print(f"| one randomised step, {n} images, per-image loop (pytorch-grad-cam, scipy) | "
          f"{statistics.median(times['per-image loop']):.2f} s |")
    print(f"| speed-up, median of {args.baseline_rounds} interleaved rounds | {statistics.median(ratios):.1f}x "
          f"(same correlations: {agree}) |")

    k = min(args.road_images, args.images)
    start = time.perf_counter()
    road(model, images[:k], trained_maps["threshold-gradcam"][:k] if k <= n else source(model)["threshold-gradcam"][:k],
         labels[:k], preprocess=normalise)
    per_road = (time.perf_counter() - start) / k
    print(f"| ROAD, 9 percentiles x MoRF and LeRF, per image | {per_road:.2f} s "
          f"({per_road * args.images / 60:.0f} min for {args.images} images) |")


if __name__ == "__main__":
    main()
