"""Datasets of images with human attention maps, yielding ``(image, label, human_map)``: ClickMe
(read from its TFRecord shards) and SynthClick (generated, with known ground truth)."""

from .clickme import ClickMe, clickme_val, download_clickme_val
from .synthclick import SynthClick
from .tfrecords import TFRecordError

__all__ = ["ClickMe", "SynthClick", "TFRecordError", "clickme_val", "download_clickme_val"]
