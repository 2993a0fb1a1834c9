"""Stacking ``(image, label, human_map)`` items of any of the datasets into batch tensors."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor
from torch.utils.data import Dataset


def stack_items(dataset: Dataset, indices: Iterable[int]) -> tuple[Tensor, Tensor, Tensor]:
    """Items ``indices`` of ``dataset`` stacked: images (N, 3, H, W), labels (N,), human maps (N, H, W)."""
    items = [dataset[i] for i in indices]
    if not items:
        raise ValueError("no items to stack: give at least one index")
    images, labels, human_maps = zip(*items)
    return torch.stack(images), torch.as_tensor(labels), torch.stack(human_maps)
