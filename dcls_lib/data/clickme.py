"""ClickMe human attention maps (serre-lab Harmonization), read from its TFRecord shards without TensorFlow.

Each record is a ``tf.train.Example`` with ``image`` (JPEG, 256x256x3), ``heatmap`` (JPEG,
256x256x1) and ``label`` (int64, the ImageNet class).  :class:`ClickMe` yields
``(image, label, human_map)`` after the published preprocessing (Harmonization's
``parse_clickme_prototype``):

- image: bilinear resize 256 -> 224, (3, 224, 224) float32, divided by 255 to [0, 1] (the
  published pipeline keeps 0..255; the study's code then cast to uint8 and used torchvision's
  ``ToTensor``, which divides by 255 too);
- human map: bilinear resize to 64x64, Gaussian blur (10x10 kernel, sigma 10, normalised to sum
  1, TensorFlow ``SAME`` zero padding), bilinear resize to 224x224, float32 (224, 224).

``tf.image.resize(..., method="bilinear")`` samples at half-pixel centres without antialiasing
(as ``F.interpolate(mode="bilinear", align_corners=False)`` and OpenCV's ``INTER_LINEAR`` do);
that rule, the Gaussian kernel and the asymmetric padding of an even-sized ``SAME`` convolution
are reproduced as TensorFlow computes them.
JPEGs are decoded by Pillow (libjpeg), TensorFlow by its own libjpeg-turbo: decoded pixels may
differ by a grey level here and there.  The model-specific normalisation of the image is left to
the evaluation (``preprocess``).

The validation split is 17 shards, downloaded on first use (:func:`download_clickme_val`) or read
from a local folder (:func:`clickme_val`).  No licence is given with the data; the images are
ImageNet images.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import cv2
import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from ..progress import progress_bar

from ..files import DownloadError, cache_dir, fetch
from .tfrecords import TFRecordError, decode_example, encode_example, index_tfrecord, read_tfrecord_at, verify_tfrecord, write_tfrecord

PathLike = Union[str, os.PathLike]

CLICKME_BASE_URL = "https://storage.googleapis.com/serrelab/prj_harmonization/dataset/click-me"
VAL_URL = CLICKME_BASE_URL + "/val/val-{index}.tfrecords"
VAL_SHARDS = 17
RAW_SIZE = 256
IMAGE_SIZE = 224
BLUR_GRID = 64
BLUR_KERNEL_SIZE = 10
BLUR_SIGMA = 10.0
NUM_CLASSES = 1000


# --- preprocessing ------------------------------------------------------------------------------
#
# In numpy and OpenCV, one image at a time: torch would run these small operations on its thread
# pool, whose threads wait for each other when the model's threads keep the cores busy (tens of
# milliseconds per image instead of one).


def _gaussian_axes(size: int, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Row and column offsets of Harmonization's kernel grid (see :func:`gaussian_kernel`), float64."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma!r}")
    half = (size - 1) // 2
    columns = np.arange(-(size - 1) // 2, half + 1, dtype=np.float64)
    rows = np.arange(half, -(size - 1) // 2 - 1, -1, dtype=np.float64)
    return rows, columns


def gaussian_kernel(size: int = BLUR_KERNEL_SIZE, sigma: float = BLUR_SIGMA) -> np.ndarray:
    """The (size, size) float32 blur kernel exactly as Harmonization builds it, normalised to sum 1.

    Its grid runs over columns ``-(size-1)//2 .. (size-1)//2`` with Python's floor division, and
    over rows from ``(size-1)//2`` down, so for an even size it is off centre: for 10x10 the
    columns are -5..4 and the rows 4..-5, and the peak sits at row 4, column 5.
    """
    rows, columns = _gaussian_axes(size, sigma)
    kernel = np.exp(-(rows[:, None] ** 2 + columns[None, :] ** 2) / (2 * sigma**2))
    return (kernel / kernel.sum()).astype(np.float32)


def gaussian_blur(heatmap: np.ndarray, size: int = BLUR_KERNEL_SIZE, sigma: float = BLUR_SIGMA) -> np.ndarray:
    """Blur a (H, W) map as ``tf.nn.conv2d(map, gaussian_kernel(), 1, "SAME")``.

    TensorFlow's SAME padding is zeros, with the extra row and column of an even kernel after the
    map.  The Gaussian is separable, so the 2-D kernel is applied as a column then a row pass.
    """
    rows, columns = (np.exp(-(axis**2) / (2 * sigma**2)) for axis in _gaussian_axes(size, sigma))
    rows, columns = (rows / rows.sum()).astype(np.float32), (columns / columns.sum()).astype(np.float32)
    before = (size - 1) // 2
    height, width = heatmap.shape
    padded = np.pad(heatmap.astype(np.float32), ((before, size - 1 - before), (before, size - 1 - before)))
    across = sum(weight * padded[:, j : j + width] for j, weight in enumerate(columns))
    return sum(weight * across[i : i + height] for i, weight in enumerate(rows))


def resize_bilinear(array: np.ndarray, size: int) -> np.ndarray:
    """(H, W) or (H, W, C) -> (size, size[, C]) float32 as ``tf.image.resize(method="bilinear")``.

    OpenCV's ``INTER_LINEAR`` on float32 is the same rule (half-pixel centres, no antialiasing; its
    exact 2x reductions average pixel pairs, as the rule does) and some 20x faster than numpy here.
    """
    return cv2.resize(np.asarray(array, dtype=np.float32), (size, size), interpolation=cv2.INTER_LINEAR)


def preprocess_image(image: np.ndarray, uint8: bool = False) -> Tensor:
    """(256, 256, 3) uint8 RGB -> (3, 224, 224) float32 in [0, 1].

    ``uint8=True`` is the study's code: the resized image was cast back to uint8 (truncating the
    fractions bilinear resizing makes) before torchvision's ``ToTensor`` divided it by 255.
    """
    resized = resize_bilinear(image, IMAGE_SIZE)
    if uint8:
        resized = resized.astype(np.uint8)
    resized = resized / np.float32(255)
    return torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1), dtype=np.float32))


def blur_on_grid(heatmap: np.ndarray) -> np.ndarray:
    """The first two steps of the published human-map processing: resize to 64x64, blur."""
    return gaussian_blur(resize_bilinear(heatmap, BLUR_GRID))


def preprocess_human_map(heatmap: np.ndarray, size: int = IMAGE_SIZE) -> Tensor:
    """A click map -> (size, size) float32: resize to 64, blur, resize to ``size`` (224 in the study).

    SynthClick processes its part masks with the same function, so its maps are ClickMe-like."""
    return torch.from_numpy(resize_bilinear(blur_on_grid(heatmap), size))


# --- records --------------------------------------------------------------------------------------


def _encode_jpeg(array: np.ndarray, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def encode_clickme_record(image: np.ndarray, heatmap: np.ndarray, label: int, quality: int = 95) -> bytes:
    """A ClickMe record: (256, 256, 3) and (256, 256) uint8 arrays as JPEGs, and the label."""
    image, heatmap = np.asarray(image), np.asarray(heatmap)
    if image.shape != (RAW_SIZE, RAW_SIZE, 3) or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 ({RAW_SIZE}, {RAW_SIZE}, 3), got {image.dtype} {image.shape}")
    if heatmap.shape != (RAW_SIZE, RAW_SIZE) or heatmap.dtype != np.uint8:
        raise ValueError(f"heatmap must be uint8 ({RAW_SIZE}, {RAW_SIZE}), got {heatmap.dtype} {heatmap.shape}")
    return encode_example(
        {"image": _encode_jpeg(image, quality), "heatmap": _encode_jpeg(heatmap, quality), "label": int(label)}
    )


def write_clickme_shard(path: PathLike, samples: Iterable[tuple]) -> Path:
    """Write (image, heatmap, label) samples as a ClickMe TFRecord shard, atomically."""
    return write_tfrecord(path, (encode_clickme_record(*sample) for sample in samples))


def decode_clickme_record(data: bytes, where: str = "record") -> tuple[np.ndarray, np.ndarray, int]:
    """(image (256,256,3) uint8, heatmap (256,256) uint8, label) from a record; errors start with ``where``."""
    try:
        features = decode_example(data)
    except Exception as error:  # protobuf's DecodeError and friends
        raise TFRecordError(f"{where}: not a tf.train.Example ({error})") from error
    for key in ("image", "heatmap", "label"):
        if len(features.get(key, ())) != 1:
            raise TFRecordError(f"{where}: feature {key!r} missing or not a single value")
    image = _decode_jpeg(features["image"][0], "RGB", (RAW_SIZE, RAW_SIZE, 3), f"{where}: image")
    heatmap = _decode_jpeg(features["heatmap"][0], "L", (RAW_SIZE, RAW_SIZE), f"{where}: heatmap")
    label = features["label"][0]
    if not isinstance(label, int) or not 0 <= label < NUM_CLASSES:
        raise TFRecordError(f"{where}: label must be an ImageNet class in [0, {NUM_CLASSES}), got {label!r}")
    return image, heatmap, label


def _decode_jpeg(data, mode: str, shape: tuple, where: str) -> np.ndarray:
    if not isinstance(data, bytes):
        raise TFRecordError(f"{where}: expected JPEG bytes, got {type(data).__name__}")
    try:
        with Image.open(io.BytesIO(data)) as picture:
            picture.load()
            found = picture.mode
            array = np.array(picture)
    except Exception as error:
        raise TFRecordError(f"{where}: cannot decode the JPEG ({error})") from error
    if found != mode or array.shape != shape:
        raise TFRecordError(f"{where}: expected a {mode} JPEG of shape {shape}, got {found} {array.shape}")
    return array


# --- dataset ----------------------------------------------------------------------------------------


def clickme_shards(folder: PathLike) -> list[Path]:
    """The ``*.tfrecords`` / ``*.tfrecord`` files of a folder, ordered by the number in their name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"ClickMe folder not found: {folder}")
    files = [p for p in folder.iterdir() if p.suffix in (".tfrecords", ".tfrecord") and p.is_file()]
    if not files:
        raise FileNotFoundError(f"no .tfrecords files in {folder}")

    def order(path: Path):
        numbers = re.findall(r"\d+", path.stem)
        return (path.stem.rstrip("0123456789-_"), int(numbers[-1]) if numbers else -1, path.name)

    return sorted(files, key=order)


class ClickMe(Dataset):
    """ClickMe shards as a map-style dataset of ``(image, label, human_map)`` (see the module doc).

    ``ClickMe(shards)`` takes a folder, one file, or a list of files.  Opening reads every record
    header (checking its length CRC) to index the records, with a progress bar over the shards if
    ``progress``; reading a record checks its data CRC.  ``image_ids[i]`` is ``"<shard file
    name>#<record number>"``, stable across machines, which the evaluation uses to resume.  ``raw(i)``
    gives the decoded record before preprocessing.  ``uint8_images=True`` reads images as the study's
    code did (see :func:`preprocess_image`).
    """

    def __init__(self, shards: Union[PathLike, Sequence[PathLike]], uint8_images: bool = False, progress: bool = False) -> None:
        if isinstance(shards, (str, os.PathLike)):
            path = Path(shards)
            files = clickme_shards(path) if path.is_dir() else [path]
        else:
            files = [Path(p) for p in shards]
        if not files:
            raise ValueError("ClickMe needs at least one shard")
        self.files = files
        self.uint8_images = uint8_images
        self._records: list[tuple[int, int, int]] = []  # (file number, offset, record number)
        self.image_ids: list[str] = []
        for number, path in enumerate(progress_bar(files, desc="indexing shards", unit="shard", disable=not progress)):
            if not path.is_file():
                raise FileNotFoundError(f"ClickMe shard not found: {path}")
            for record, (offset, _) in enumerate(index_tfrecord(path)):
                self._records.append((number, offset, record))
                self.image_ids.append(f"{path.name}#{record}")

    def __len__(self) -> int:
        return len(self._records)

    def raw(self, index: int) -> tuple[np.ndarray, np.ndarray, int]:
        """(image (256,256,3) uint8, heatmap (256,256) uint8, label) of record ``index``, unprocessed."""
        number, offset, record = self._records[index]
        path = self.files[number]
        data = read_tfrecord_at(path, offset, record)
        return decode_clickme_record(data, where=f"{path}: record {record}")

    def __getitem__(self, index: int) -> tuple[Tensor, int, Tensor]:
        image, heatmap, label = self.raw(index)
        return preprocess_image(image, self.uint8_images), label, preprocess_human_map(heatmap)


# --- download -----------------------------------------------------------------------------------------


def download_file(url: str, destination: PathLike, progress: bool = True, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``destination`` with a progress bar; renamed into place only once the
    transfer is complete and every record CRC checks out."""
    try:
        return fetch(url, destination, progress=progress, timeout=timeout, verify=verify_tfrecord)
    except DownloadError as error:
        raise DownloadError(f"{error}; without internet, put the shards in a folder and read that folder "
                            "instead (evaluate --data clickme:DIR)") from error


def download_clickme_val(
    folder: Optional[PathLike] = None,
    shards: Iterable[int] = range(VAL_SHARDS),
    url: str = VAL_URL,
    progress: bool = True,
) -> list[Path]:
    """The validation shards ``val-{i}.tfrecords`` in ``folder`` (default: the cache), downloading those missing.

    ``url`` is a template with ``{index}``; tests point it at a local server or ``file://``.
    Shards already present are not downloaded again (a shard is only ever written complete and checked).
    """
    folder = Path(folder) if folder is not None else cache_dir() / "clickme" / "val"
    paths = []
    for index in shards:
        path = folder / f"val-{index}.tfrecords"
        if not path.is_file():
            download_file(url.format(index=index), path, progress=progress)
        paths.append(path)
    return paths


def clickme_val(folder: Optional[PathLike] = None, download: bool = True, progress: bool = True) -> ClickMe:
    """The ClickMe validation set.

    ``download=True``: the 17 shards ``val-{i}.tfrecords`` in ``folder`` (default: the cache),
    downloading any that are missing.  ``download=False``: whatever shards ``folder`` holds, offline.
    """
    if download:
        return ClickMe(download_clickme_val(folder, progress=progress))
    if folder is None:
        raise ValueError("download=False needs the folder that holds the shards")
    return ClickMe(folder)
