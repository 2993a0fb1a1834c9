"""SynthClick: a generated image-classification benchmark with known ground-truth attention.

No ImageNet, ClickMe or pretrained weights can be downloaded where this book is built, so the study
needs a benchmark it can generate, whose "human" attention map is known exactly.  SynthClick is that
benchmark: every image is drawn on the fly from ``(seed, split, index)``, and the class is decided
only by two marked parts, whose blurred mask is the attention map.

What is in every image (whatever its class)
-------------------------------------------
* A cluttered, textured background: a random base colour, smooth colour noise, two oriented gratings
  of random frequency and phase, fine pixel noise and eight random strokes (in the glyph colours,
  white, black or grey).
* Seventeen *glyphs*: every combination of 4 shapes (disc, square, triangle, cross) and 4 colours
  (red, green, blue, yellow) exactly once, plus one duplicate of a random combination.  So every
  image holds the same shapes and colours in the same numbers (one colour and one shape once more,
  drawn uniformly in every class): colour histograms, brightness and shape counts carry no class.
* Exactly two of the glyphs, drawn at random, are *marked* by a white ring with a dark halo: the two
  diagnostic parts.  Every image has two rings; the other fifteen glyphs are distractors.

What makes a class
------------------
The label is ``4 * span + orientation`` (12 classes), both read from where the two marked glyphs lie:

* ``span``, how far apart their centres are, as a fraction of the image side: ``near`` (about 0.21:
  the rings touch), ``mid`` (0.36 to 0.46), ``far`` (0.60 to 0.74).
* ``orientation``, the direction of the axis through the two centres: 0, 45, 90 or 135 degrees
  (counter-clockwise from the horizontal, within 10 degrees; which end is which is a coin flip).

Everything else (which two glyphs are marked, where the pair lies, the distractors, the background)
is drawn independently of the class: each marked glyph is a uniformly drawn (shape, colour) in every
class, so what a part looks like says nothing.

Why this design (generator version 3)
-------------------------------------
Version 2 asked what the two marked glyphs share (same shape, same colour, identical, different).
Such same-different comparisons are known to be very hard for feed-forward networks (Kim, Ricci and
Serre 2018, "Not-so-CLEVR"), and no small model learned them in the cpu budget: chapter 6 then scored
heatmaps of models at chance.  Spatial relations between objects are learned easily, so the class is
now the geometry of the pair: it needs both parts (neither part's place says the direction or the
distance to the other) and, for ``mid`` and ``far``, a unit whose receptive field spans them.

Which classes need long-range evidence
--------------------------------------
A ``near`` pair (both rings) fits in a window of about 0.44 of the image side: a unit that sees that
window sees all the evidence.  For ``mid`` and ``far`` pairs the two parts are 0.36 to 0.46 and 0.60
to 0.74 of the image side apart (centre to centre); a window holding both glyphs spans 0.49 to 0.59
and 0.73 to 0.87 of the side.  A model that sums (or averages) local features over space and then
applies a linear classifier scores each class as ``f(part 1) + f(part 2) + c``: it can only add what
each ring says on its own.  A ring alone, wherever it lies, is drawn the same in every class; what
it does say is where it lies, and that is the one shortcut: a convolution can learn absolute position
from the image border, and a far pair can only lie in a few places (a horizontal far pair has its
rings near the left and right edges).  Measured from the placement alone (a Bayes classifier on a
16x16 grid of positions, :func:`position_bound`): the place of one ring gives about 8% of the
12-class label right for near pairs, 5% for mid and 60% for far (chance 8%); both places, each
weighed alone and added, 8%, 33% and 90%.  So mid pairs need long-range evidence; far pairs can be
told, mostly, from where the rings sit against the border; near pairs are local.
:func:`dcls_lib.controls.one_part_control`
measures what a trained model does when one ring is removed.

Why the human map is the right ground truth
-------------------------------------------
The label is a function of the two marked glyphs (their shapes, colours and distance) and of nothing
else: replacing the background, the strokes or any distractor never changes it.  So the evidence a
perfect observer must look at is exactly the two marked parts, and the map is their mask (a disc of
0.95 glyph sizes around each, covering glyph and ring), processed as ClickMe maps are (resized to
64x64, blurred with a normalised 10x10 Gaussian of sigma 10, resized to the image size;
the same code as the ClickMe loader, :mod:`dcls_lib.data.clickme`), then scaled to a maximum of 1.  The two parts get equal weight because both
are needed.

Items
-----
``image``: float32 tensor ``(3, H, W)`` in ``[0, 1]`` (multiples of 1/255, as a decoded 8-bit image
would be); normalise with ``SynthClick.mean`` / ``SynthClick.std`` (measured on the training split,
see :func:`channel_stats`) or your model's own transform.  ``label``: int.  ``human_map``: float32
``(H, W)`` in ``[0, 1]``, maximum 1.  Sizes 64 to 224: every length scales with the image side, and
an index gives the same scene at every size.  Flips and rotations change the orientation of the
pair, hence the label: they are no augmentation for this task.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..files import atomic_path
from ..validation import check_choice, check_positive_int
from . import clickme
from .items import stack_items

__all__ = [
    "CLASSES",
    "COLOURS",
    "ORIENTATIONS",
    "SHAPES",
    "SPANS",
    "SynthClick",
    "SynthClickSample",
    "channel_stats",
    "describe",
    "factor_accuracy",
    "position_bound",
]

# Bump when the drawing changes: cached items of another version are not reused.
GENERATOR_VERSION = 3  # 2: maps blurred by the ClickMe loader's own code; 3: span x orientation classes

SHAPES = ("disc", "square", "triangle", "cross")
COLOURS = ("red", "green", "blue", "yellow")
# Centre-to-centre distance of the two marked glyphs, as fractions of the image side.
SPANS = {"near": (0.205, 0.215), "mid": (0.36, 0.46), "far": (0.60, 0.74)}
# Direction of the axis through the two marked glyphs, degrees counter-clockwise from the horizontal.
ORIENTATIONS = (0, 45, 90, 135)
ORIENTATION_JITTER = 10.0  # degrees either side
CLASSES = tuple(f"{span}, {angle} deg" for span in SPANS for angle in ORIENTATIONS)
SPLITS = ("train", "val", "test")
DEFAULT_SIZES = {"train": 12000, "val": 2400, "test": 2400}
MIN_SIZE, MAX_SIZE = 64, 224

# Geometry, in units of the glyph size GLYPH * image side.
GLYPH = 0.12
RING_RADIUS = 0.70  # centre line of the white ring
RING_WIDTH = 0.30  # v3: thick enough to survive a model's first downsampling (0.13 was learned 2x slower)
HALO_WIDTH = 0.10  # dark border on each side of the ring
PART_RADIUS = RING_RADIUS + RING_WIDTH / 2 + HALO_WIDTH  # 0.95: the diagnostic part, ring included
GLYPH_RADIUS = 0.55  # every shape fits in this disc
MAX_TILT = np.deg2rad(12.0)
N_STROKES = 8

PALETTE = {
    "red": (0.90, 0.14, 0.12),
    "green": (0.12, 0.72, 0.22),
    "blue": (0.16, 0.34, 0.95),
    "yellow": (0.96, 0.84, 0.10),
}
RING_COLOUR = (1.0, 1.0, 1.0)
HALO_COLOUR = (0.05, 0.05, 0.05)


# ----------------------------------------------------------------------------------------------
# Linear resizing of texture noise
# ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of a linear resize, as torch's (align_corners=False, no antialias)."""
    src = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    left = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    right = np.minimum(left + 1, n_in - 1)
    return left, right, (src - left).astype(np.float32)


def _resize_axis(x: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    left, right, frac = _linear_taps(x.shape[axis], n_out)
    shape = [1] * x.ndim
    shape[axis] = n_out
    frac = frac.reshape(shape)
    return np.take(x, left, axis=axis) * (1 - frac) + np.take(x, right, axis=axis) * frac


# ----------------------------------------------------------------------------------------------
# The scene: what is where (drawn without pixels, so tests can check the design cheaply)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Glyph:
    shape: int  # index into SHAPES
    colour: int  # index into COLOURS
    x: float  # centre, pixels from the left edge
    y: float  # centre, pixels from the top edge
    tilt: float  # radians
    marked: bool


@dataclass(frozen=True)
class Scene:
    label: int
    glyphs: tuple[Glyph, ...]  # distractors first, the two marked glyphs (the evidence) last

    @property
    def marked(self) -> tuple[Glyph, ...]:
        """The ringed glyphs: the last two (one in a scene made by ``without_ring``)."""
        return tuple(gl for gl in self.glyphs[-2:] if gl.marked)

    @property
    def span_pixels(self) -> float:
        a, b = self.glyphs[-2:]
        return float(np.hypot(a.x - b.x, a.y - b.y))


def _place_pair(rng: np.random.Generator, span: str, orientation: int, size: int) -> np.ndarray:
    """Centres (2, 2) of the marked glyphs as (x, y): distance from SPANS, axis at ORIENTATIONS
    [orientation] within the jitter, either end first, the place uniform where the pair fits."""
    g = GLYPH * size
    margin = (PART_RADIUS + 0.05) * g
    lo, hi = SPANS[span]
    distance = rng.uniform(lo, hi) * size
    jitter = np.deg2rad(ORIENTATION_JITTER)
    angle = np.deg2rad(ORIENTATIONS[orientation]) + rng.uniform(-jitter, jitter) + np.pi * rng.integers(2)
    delta = distance * np.array([np.cos(angle), -np.sin(angle)])  # y grows downwards
    low = margin + np.maximum(0.0, -delta)
    high = size - margin - np.maximum(0.0, delta)
    first = low + rng.random(2) * (high - low)
    return np.stack([first, first + delta])


def _place_distractors(rng: np.random.Generator, marked: np.ndarray, count: int, size: int) -> np.ndarray:
    """``count`` centres (x, y), uniform, that keep clear of the marked parts and of each other
    (random sequential adsorption over a batch of candidates)."""
    g = GLYPH * size
    edge = GLYPH_RADIUS * g
    clear_of_marked = (PART_RADIUS + GLYPH_RADIUS + 0.1) * g
    clear_of_each_other = (2 * GLYPH_RADIUS + 0.05) * g
    for attempt in range(1, 9):
        candidates = edge + rng.random((96 * attempt, 2)) * (size - 2 * edge)
        d_marked = np.sqrt(((candidates[:, None] - marked[None]) ** 2).sum(-1)).min(axis=1)
        candidates = candidates[d_marked >= clear_of_marked]
        conflict = ((candidates[:, None] - candidates[None]) ** 2).sum(-1) < clear_of_each_other**2
        free = np.ones(len(candidates), dtype=bool)
        chosen = []
        for i in range(len(candidates)):
            if free[i]:
                chosen.append(i)
                if len(chosen) == count:
                    return candidates[chosen]
                free &= ~conflict[i]
    raise RuntimeError(f"SynthClick: could not place {count} distractors at image size {size}")


def make_scene(rng: np.random.Generator, label: int, size: int) -> Scene:
    """Where every glyph goes and what it looks like, for an image of class ``label``."""
    span, orientation = divmod(label, len(ORIENTATIONS))
    # Every (shape, colour) once plus one duplicate; two of them, at random, are marked.
    pool = [(s, c) for s in range(4) for c in range(4)] + [(int(rng.integers(4)), int(rng.integers(4)))]
    order = rng.permutation(len(pool))
    centres = _place_pair(rng, list(SPANS)[span], orientation, size)
    spots = _place_distractors(rng, centres, len(pool) - 2, size)
    tilts = rng.uniform(-MAX_TILT, MAX_TILT, size=len(pool))
    glyphs = [
        Glyph(*pool[k], x=float(spots[i, 0]), y=float(spots[i, 1]), tilt=float(tilts[i]), marked=False)
        for i, k in enumerate(order[2:])
    ]
    for j, (k, centre) in enumerate(zip(order[:2], centres)):
        glyphs.append(Glyph(*pool[k], x=float(centre[0]), y=float(centre[1]), tilt=float(tilts[-2 + j]), marked=True))
    return Scene(label=label, glyphs=tuple(glyphs))


def without_ring(scene: Scene, part: int = 1) -> Scene:
    """The scene with marked glyph ``part`` (0 or 1) drawn as a distractor: one ring, one part of evidence."""
    if part not in (0, 1):
        raise ValueError(f"part must be 0 or 1, got {part!r}")
    index = len(scene.glyphs) - 2 + part
    glyphs = list(scene.glyphs)
    glyphs[index] = dataclasses.replace(glyphs[index], marked=False)
    return dataclasses.replace(scene, glyphs=tuple(glyphs))


# ----------------------------------------------------------------------------------------------
# Drawing
# ----------------------------------------------------------------------------------------------


def _box_sdf(u: np.ndarray, v: np.ndarray, half_u: float, half_v: float) -> np.ndarray:
    qu, qv = np.abs(u) - half_u, np.abs(v) - half_v
    outside = np.hypot(np.maximum(qu, 0), np.maximum(qv, 0))
    return outside + np.minimum(np.maximum(qu, qv), 0)


def _shape_sdf(shape: int, u: np.ndarray, v: np.ndarray, g: float) -> np.ndarray:
    """Signed distance in pixels (negative inside) to a shape of glyph size ``g``, centred at 0."""
    name = SHAPES[shape]
    if name == "disc":
        return np.hypot(u, v) - 0.42 * g
    if name == "square":
        return _box_sdf(u, v, 0.36 * g, 0.36 * g)
    if name == "triangle":  # equilateral, apex up (y grows downwards), circumradius 0.55 g
        edges = (v, -0.866 * u - 0.5 * v, 0.866 * u - 0.5 * v)  # outward normals at 90, 210, 330 deg
        return np.maximum(np.maximum(edges[0], edges[1]), edges[2]) - 0.275 * g
    return np.minimum(_box_sdf(u, v, 0.47 * g, 0.16 * g), _box_sdf(u, v, 0.16 * g, 0.47 * g))


def _margin(size: int) -> int:
    """Border around the canvas so that no patch needs clipping (the largest reach is ~0.1 side)."""
    return int(np.ceil(0.11 * size)) + 3


class _Patches:
    """Square pixel windows of side ``P`` around ``n`` centres given in image pixels, on a canvas
    with ``margin`` pixels around the image; ``u`` (n, 1, P) and ``v`` (n, P, 1) are the offsets of
    the window's pixel centres from each centre, along x and y."""

    def __init__(self, x: np.ndarray, y: np.ndarray, radius: float, margin: int):
        self.side = int(np.ceil(2 * radius)) + 3
        x0 = np.floor(x - self.side / 2).astype(np.int64)
        y0 = np.floor(y - self.side / 2).astype(np.int64)
        steps = np.arange(self.side, dtype=np.float32) + 0.5
        self.u = (x0[:, None] + steps[None, :] - x[:, None]).astype(np.float32)[:, None, :]
        self.v = (y0[:, None] + steps[None, :] - y[:, None]).astype(np.float32)[:, :, None]
        self.x0, self.y0 = x0 + margin, y0 + margin

    def blend(self, canvas: np.ndarray, sdf: np.ndarray, colours: np.ndarray) -> None:
        """Alpha-blend colour k where ``sdf[k] < 0``, anti-aliased over one pixel, in order."""
        alpha = np.minimum(np.maximum(0.5 - sdf, 0.0), 1.0)
        side = self.side
        for k in range(len(alpha)):
            patch = canvas[:, self.y0[k] : self.y0[k] + side, self.x0[k] : self.x0[k] + side]
            patch += alpha[k] * (colours[k][:, None, None] - patch)


_PALETTE_ARRAY = np.array([PALETTE[c] for c in COLOURS], dtype=np.float32)
_RING_COLOURS = np.array([HALO_COLOUR, RING_COLOUR], dtype=np.float32)


def _draw_glyphs(canvas: np.ndarray, scene: Scene, size: int) -> None:
    """The rings of the marked glyphs, then all seventeen shapes (none of them overlap)."""
    g, m = GLYPH * size, _margin(size)
    marked = scene.marked
    rings = _Patches(np.array([gl.x for gl in marked]), np.array([gl.y for gl in marked]), PART_RADIUS * g, m)
    from_centre = np.abs(np.hypot(rings.u, rings.v) - RING_RADIUS * g)
    for width, colour in zip((RING_WIDTH + 2 * HALO_WIDTH, RING_WIDTH), _RING_COLOURS):
        rings.blend(canvas, from_centre - width / 2 * g, np.stack([colour] * len(marked)))

    glyphs = scene.glyphs
    patches = _Patches(np.array([gl.x for gl in glyphs]), np.array([gl.y for gl in glyphs]), GLYPH_RADIUS * g, m)
    tilt = np.array([gl.tilt for gl in glyphs], dtype=np.float32)[:, None, None]
    c, s = np.cos(tilt), np.sin(tilt)
    u = c * patches.u + s * patches.v  # glyph-frame coordinates
    v = c * patches.v - s * patches.u
    shapes = np.array([gl.shape for gl in glyphs])
    sdf = np.empty_like(u)
    for shape in np.unique(shapes):
        chosen = shapes == shape
        sdf[chosen] = _shape_sdf(int(shape), u[chosen], v[chosen], g)
    patches.blend(canvas, sdf, _PALETTE_ARRAY[[gl.colour for gl in glyphs]])


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Textured clutter, drawn the same way in every class."""
    base = rng.uniform(0.3, 0.65) + rng.uniform(-0.06, 0.06, size=3)
    noise = rng.normal(0.0, 0.09, size=(3, 6, 6)).astype(np.float32)
    image = base.astype(np.float32)[:, None, None] + _resize_axis(_resize_axis(noise, size, 1), size, 2)
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size
    for _ in range(2):
        angle = rng.uniform(0, np.pi)
        cycles = rng.uniform(5.0, 14.0)
        phase = rng.uniform(0, 2 * np.pi)
        amplitude = rng.uniform(0.03, 0.09)
        tint = 1.0 + rng.uniform(-0.3, 0.3, size=3).astype(np.float32)
        # sin(a x + b y + phase) = sin(a x) cos(b y + phase) + cos(a x) sin(b y + phase)
        ax = 2 * np.pi * cycles * np.cos(angle) * grid
        by = 2 * np.pi * cycles * np.sin(angle) * grid + phase
        wave = np.cos(by)[:, None] * np.sin(ax)[None, :] + np.sin(by)[:, None] * np.cos(ax)[None, :]
        image += (amplitude * tint)[:, None, None] * wave[None]
    image += 0.02 * rng.standard_normal(size=image.shape, dtype=np.float32)
    return image


def _draw_strokes(rng: np.random.Generator, canvas: np.ndarray, size: int) -> None:
    """Eight short strokes in the glyph colours, white, black or grey, anywhere (also over the edge)."""
    choices = np.concatenate([_PALETTE_ARRAY, _RING_COLOURS, np.full((1, 3), np.nan, dtype=np.float32)])
    colours = choices[rng.integers(len(choices), size=N_STROKES)]
    grey = np.isnan(colours[:, 0])
    colours[grey] = rng.uniform(0.2, 0.8, size=(int(grey.sum()), 1)).astype(np.float32)
    x, y = rng.uniform(0, size, size=(2, N_STROKES))
    half_length = rng.uniform(0.03, 0.08, size=N_STROKES) * size
    angle = rng.uniform(0, np.pi, size=N_STROKES)
    half_width = max(0.012 * size, 0.6)
    patches = _Patches(x, y, 0.08 * size + half_width, _margin(size))
    dx = (np.cos(angle) * half_length).astype(np.float32)[:, None, None]
    dy = (np.sin(angle) * half_length).astype(np.float32)[:, None, None]
    t = np.clip((patches.u * dx + patches.v * dy) / (dx * dx + dy * dy), -1.0, 1.0)
    patches.blend(canvas, np.hypot(patches.u - t * dx, patches.v - t * dy) - half_width, colours)


def _part_mask(scene: Scene, size: int) -> np.ndarray:
    """The diagnostic parts: a disc of PART_RADIUS glyph sizes around each glyph of the pair (anti-aliased)."""
    g = GLYPH * size
    m = _margin(size)
    canvas = np.zeros((1, size + 2 * m, size + 2 * m), dtype=np.float32)
    marked = scene.glyphs[-2:]
    parts = _Patches(np.array([gl.x for gl in marked]), np.array([gl.y for gl in marked]), PART_RADIUS * g, m)
    parts.blend(canvas, np.hypot(parts.u, parts.v) - PART_RADIUS * g, np.ones((2, 1), dtype=np.float32))
    return canvas[0, m : m + size, m : m + size]


def render(scene: Scene, rng: np.random.Generator, size: int) -> np.ndarray:
    """The image (3, size, size) as uint8: background, strokes, rings, glyphs."""
    m = _margin(size)
    canvas = np.zeros((3, size + 2 * m, size + 2 * m), dtype=np.float32)
    canvas[:, m : m + size, m : m + size] = _background(rng, size)
    _draw_strokes(rng, canvas, size)
    _draw_glyphs(canvas, scene, size)
    image = canvas[:, m : m + size, m : m + size]
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# The dataset
# ----------------------------------------------------------------------------------------------


def _check_image_size(image_size, name: str = "image_size") -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)):
        raise TypeError(f"{name} must be an int between {MIN_SIZE} and {MAX_SIZE}, got {image_size!r}")
    if not MIN_SIZE <= image_size <= MAX_SIZE:
        raise ValueError(f"{name} must be between {MIN_SIZE} and {MAX_SIZE} pixels, got {image_size}")
    return int(image_size)


@dataclass
class SynthClickSample:
    """One item with everything known about it (``SynthClick.sample(i)``)."""

    image: torch.Tensor  # (3, H, W) float32 in [0, 1]
    label: int
    human_map: torch.Tensor  # (H, W) float32 in [0, 1], max 1
    part_mask: torch.Tensor  # (H, W) float32: the unblurred mask of the diagnostic parts
    scene: Scene = field(repr=False)

    @property
    def class_name(self) -> str:
        return CLASSES[self.label]


class SynthClick(Dataset):
    """SynthClick(split, image_size, seed): ``(image, label, human_map)`` items, generated on the fly.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``; each draws from its own seed stream.
        image_size: side in pixels, 64 to 224.
        seed: non-negative int; item ``i`` depends only on ``(seed, split, i)`` (and the image size).
        size: number of items (default 12000 train, 2400 val, 2400 test).  Item ``i`` has label
            ``i % 12``, so classes are balanced.
        cache: keep generated items in memory (per process: with DataLoader workers, pass
            ``persistent_workers=True`` or the workers' caches go with them after each epoch).
            Kept per item: the uint8 image and the 64x64 blurred map (~28 KB at 64 px, ~167 KB at 224).
        cache_dir: also keep them on disk there (one ``.npz`` per item, written atomically); a
            folder per (version, size, seed, split) so settings never mix.
        transform: applied to the image tensor only (e.g. normalisation).  Geometric transforms would
            move the image away from its map; rotations by 90 degrees and flips keep the label.

    See the module docstring or :func:`describe` for what makes a class.
    """

    classes = CLASSES
    num_classes = len(CLASSES)
    # Per-channel mean and std of the pixels of the first 1200 training images (seed 0, 64 px),
    # ``channel_stats(SynthClick("train", 64, seed=0, size=1200))``; tests/test_synthclick.py checks
    # them with ``channel_stats`` on the first 400 of those images.  At 112 px
    # (generator version 3) the means are the same within 0.004 and the stds about 0.01 larger.
    mean = (0.4908, 0.4883, 0.4671)
    std = (0.2086, 0.1862, 0.2034)

    def __init__(
        self,
        split: str = "train",
        image_size: int = 64,
        seed: int = 0,
        size: int | None = None,
        cache: bool = False,
        cache_dir: str | os.PathLike | None = None,
        transform=None,
    ):
        check_choice("split", split, SPLITS)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        size = DEFAULT_SIZES[split] if size is None else size
        check_positive_int(size=size)
        self.split = split
        self.image_size = _check_image_size(image_size)
        self.seed = int(seed)
        self.size = int(size)
        self.transform = transform
        self._memory: dict[int, tuple[np.ndarray, np.ndarray]] | None = {} if cache else None
        self.cache_dir = None
        if cache_dir is not None:
            name = f"synthclick-v{GENERATOR_VERSION}-{self.image_size}px-seed{self.seed}-{split}"
            self.cache_dir = Path(cache_dir) / name
            self.cache_dir.mkdir(parents=True, exist_ok=True)

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        return (
            f"SynthClick(split={self.split!r}, image_size={self.image_size}, seed={self.seed}, "
            f"size={self.size}, classes={self.num_classes})"
        )

    def label_of(self, index: int) -> int:
        return self._check_index(index) % self.num_classes

    def _check_index(self, index) -> int:
        try:
            if isinstance(index, bool):
                raise TypeError
            index = operator.index(index)  # int, numpy integer, one-element integer tensor
        except TypeError:
            raise TypeError(f"SynthClick index must be an int, got {type(index).__name__}") from None
        if index < 0:
            index += self.size
        if not 0 <= index < self.size:
            raise IndexError(f"SynthClick index {index} out of range for {self.size} items")
        return int(index)

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed, SPLITS.index(self.split), index]))

    def scene(self, index: int) -> Scene:
        """Where everything is in item ``index``, without drawing it."""
        index = self._check_index(index)
        return make_scene(self._rng(index), self.label_of(index), self.image_size)

    def _generate(self, index: int, without_part: Optional[int] = None) -> tuple[np.ndarray, np.ndarray, Scene]:
        rng = self._rng(index)
        scene = make_scene(rng, self.label_of(index), self.image_size)
        if without_part is not None:
            scene = without_ring(scene, without_part)
        image = render(scene, rng, self.image_size)
        return image, clickme.blur_on_grid(_part_mask(scene, self.image_size)), scene

    def _cache_file(self, index: int) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / f"{index:07d}.npz"

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if self._memory is not None and index in self._memory:
            return self._memory[index]
        path = self._cache_file(index)
        item = None
        if path is not None and path.exists():
            item = self._read_cache_file(path)
        if item is None:
            image, small_map, _ = self._generate(index)
            item = image, small_map
            if path is not None:
                with atomic_path(path) as tmp:
                    with open(tmp, "wb") as handle:
                        np.savez(handle, image=image, small_map=small_map)
        if self._memory is not None:
            self._memory[index] = item
        return item

    def _finish(self, image: np.ndarray, small_map: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        # numpy, not torch: torch's elementwise ops thread (and stall) on arrays this large
        image_t = torch.from_numpy(image.astype(np.float32) * np.float32(1 / 255))
        human_map = np.maximum(clickme.resize_bilinear(small_map, self.image_size), 0.0)
        human_map /= max(float(human_map.max()), 1e-12)
        return image_t, torch.from_numpy(human_map)

    def _read_cache_file(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        size = self.image_size
        try:
            with np.load(path) as stored:
                image, small_map = stored["image"], stored["small_map"]
        except Exception as error:  # truncated, not an npz, keys missing
            raise ValueError(f"SynthClick cache file {path} is unreadable ({error}); delete it") from error
        shape = (clickme.BLUR_GRID, clickme.BLUR_GRID)
        if image.shape != (3, size, size) or image.dtype != np.uint8 or small_map.shape != shape:
            raise ValueError(
                f"SynthClick cache file {path} holds image {image.shape} {image.dtype} and map "
                f"{small_map.shape}, expected (3, {size}, {size}) uint8 and {shape}; delete it"
            )
        return image, small_map

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, torch.Tensor]:
        index = self._check_index(index)
        image, human_map = self._finish(*self._load(index))
        if self.transform is not None:
            image = self.transform(image)
        return image, self.label_of(index), human_map

    def batch(self, indices: Optional[Sequence[int]] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Items ``indices`` (default: all) stacked: images (N, 3, H, W), labels (N,), human maps (N, H, W)."""
        return stack_items(self, range(len(self)) if indices is None else indices)

    def sample(self, index: int) -> SynthClickSample:
        """Item ``index`` with its part mask and scene (always regenerated, never cached)."""
        index = self._check_index(index)
        image, small_map, scene = self._generate(index)
        image_t, human_map = self._finish(image, small_map)
        mask = torch.from_numpy(_part_mask(scene, self.image_size))
        return SynthClickSample(image_t, scene.label, human_map, mask, scene)

    def one_part_image(self, index: int, part: int = 1) -> torch.Tensor:
        """Item ``index``'s image with the ring of marked glyph ``part`` (0 or 1) left out, all else the
        same: the glyph stays, as one more distractor, so only one part of the evidence is marked."""
        image, _, _ = self._generate(self._check_index(index), without_part=part)
        image_t = torch.from_numpy(image.astype(np.float32) * np.float32(1 / 255))
        return image_t if self.transform is None else self.transform(image_t)

    @staticmethod
    def describe() -> str:
        return describe()


def describe() -> str:
    """A plain-text table of the classes and where their evidence lies."""
    lines = [
        "SynthClick (v3): 12 classes = how far apart the two ringed glyphs are x the direction of their axis.",
        "Every image: all 16 (shape, colour) glyphs + 1 duplicate, 2 of them ringed; textured clutter.",
        f"Shapes {', '.join(SHAPES)}; colours {', '.join(COLOURS)}; glyph size {GLYPH:.2f} x image side.",
        f"Axis directions {', '.join(str(a) for a in ORIENTATIONS)} degrees (within {ORIENTATION_JITTER:.0f}).",
        "",
        f"{'label':>5}  {'class':<14} {'centre distance / side':<24} evidence",
    ]
    for label, name in enumerate(CLASSES):
        span = name.split(", ")[0]
        lo, hi = SPANS[span]
        where = {"near": "local (one window of ~0.44 side)", "mid": "long-range: both parts at once",
                 "far": "long-range, or the rings' places (border)"}[span]
        lines.append(f"{label:>5}  {name:<14} {lo:.2f} - {hi:.2f}{'':<13} {where}")
    lines += [
        "",
        "Human map: disc of 0.95 glyph sizes around each ringed glyph, resized to 64x64, blurred",
        "(10x10 Gaussian, sigma 10), resized to the image, max 1: the label depends on nothing else.",
    ]
    return "\n".join(lines)


def channel_stats(dataset: SynthClick, count: int = 1200) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of the pixels of the first ``count`` items of ``dataset``."""
    count = min(count, len(dataset))
    total = torch.zeros(3, dtype=torch.float64)
    total_sq = torch.zeros(3, dtype=torch.float64)
    for i in range(count):
        image = dataset[i][0].to(torch.float64)
        total += image.mean(dim=(1, 2))
        total_sq += (image**2).mean(dim=(1, 2))
    mean = total / count
    std = (total_sq / count - mean**2).sqrt()
    return tuple(round(float(m), 4) for m in mean), tuple(round(float(s), 4) for s in std)


def factor_accuracy(confusion) -> dict[str, float]:
    """Accuracy on each factor that makes a class, from a (12, 12) confusion matrix (rows: true
    class): how far apart the marked parts are (``span``, chance 1/3) and the direction of their
    axis (``orientation``, chance 1/4); and the accuracy on the classes of each span (``near``,
    ``mid``, ``far``: the far-evidence classes apart, chance 1/12)."""
    confusion = np.asarray(confusion)
    if confusion.shape != (len(CLASSES), len(CLASSES)):
        raise ValueError(f"confusion must be {len(CLASSES)}x{len(CLASSES)}, got {confusion.shape}")
    labels = np.arange(len(CLASSES))
    span, orientation = np.divmod(labels, len(ORIENTATIONS))
    total = confusion.sum()
    out = {
        "span": float(confusion[span[:, None] == span[None, :]].sum() / total),
        "orientation": float(confusion[orientation[:, None] == orientation[None, :]].sum() / total),
    }
    for k, name in enumerate(SPANS):
        rows = confusion[span == k]
        out[name] = float(rows[:, span == k].diagonal().sum() / max(rows.sum(), 1))
    return out


def position_bound(image_size: int = 112, count: int = 4000, grid: int = 16, seed: int = 0) -> list[dict]:
    """How much of the label the places of the rings give away, from the placement code alone.

    Bayes classifiers on a ``grid`` x ``grid`` histogram of ring centres, fitted on ``count`` pairs
    per class and tested on ``count // 4`` others: ``one ring`` sees where one ring lies; ``both rings,
    each alone`` adds the two rings' log-likelihoods, the most a model can get that pools what each
    ring says alone (no unit seeing both).  One row per span: accuracy on the 12-class label."""
    check_positive_int(count=count, grid=grid)
    size = _check_image_size(image_size)
    rng = np.random.default_rng(seed)
    spans = list(SPANS)

    def cells(label: int, n: int) -> np.ndarray:  # (n, 2 rings, (x, y)) grid cells
        pairs = np.stack([_place_pair(rng, spans[label // len(ORIENTATIONS)], label % len(ORIENTATIONS), size)
                          for _ in range(n)])
        return np.clip((pairs / size * grid).astype(np.int64), 0, grid - 1)

    log_likelihood = np.empty((len(CLASSES), grid, grid))
    for label in range(len(CLASSES)):
        hist = np.ones((grid, grid))  # Laplace smoothing
        fitted = cells(label, count)
        for ring in (0, 1):
            np.add.at(hist, (fitted[:, ring, 1], fitted[:, ring, 0]), 1)
        log_likelihood[label] = np.log(hist / hist.sum())
    rows = []
    for k, span in enumerate(spans):
        one = both = n = 0
        for label in range(k * len(ORIENTATIONS), (k + 1) * len(ORIENTATIONS)):
            test = cells(label, max(1, count // 4))
            first = log_likelihood[:, test[:, 0, 1], test[:, 0, 0]]  # (classes, n)
            second = log_likelihood[:, test[:, 1, 1], test[:, 1, 0]]
            one += int((first.argmax(0) == label).sum())
            both += int(((first + second).argmax(0) == label).sum())
            n += len(test)
        rows.append({"span": span, "chance": 1 / len(CLASSES), "one ring": one / n, "both rings, each alone": both / n})
    return rows


