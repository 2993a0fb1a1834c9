"""Controls for the SynthClick benchmark: does a trained model read both parts of the evidence?

The class of a SynthClick image is the geometry of its two ringed glyphs (how far apart, in which
direction), so a model that has learned the task must use both rings.  :func:`one_part_control`
removes one ring (the glyph stays, as one more distractor) and measures the accuracy again, per
span: what is left is what one ring, and where it lies, tells the model.  Beside it stands
:func:`dcls_lib.data.synthclick.position_bound`, the most that the place of one ring can give.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .data.synthclick import CLASSES, SPANS, SynthClick, position_bound
from .runtime import resolve_device
from .transforms import PixelNormalize
from .validation import check_positive_int


@torch.no_grad()
def _predict(model: nn.Module, images: torch.Tensor, device: torch.device, batch_size: int) -> torch.Tensor:
    normalize = PixelNormalize(SynthClick.mean, SynthClick.std).to(device)
    return torch.cat([model(normalize(images[i:i + batch_size].to(device))).argmax(1).cpu()
                      for i in range(0, len(images), batch_size)])


def one_part_control(model: nn.Module, dataset: SynthClick, device=None, batch_size: int = 64,
                     bound_count: int = 2000) -> list[dict]:
    """Accuracy of ``model`` per span on ``dataset``'s images with both rings and with one ring left
    out (the first ring on even items, the second on odd ones), and the position bound of one ring
    (``position_bound``, from ``bound_count`` placements per class).  One row per span."""
    if not isinstance(dataset, SynthClick):
        raise TypeError(f"one_part_control needs a SynthClick dataset, got {type(dataset).__name__}")
    if dataset.transform is not None:
        raise ValueError("one_part_control normalises as training does: pass a SynthClick without transform")
    check_positive_int(batch_size=batch_size, bound_count=bound_count)
    device = resolve_device(device)
    model.eval().to(device)
    images, labels, _ = dataset.batch()
    one_ring = torch.stack([dataset.one_part_image(i, part=i % 2) for i in range(len(dataset))])
    both_right = _predict(model, images, device, batch_size) == labels
    one_right = _predict(model, one_ring, device, batch_size) == labels
    bound = {row["span"]: row["one ring"] for row in position_bound(dataset.image_size, count=bound_count)}
    per_span = len(CLASSES) // len(SPANS)
    rows = []
    for k, span in enumerate(SPANS):
        chosen = labels // per_span == k
        if not chosen.any():
            continue
        rows.append({"span": span, "images": int(chosen.sum()), "both rings": float(both_right[chosen].float().mean()),
                     "one ring": float(one_right[chosen].float().mean()), "one ring's place (bound)": bound[span],
                     "chance": 1 / len(CLASSES)})
    return rows


def study_control(results, seed: int = 0, device=None, size: Optional[int] = None) -> list[dict]:
    """:func:`one_part_control` for every (family, variant) of a study's ``seed``, on its test split
    (the first ``size`` images; all by default).  One row per run and span."""
    test = results.test_split()
    if size is not None:
        check_positive_int(size=size)
        test = SynthClick("test", image_size=test.image_size, seed=test.seed, size=min(size, len(test)))
    rows = []
    for (family, variant), run in results.load_models(seed=seed, device=device).items():
        for row in one_part_control(run.model, test, device=device):
            rows.append({"family": family, "variant": variant, "seed": seed, **row})
    return rows


def control_text(rows: list[dict]) -> str:
    """What the one-ring control shows over the runs of ``rows`` (:func:`study_control`'s), as
    sentences for a chapter: per span, the range of accuracy with one ring beside the bound of the
    ring's place, and the runs that do better than always answering one class of the right span
    would (what reading the span from one ring, without its partner, can give)."""
    if not rows:
        raise ValueError("control_text needs the rows of at least one run")
    one_class = 1 / (len(CLASSES) // len(SPANS))
    ranges, above = [], []
    for span in SPANS:
        chosen = [r for r in rows if r["span"] == span]
        if not chosen:
            continue
        one = [r["one ring"] for r in chosen]
        bound = chosen[0]["one ring's place (bound)"]
        ranges.append(f"{span} pairs {min(one):.0%} to {max(one):.0%} (the ring's place alone: at most {bound:.0%})")
        above += [f"{r['family']} {r['variant']} on {span} pairs ({r['one ring']:.0%})" for r in chosen
                  if r["one ring"] > one_class]
    both = [r["both rings"] for r in rows]
    text = (f"With both rings the runs score {min(both):.0%} to {max(both):.0%} per span; with one ring removed, "
            f"{'; '.join(ranges)}.  ")
    if not above:
        return text + f"No run does better with one ring than always answering one class of the right span ({one_class:.0%})."
    return text + (f"Above always answering one class of the right span ({one_class:.0%}) with one ring: "
                   f"{', '.join(above)}.")
