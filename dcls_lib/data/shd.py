"""The Spiking Heidelberg Digits (SHD): download, read and bin into frames.

SHD (Cramer et al., IEEE TNNLS 2020) holds spoken digits 0-9 in English and German (20 classes)
turned into spikes on 700 cochlear channels.  Each split is one HDF5 file, laid out as the Zenke lab
publishes it (and as tonic's and SpikingJelly's readers expect):

==================  =====================================================================
``spikes/times``    one variable-length float array per sample: spike times in seconds
``spikes/units``    one variable-length uint16 array per sample: channel 0..699 of each spike
``labels``          ``(n,)`` uint16 class 0..19
``extra/speaker``   ``(n,)`` speaker id
``extra/keys``      the class names
``extra/meta_info`` speakers' ``gender``, ``age``, ``body_height``
==================  =====================================================================

Files are served gzipped (``shd_train.h5.gz``, ``shd_test.h5.gz``) next to an ``md5sums.txt`` at
``https://zenkelab.org/datasets/`` (zip archives are also served there).  ``download_shd`` fetches,
checks and unpacks one split into a folder; ``SHD`` reads a split and bins each sample into
``(channels, time)`` spike counts, as the published delay models do (10 ms frames counted from the
sample's first spike, groups of 5 neighbouring channels summed).
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
from pathlib import Path
from typing import Optional, Sequence

import h5py
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..files import fetch, file_digest

BASE_URL = "https://zenkelab.org/datasets/"
SPLITS = ("train", "test")
ARCHIVES = ("gz", "zip")
N_CHANNELS = 700
N_CLASSES = 20
REQUIRED = ("spikes/times", "spikes/units", "labels")
CHUNK = 1 << 20


def shd_filename(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return f"shd_{split}.h5"


def validate_shd_file(path: str | os.PathLike) -> int:
    """Check that ``path`` is an SHD file (the datasets above, one entry per sample); return the count."""
    path = Path(path)
    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"{path}: not a readable HDF5 file ({err})") from err
    with handle:
        missing = [key for key in REQUIRED if key not in handle]
        if missing:
            raise ValueError(f"{path}: not an SHD file, missing {', '.join(missing)}")
        lengths = {key: len(handle[key]) for key in REQUIRED}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"{path}: SHD datasets disagree on the number of samples: {lengths}")
        return lengths["labels"]


def _url(base_url: str, name: str) -> str:
    return base_url.rstrip("/") + "/" + name


def published_md5(base_url: str, name: str) -> Optional[str]:
    """The MD5 that the server's ``md5sums.txt`` lists for ``name``, or None if it lists none."""
    try:
        with urllib.request.urlopen(_url(base_url, "md5sums.txt"), timeout=60) as response:
            text = response.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError):
        return None
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("*") == name:
            return parts[0].lower()
    return None


def _extract(archive: Path, kind: str, destination: Path) -> None:
    if kind == "gz":
        try:
            with gzip.open(archive, "rb") as src, open(destination, "wb") as out:
                shutil.copyfileobj(src, out, CHUNK)
        except (OSError, EOFError) as err:
            raise ValueError(f"{archive.name}: not a valid gzip archive ({err})") from err
        return
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [n for n in zf.namelist() if n.endswith(destination.name)]
            if not members:
                raise ValueError(f"{archive.name}: the zip archive holds no {destination.name}")
            with zf.open(members[0]) as src, open(destination, "wb") as out:
                shutil.copyfileobj(src, out, CHUNK)
    except zipfile.BadZipFile as err:
        raise ValueError(f"{archive.name}: not a valid zip archive ({err})") from err


def download_shd(
    split: str,
    root: str | os.PathLike,
    base_url: str = BASE_URL,
    archive: str = "gz",
    md5: Optional[str] = None,
    progress: bool = True,
) -> Path:
    """Download one SHD split into ``root`` (unless it is already there) and return the ``.h5`` path.

    The archive is checked against ``md5`` or, if not given, the server's ``md5sums.txt`` (a warning
    says when neither is available), unpacked and validated in a temporary folder inside ``root``,
    and only then moved into place: a failed download leaves nothing behind.
    """
    name = shd_filename(split)
    if archive not in ARCHIVES:
        raise ValueError(f"archive must be one of {ARCHIVES}, got {archive!r}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    target = root / name
    if target.exists():
        validate_shd_file(target)
        return target
    archive_name = f"{name}.{archive}"
    url = _url(base_url, archive_name)
    expected = md5.lower() if md5 else published_md5(base_url, archive_name)
    if expected is None:
        warnings.warn(f"no MD5 published for {archive_name} at {base_url}: the download is not verified", stacklevel=2)
    with tempfile.TemporaryDirectory(dir=root, prefix=".shd-download-") as tmp:
        packed = Path(tmp) / archive_name
        fetch(url, packed, progress)
        actual = file_digest(packed, "md5") if expected is not None else None
        if actual != expected:
            raise ValueError(f"{url}: MD5 {actual} does not match the published {expected}")
        unpacked = Path(tmp) / name
        _extract(packed, archive, unpacked)
        validate_shd_file(unpacked)
        os.replace(unpacked, target)
    return target


def bin_spikes(
    times: np.ndarray,
    units: np.ndarray,
    dt: float = 0.01,
    channel_pool: int = 1,
    n_channels: int = N_CHANNELS,
    from_first_spike: bool = True,
) -> np.ndarray:
    """Spike counts ``(n_channels // channel_pool, n_frames)`` in frames of ``dt`` seconds.

    Frames start at the first spike (``from_first_spike``, as the published models) or at ``t = 0``;
    ``n_frames`` reaches the last spike.  Channel ``u`` is counted in row ``u // channel_pool``.
    """
    times = np.asarray(times, dtype=np.float64)
    units = np.asarray(units, dtype=np.int64)
    if times.shape != units.shape or times.ndim != 1:
        raise ValueError(f"times and units must be 1-D arrays of one length, got {times.shape} and {units.shape}")
    if units.size and (units.min() < 0 or units.max() >= n_channels):
        raise ValueError(f"units must lie in 0 .. {n_channels - 1}, got {units.min()} .. {units.max()}")
    if n_channels % channel_pool:
        raise ValueError(f"channel_pool ({channel_pool}) must divide n_channels ({n_channels})")
    rows = n_channels // channel_pool
    if times.size == 0:
        return np.zeros((rows, 1), dtype=np.float32)
    start = times.min() if from_first_spike else 0.0
    frame = np.floor((times - start) / dt + 1e-9).astype(np.int64)
    if frame.min() < 0:
        raise ValueError("spike times must be >= 0")
    counts = np.zeros((rows, int(frame.max()) + 1), dtype=np.float32)
    np.add.at(counts, (units // channel_pool, frame), 1.0)
    return counts


class SHD(Dataset):
    """One SHD split as ``(frames (channels, time), label)`` samples; see ``pad_collate`` for batches.

    Args:
        root: folder holding ``shd_train.h5`` / ``shd_test.h5``.
        split: ``"train"`` or ``"test"``.
        dt: frame length in seconds (10 ms in the published models).
        channel_pool: sum groups of this many neighbouring channels (5 in the published models: 140 inputs).
        download: fetch the split into ``root`` when it is missing (``download_shd``).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        dt: float = 0.01,
        channel_pool: int = 1,
        from_first_spike: bool = True,
        download: bool = False,
        base_url: str = BASE_URL,
    ) -> None:
        path = Path(root) / shd_filename(split)
        if not path.exists():
            if not download:
                raise FileNotFoundError(f"{path} not found: pass download=True or put the SHD files in {root}")
            download_shd(split, root, base_url=base_url)
        if N_CHANNELS % channel_pool:
            raise ValueError(f"channel_pool must divide {N_CHANNELS}, got {channel_pool!r}")
        if not dt > 0:
            raise ValueError(f"dt must be > 0 seconds, got {dt!r}")
        validate_shd_file(path)
        self.path, self.split = path, split
        self.dt, self.channel_pool, self.from_first_spike = dt, channel_pool, from_first_spike
        with h5py.File(path, "r") as handle:
            self.times = [np.asarray(t) for t in handle["spikes/times"]]
            self.units = [np.asarray(u) for u in handle["spikes/units"]]
            self.labels = np.asarray(handle["labels"], dtype=np.int64)
            keys = handle["extra/keys"][()] if "extra/keys" in handle else None
        self.classes = [k.decode() if isinstance(k, bytes) else str(k) for k in keys] if keys is not None else None
        bad = np.flatnonzero((self.labels < 0) | (self.labels >= N_CLASSES))
        if bad.size:
            raise ValueError(f"{path}: record {bad[0]} has label {self.labels[bad[0]]}, outside 0 .. {N_CLASSES - 1}")

    @property
    def n_inputs(self) -> int:
        return N_CHANNELS // self.channel_pool

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        try:
            frames = bin_spikes(self.times[index], self.units[index], self.dt, self.channel_pool,
                                from_first_spike=self.from_first_spike)
        except ValueError as err:
            raise ValueError(f"{self.path}: record {index}: {err}") from err
        return torch.from_numpy(frames), int(self.labels[index])


def pad_collate(batch: Sequence[tuple[Tensor, int]]) -> tuple[Tensor, Tensor]:
    """Stack samples of different lengths into ``(batch, channels, max_time)``, zero-padded at the end."""
    length = max(frames.shape[-1] for frames, _ in batch)
    x = torch.zeros(len(batch), batch[0][0].shape[0], length)
    for i, (frames, _) in enumerate(batch):
        x[i, :, : frames.shape[-1]] = frames
    return x, torch.tensor([label for _, label in batch], dtype=torch.long)
