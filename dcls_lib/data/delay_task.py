"""A synthetic spike-timing task that needs delays, generated offline, deterministic and seeded.

Every sample has exactly one "pattern" spike on each of ``n_channels`` input channels.  A class is a
*motif*: the time of each channel's spike relative to the pattern's onset.  Motifs use distinct
offsets within ``max_lag`` steps, so no two pattern spikes coincide.  Samples add a random onset,
timing jitter and background noise spikes.

Every class has the same number of spikes on every channel, and (without noise) every time step
holds a single spike, so neither spike counts nor any single time step say anything about the
class: only the *time differences between channels* do.  A neuron can read them if its synapses
delay each channel so that one class's spikes arrive together (a coincidence detector); without
delays it can only use its own short memory.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from ..validation import check_positive_int


@dataclass(frozen=True)
class DelayTaskSpec:
    """The task's definition; ``seed`` fixes the motifs (the classes), not the samples."""

    n_channels: int = 8
    n_classes: int = 4
    n_steps: int = 32
    max_lag: int = 10
    jitter: int = 1
    jitter_prob: float = 0.1
    noise_rate: float = 0.02
    seed: int = 0

    def __post_init__(self):
        checks = {
            "n_channels": self.n_channels >= 2,
            "n_classes": self.n_classes >= 2,
            "max_lag": self.max_lag >= self.n_channels,
            "n_steps": self.n_steps >= self.max_lag + 2 * self.jitter,
            "jitter": self.jitter >= 0,
            "jitter_prob": 0.0 <= self.jitter_prob <= 1.0,
            "noise_rate": 0.0 <= self.noise_rate < 1.0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(
                f"DelayTaskSpec: invalid {', '.join(bad)} in {self} (needs n_channels, n_classes >= 2, "
                "max_lag >= n_channels, n_steps >= max_lag + 2 * jitter, probabilities in [0, 1])"
            )

    def to_dict(self) -> dict:
        return asdict(self)


def make_motifs(spec: DelayTaskSpec) -> Tensor:
    """``(n_classes, n_channels)`` spike offsets in ``0 .. max_lag - 1``, distinct within a class.

    Classes are redrawn until no two share the same motif.
    """
    gen = torch.Generator().manual_seed(spec.seed)
    motifs: list[Tensor] = []
    while len(motifs) < spec.n_classes:
        candidate = torch.randperm(spec.max_lag, generator=gen)[: spec.n_channels]
        if not any(torch.equal(candidate, m) for m in motifs):
            motifs.append(candidate)
    return torch.stack(motifs)


def generate(spec: DelayTaskSpec, n_samples: int, seed: int) -> tuple[Tensor, Tensor]:
    """``n_samples`` balanced samples: spikes ``(n, n_channels, n_steps)`` in {0, 1} (float32) and labels ``(n,)``."""
    check_positive_int(n_samples=n_samples)
    motifs = make_motifs(spec)
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n_samples) % spec.n_classes
    labels = labels[torch.randperm(n_samples, generator=gen)]
    latest_onset = spec.n_steps - spec.max_lag - 2 * spec.jitter
    onsets = torch.randint(0, latest_onset + 1, (n_samples, 1), generator=gen) + spec.jitter
    shift = torch.randint(-spec.jitter, spec.jitter + 1, (n_samples, spec.n_channels), generator=gen)
    jittered = torch.rand(n_samples, spec.n_channels, generator=gen) < spec.jitter_prob
    times = onsets + motifs[labels] + shift * jittered
    spikes = (torch.rand(n_samples, spec.n_channels, spec.n_steps, generator=gen) < spec.noise_rate).float()
    spikes.scatter_(2, times.unsqueeze(-1), 1.0)
    return spikes, labels


def make_splits(spec: DelayTaskSpec, n_train: int, n_test: int, seed: int = 0) -> dict[str, tuple[Tensor, Tensor]]:
    """Train and test sets drawn with different seeds from the same motifs."""
    return {"train": generate(spec, n_train, seed=2 * seed), "test": generate(spec, n_test, seed=2 * seed + 1)}
