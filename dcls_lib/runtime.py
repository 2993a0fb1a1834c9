"""Where and how heavy a run is: the profile (smoke / cpu / gpu), the device, and a label for results.

Notebooks, training and evaluation read the profile from the environment variable ``DCLS_PROFILE``
so that the same code runs in seconds under the tests (``smoke``), in minutes for the book on a
laptop (``cpu``) and at full size on a GPU (``gpu``).  Every figure and table says what produced it
with ``run_label()``.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import platform
import subprocess
from pathlib import Path

import torch

PROFILES = ("smoke", "cpu", "gpu")
PROFILE_ENV = "DCLS_PROFILE"
RUNS_ENV = "DCLS_RUNS"


def current_profile() -> str:
    """``DCLS_PROFILE`` if set, else ``gpu`` where CUDA is available and ``cpu`` otherwise."""
    profile = os.environ.get(PROFILE_ENV, "").strip().lower()
    if not profile:
        return "gpu" if torch.cuda.is_available() else "cpu"
    if profile not in PROFILES:
        raise ValueError(f"{PROFILE_ENV} must be one of {PROFILES}, got {profile!r}")
    return profile


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: torch.device | str | None = None) -> torch.device:
    """``device`` as a ``torch.device``; ``None`` or ``"auto"``: CUDA where available, else the CPU.
    Asking for CUDA where there is none is an error here rather than deep inside a run."""
    if device is None or device == "auto":
        return default_device()
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} asked for, but CUDA is not available here")
    return device


def device_name(device: torch.device | str | None = None) -> str:
    """A readable name for the device: the GPU model, or the CPU with its thread count."""
    device = torch.device(device) if device is not None else default_device()
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    return f"CPU ({cpu}, {torch.get_num_threads()} threads)"


def git_commit(path: str | Path | None = None) -> str:
    """The short commit of the checkout holding ``path`` (this package by default), or 'unknown'."""
    where = Path(path) if path else Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


# The book's figures and widgets: they draw results but compute none.
BOOK_HELPERS = "chapters"


def _source_digest(with_book_helpers: bool) -> str:
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if with_book_helpers or relative.parts[0] != BOOK_HELPERS:
            digest.update(relative.as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def library_digest() -> str:
    """A short hash of all of dcls_lib's Python source: the book re-executes its notebooks when it changes."""
    return _source_digest(with_book_helpers=True)


def results_digest() -> str:
    """A short hash of the source that computes results (all but ``chapters/``): trained runs kept
    under another one are stale; editing a figure or a widget leaves them valid."""
    return _source_digest(with_book_helpers=False)


def runs_dir() -> Path:
    """Where trained runs are kept: ``$DCLS_RUNS``, else ``runs/`` of this checkout, else the user cache."""
    if os.environ.get(RUNS_ENV):
        return Path(os.environ[RUNS_ENV])
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").exists():
        return checkout / "runs"
    return Path.home() / ".cache" / "dcls_lib" / "runs"


def run_info(device: torch.device | str | None = None, profile: str | None = None) -> dict:
    """What produced a result: profile, device, versions, commit and date, as a dict for JSON logs."""
    return {
        "profile": profile or current_profile(),
        "device": device_name(device),
        "torch": torch.__version__,
        "commit": git_commit(),
        "date": datetime.date.today().isoformat(),
    }


def run_label(device: torch.device | str | None = None, profile: str | None = None, data: str | None = None) -> str:
    """One line for a caption: 'Computed on <device>, profile <p>, <data>, commit <c>, <date>'."""
    info = run_info(device, profile)
    parts = [f"Computed on {info['device']}", f"profile {info['profile']}"]
    if data:
        parts.append(data)
    parts += [f"torch {info['torch']}", f"commit {info['commit']}", info["date"]]
    return ", ".join(parts)
