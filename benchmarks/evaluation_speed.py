"""Speed of the alignment evaluation against a pipeline that works as the study's code does.

Both read the same ClickMe-format shards (synthetic images written to a temporary folder, in the
real format) through the same DataLoader settings, with the same model and Threshold-Grad-CAM:

- baseline, as the study's ``evaluate_clickme``: batches of 4, every image converted to PIL and
  through a torchvision transform one at a time, a full backward pass into every parameter,
  hooks on the target layer, the map resized image by image, then ``scipy.stats.spearmanr`` per
  image (constant maps skipped);
- ours, :func:`dcls_lib.evaluate.evaluate_alignment`: batched (``--batch-size``), normalised on
  the device, backward stopped at the target layer, batched Spearman on the device, results
  appended to a JSON-lines file;
- ours again on images already decoded in memory;
- the model's forward pass alone on those images (batched, channels-last, no gradients), a
  ceiling for any evaluation: Grad-CAM needs at least this forward pass.

Rounds alternate between the pipelines in one process; medians of images/s are printed with the
ratio.  Targets (issue 4): at least 5x the baseline on CPU; on a GPU at least 1000 images/s for
ConvNeXt-T at 224.  Weights are random: this measures speed, not alignment (the mean scores of both
pipelines are printed as a check that they compute the same thing).

Run: python benchmarks/evaluation_speed.py [--model resnet18] [--images 64] [--rounds 3]
     python benchmarks/evaluation_speed.py --model convnext_tiny --images 4096 --batch-size 256 --amp   # on a GPU
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import scipy.stats
import timm
import torch
import torchvision.transforms as T
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from dcls_lib.data.clickme import ClickMe, write_clickme_shard
from dcls_lib.evaluate import ExplainerSettings, PixelNormalize, evaluate_alignment
from dcls_lib.metrics import HUMAN_CEILING
from bench_common import cpu_description
from dcls_lib.measure import timed
from dcls_lib.runtime import run_label

TARGET_LAYERS = {"resnet": "layer4", "convnext": "stages.3"}


def synthetic_shards(folder: Path, images: int, per_shard: int = 256, seed: int = 0) -> ClickMe:
    """ClickMe-format shards of smooth random images and blob-shaped click maps."""
    rng = np.random.default_rng(seed)
    for start in range(0, images, per_shard):
        samples = []
        for _ in range(min(per_shard, images - start)):
            coarse = torch.from_numpy(rng.integers(0, 256, (1, 3, 8, 8)).astype(np.float32))
            image = torch.nn.functional.interpolate(coarse, size=(256, 256), mode="bilinear")[0].permute(1, 2, 0)
            heat = np.zeros((256, 256), np.uint8)
            for _ in range(3):
                r, c, s = rng.integers(30, 226), rng.integers(30, 226), rng.integers(10, 30)
                heat[r - s : r + s, c - s : c + s] = rng.integers(100, 256)
            samples.append((image.round().byte().numpy(), heat, int(rng.integers(0, 1000))))
        write_clickme_shard(folder / f"val-{start // per_shard}.tfrecords", samples)
    return ClickMe(folder)


def seed_like_alignment(model, layer, dataset, device, workers) -> float:
    """The study's evaluation loop, restated: returns the alignment (constant maps skipped)."""
    transform = T.Compose([T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    resize = T.Resize((224, 224))
    saved = {}

    def keep(module, inputs, output):
        saved["activations"] = output
        output.register_hook(lambda grad: saved.__setitem__("gradients", grad))

    handle = layer.register_forward_hook(keep)
    scores = []
    try:
        for images, labels, humans in DataLoader(dataset, batch_size=4, num_workers=workers):
            pixels = (images.permute(0, 2, 3, 1).numpy() * 255).clip(0, 255).astype(np.uint8)  # the study cast to uint8
            batch = torch.stack([transform(Image.fromarray(x)) for x in pixels])
            batch = batch.to(device)
            one_hot = torch.nn.functional.one_hot(labels, 1000).float().to(device)
            model.zero_grad(set_to_none=True)
            torch.sum(model(batch) * one_hot).backward()
            pooled = saved["gradients"].mean(dim=(2, 3))
            weighted = torch.relu(saved["activations"].detach() * pooled[:, :, None, None]).mean(dim=1)
            low = weighted.amin(dim=(1, 2), keepdim=True)
            heat = (weighted - low) / (weighted.amax(dim=(1, 2), keepdim=True) - low)
            heat = torch.from_numpy(np.maximum(heat.cpu().numpy(), 0.3))
            heat = torch.stack([resize(h[None]) for h in heat])[:, 0]
            for h, human in zip(heat.numpy(), humans.numpy()):
                if np.std(h) == 0 or np.std(human) == 0:
                    continue
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    scores.append(scipy.stats.spearmanr(h.ravel(), human.ravel()).statistic)
    finally:
        handle.remove()
    return float(np.mean(scores)) / HUMAN_CEILING


class InMemory(Dataset):
    def __init__(self, dataset):
        self.items = [dataset[i] for i in range(len(dataset))]
        self.image_ids = dataset.image_ids

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


def rate(fn, images: int, device) -> tuple[float, float]:
    """Images per second of ``fn()`` and what it returned."""
    seconds, value = timed(fn, device)
    return images / seconds, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet18", help="a timm model name (resnet*, convnext*)")
    parser.add_argument("--target-layer", help="default: layer4 for ResNets, stages.3 for ConvNeXts")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast for our pipeline")
    parser.add_argument("--num-workers", type=int, default=None, help="DataLoader workers for both (default 0 CPU, 8 CUDA)")
    parser.add_argument("--skip-baseline", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    workers = args.num_workers if args.num_workers is not None else (8 if device.type == "cuda" else 0)
    layer_name = args.target_layer or next((v for k, v in TARGET_LAYERS.items() if args.model.startswith(k)), None)
    if layer_name is None:
        raise SystemExit(f"give --target-layer for {args.model}")

    torch.manual_seed(0)
    model = timm.create_model(args.model, num_classes=1000).to(device).eval()
    layer = model.get_submodule(layer_name)
    ours_model = copy.deepcopy(model)  # ours stores its model channels-last; the baseline keeps the default layout
    ours_layer = ours_model.get_submodule(layer_name)
    with tempfile.TemporaryDirectory() as folder:
        dataset = synthetic_shards(Path(folder), args.images)
        preloaded = InMemory(dataset)

        def ours(data, name):
            results = Path(folder) / f"{name}-{time.perf_counter_ns()}.jsonl"
            summary = evaluate_alignment(
                ours_model, ours_layer, data, preprocess=PixelNormalize(), batch_size=args.batch_size, device=device,
                settings=ExplainerSettings(amp=args.amp), results_path=results, constant="skip", num_workers=workers, progress=False,
            )
            return summary.alignment

        def forward_only():
            """The model's forward pass alone over the preloaded images: no evaluation can beat it."""
            with torch.no_grad():
                for start in range(0, args.images, args.batch_size):
                    batch = torch.stack([preloaded.items[i][0] for i in range(start, min(start + args.batch_size, args.images))])
                    batch = normalize(batch.to(device)).contiguous(memory_format=torch.channels_last)
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
                        ours_model(batch)

        normalize = PixelNormalize().to(device)
        ours(preloaded, "warmup")
        rates = {"baseline (study-like)": [], "ours": [], "ours, data in memory": [], "forward pass alone": []}
        scores = {}
        for _ in range(args.rounds):
            if not args.skip_baseline:
                speed, scores["baseline"] = rate(lambda: seed_like_alignment(model, layer, dataset, device, workers), args.images, device)
                rates["baseline (study-like)"].append(speed)
            speed, scores["ours"] = rate(lambda: ours(dataset, "shards"), args.images, device)
            rates["ours"].append(speed)
            speed, _ = rate(lambda: ours(preloaded, "memory"), args.images, device)
            rates["ours, data in memory"].append(speed)
            speed, _ = rate(forward_only, args.images, device)
            rates["forward pass alone"].append(speed)

    print(run_label(device, data=f"{args.images} synthetic ClickMe-format images at 224, {args.model} (random weights)"))
    print(cpu_description())
    print(f"model {args.model}, target {layer_name}, batch {args.batch_size} (baseline 4), amp {args.amp}, "
          f"workers {workers}, rounds {args.rounds}, threads {torch.get_num_threads()}")
    medians = {name: statistics.median(values) for name, values in rates.items() if values}
    for name, value in medians.items():
        print(f"  {name:24s} {value:9.1f} images/s   (rounds: {', '.join(f'{v:.1f}' for v in rates[name])})")
    if "baseline (study-like)" in medians:
        baseline = medians["baseline (study-like)"]
        print(f"  speed-up ours / baseline: {medians['ours'] / baseline:.1f}x "
              f"(the forward pass alone would be {medians['forward pass alone'] / baseline:.1f}x)")
        print(f"  alignment (constant maps skipped): baseline {scores['baseline']:.6f}, ours {scores['ours']:.6f}"
              " (the baseline truncates pixels to uint8 for PIL, as the study's code did)")


if __name__ == "__main__":
    main()
