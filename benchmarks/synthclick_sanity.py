"""Is SynthClick learnable, and not trivially?  Trains a tiny CNN briefly on CPU and reports accuracy
per span (near / mid / far) next to chance, plus the generation rate of the dataset.

    PYTHONPATH=. python benchmarks/synthclick_sanity.py --minutes 4 --threads 1

This is a check of the dataset, not a result of the study: the network is deliberately small
(six 3x3 convolutions, global average pooling, a linear head; theoretical receptive field 49 px
at 64 px) and
nothing here is tuned for any architecture.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from dcls_lib.data.synthclick import SPANS, SynthClick
from bench_common import cpu_description
from dcls_lib.runtime import run_label


def tiny_cnn(num_classes: int, width: int = 16) -> nn.Sequential:
    """Six 3x3 convolutions (BN, ReLU), global average pooling, a linear head.  Strides 1,2,2,2,1,2:
    at 64 px the last map is 4x4 and each of its units sees 49x49 pixels (theoretical RF)."""
    def block(cin, cout, stride):
        return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    w = width
    return nn.Sequential(
        *block(3, w, 1),
        *block(w, 2 * w, 2),
        *block(2 * w, 4 * w, 2),
        *block(4 * w, 6 * w, 2),
        *block(6 * w, 6 * w, 1),
        *block(6 * w, 8 * w, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8 * w, num_classes),
    )


def materialise(dataset: SynthClick, count: int, spans: list[int], desc: str):
    """``count`` images of the given spans and their labels as tensors, and the generation time per
    image (CPU seconds)."""
    indices = [i for i in range(len(dataset)) if dataset.label_of(i) // 4 in spans][:count]
    images = torch.empty(len(indices), 3, dataset.image_size, dataset.image_size)
    labels = torch.empty(len(indices), dtype=torch.long)
    start = time.process_time()
    for k, i in enumerate(tqdm(indices, desc=desc, leave=False, mininterval=10)):
        images[k], labels[k], _ = dataset[i]
    return images, labels, (time.process_time() - start) / len(indices)


def augment(x: torch.Tensor) -> torch.Tensor:
    """Mirror half of the batches left-right: it keeps every label and every triangle upright."""
    return x.flip(-1) if torch.rand(()) < 0.5 else x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=6000, help="training images")
    parser.add_argument("--val", type=int, default=1200, help="validation images")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--minutes", type=float, default=4.0, help="training budget (wall clock)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--spans", default="near,mid,far", help="train and test on these spans only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    mean = torch.tensor(SynthClick.mean)[:, None, None]
    std = torch.tensor(SynthClick.std)[:, None, None]
    spans = [list(SPANS).index(s) for s in args.spans.split(",")]
    train_set = SynthClick("train", args.image_size, args.seed, size=3 * args.train)
    val_set = SynthClick("val", args.image_size, args.seed, size=3 * args.val)
    train_x, train_y, gen_s = materialise(train_set, args.train, spans, "train")
    val_x, val_y, _ = materialise(val_set, args.val, spans, "val")
    train_x, val_x = (train_x - mean) / std, (val_x - mean) / std

    model = tiny_cnn(SynthClick.num_classes, args.width)
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    deadline = time.monotonic() + 60 * args.minutes
    epochs, steps = 0, 0
    history = []
    while time.monotonic() < deadline:
        model.train()
        for batch in torch.randperm(len(train_x)).split(64):
            loss = F.cross_entropy(model(augment(train_x[batch])), train_y[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            steps += 1
            if time.monotonic() >= deadline:
                break
        epochs += 1
        accuracy = evaluate(model, val_x, val_y)
        history.append(round(accuracy["all"], 3))
        print(f"epoch {epochs}: loss {loss.item():.3f}, val accuracy {accuracy}")

    accuracy = evaluate(model, val_x, val_y)
    report = {
        "what": "tiny CNN (theoretical RF 49 px) trained briefly on SynthClick, validation accuracy per span",
        "label": run_label(data=f"SynthClick {args.image_size}px, {args.train} train / {args.val} val images"),
        "cpu": cpu_description(),
        "settings": vars(args),
        "epochs": epochs,
        "steps": steps,
        "val_accuracy": accuracy,
        "val_accuracy_by_epoch": history,
        "chance": {"all": 1 / 12, "within a span": 1 / 4},
        "generation_cpu_ms_per_image": round(1000 * gen_s, 2),
    }
    print(json.dumps(report, indent=1))


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    model.eval()
    predictions = torch.cat([model(chunk).argmax(1) for chunk in x.split(256)])
    correct = predictions == y
    result = {"all": correct.float().mean().item()}
    for s, span in enumerate(SPANS):
        in_span = (y // 4) == s
        if not in_span.any():
            continue
        result[span] = correct[in_span].float().mean().item()
        # Right relation within the right span: does the model read what the two parts share?
        result[f"{span}: span right"] = ((predictions[in_span] // 4) == s).float().mean().item()
    return {k: round(v, 3) for k, v in result.items()}


if __name__ == "__main__":
    main()
