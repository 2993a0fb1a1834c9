"""Datasets of images with human attention maps, yielding ``(image, label, human_map)``."""

from .clickme import ClickMe, clickme_val, download_clickme_val
from .tfrecords import TFRecordError

__all__ = ["ClickMe", "TFRecordError", "clickme_val", "download_clickme_val"]
