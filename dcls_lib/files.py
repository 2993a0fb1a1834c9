"""Files that are never half-written, and downloads with a progress bar.

Everything the library writes (results, checkpoints, caches, downloads) goes to a temporary file
beside its destination and is renamed into place only when complete, so an interrupted run leaves
either the old file or the new one, never a truncated one.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import tempfile
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

from .progress import progress_bar

PathLike = Union[str, os.PathLike]
CACHE_ENV = "DCLS_CACHE"


def _file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give: mkstemp's 0600 would hide results from other users."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


FILE_MODE = _file_mode()


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` (same suffix); renamed onto ``path`` if the block succeeds,
    deleted if it raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part" + path.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: PathLike, obj) -> Path:
    return write_text(path, json.dumps(obj, indent=1) + "\n")


def save_torch(path: PathLike, obj) -> Path:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def write_bytes_atomic(path: PathLike, chunks) -> Path:
    """Write an iterable of ``bytes`` to ``path`` atomically (for files streamed record by record)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as out:
        for chunk in chunks:
            out.write(chunk)
    return Path(path)


def file_digest(path: PathLike, algorithm: str = "sha256") -> str:
    """The hex digest of a file's bytes (``hashlib`` algorithm name), read a megabyte at a time."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def cache_dir(path: Optional[PathLike] = None) -> Path:
    """Where downloads go: ``path``, else ``$DCLS_CACHE``, else ``~/.cache/dcls_lib``."""
    return Path(path or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "dcls_lib").expanduser()


class DownloadError(ConnectionError):
    """A download that failed or stopped early; the message names the URL."""


def fetch(
    url: str,
    destination: PathLike,
    progress: bool = True,
    timeout: float = 60.0,
    verify: Optional[Callable[[Path], None]] = None,
) -> Path:
    """Stream ``url`` (http(s) or file) to ``destination`` with a progress bar.

    The bytes land in a temporary file that must have the announced length and pass ``verify``
    (which raises to refuse it) before it is renamed into place.
    """
    destination = Path(destination)
    with atomic_path(destination) as tmp:
        try:
            with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                with progress_bar(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=destination.name,
                          disable=not progress) as bar:
                    while chunk := response.read(1 << 20):
                        out.write(chunk)
                        bar.update(len(chunk))
        except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
            detail = (f"HTTP {error.code} {error.reason}" if isinstance(error, urllib.error.HTTPError)
                      else getattr(error, "reason", None) or repr(error))
            raise DownloadError(f"could not download {url}: {detail}") from error
        received = tmp.stat().st_size
        if total is not None and received != total:
            raise DownloadError(f"download of {url} stopped after {received} of {total} bytes")
        if verify is not None:
            verify(tmp)
    return destination
