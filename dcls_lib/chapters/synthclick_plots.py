"""SynthClick as chapter 4 shows it: examples of every class with their human maps."""

from __future__ import annotations

import matplotlib.pyplot as plt

from ..data.synthclick import CLASSES, SynthClick
from ..validation import check_positive_int


def show_examples(dataset: SynthClick, n_per_class: int = 2, classes=None, overlay: bool = True, start: int = 0):
    """A matplotlib figure: ``n_per_class`` images of each class (rows), each with its human map
    overlaid as contours (``overlay=True``) or shown beside it.  Returns the figure."""
    classes = list(range(dataset.num_classes)) if classes is None else list(classes)
    for c in classes:
        if not 0 <= c < dataset.num_classes:
            raise ValueError(f"classes: {c} is not a SynthClick label (0..{dataset.num_classes - 1})")
    check_positive_int(n_per_class=n_per_class)
    per_item = 1 if overlay else 2
    fig, axes = plt.subplots(
        len(classes), n_per_class * per_item, figsize=(1.6 * n_per_class * per_item, 1.6 * len(classes)), squeeze=False
    )
    for row, c in enumerate(classes):
        for k in range(n_per_class):
            index = start + c + k * dataset.num_classes
            if index >= len(dataset):
                raise ValueError(f"dataset has too few items for {n_per_class} examples of class {c}")
            image, _, human_map = dataset[index]
            ax = axes[row, k * per_item]
            ax.imshow(image.permute(1, 2, 0).numpy(), interpolation="nearest")
            if overlay:
                ax.contour(human_map.numpy(), levels=[0.25, 0.5, 0.75], colors="magenta", linewidths=0.8)
            else:
                axes[row, k * per_item + 1].imshow(human_map.numpy(), cmap="magma", vmin=0, vmax=1)
            if k == 0:
                ax.set_ylabel(CLASSES[c], fontsize=7, rotation=0, ha="right", va="center")
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    return fig
