"""SynthClick: determinism, shapes, the human map, the design (no shortcut), the cache, bad input."""

from __future__ import annotations

import contextlib
import itertools
import math

import matplotlib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import Normalize

from dcls_lib.data import SynthClick
from dcls_lib.data import synthclick as sc

matplotlib.use("Agg")

N_CLASSES = 12


@contextlib.contextmanager
def one_thread():
    """Small torch ops on a shared, busy machine are many times faster on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def probe_set():
    """960 training and 480 test images at 64 px (80 and 40 per class), generated once."""

    def load(split, size):
        ds = SynthClick(split, 64, seed=3, size=size)
        images = torch.stack([ds[i][0] for i in range(size)])
        labels = torch.tensor([ds.label_of(i) for i in range(size)])
        return images, labels

    return load("train", 960), load("test", 480)


# ---------------------------------------------------------------------------------------------
# Items: determinism, shapes, ranges
# ---------------------------------------------------------------------------------------------


def test_same_seed_gives_identical_items_and_other_seeds_or_splits_differ():
    a, b = SynthClick("train", 64, seed=7, size=24), SynthClick("train", 64, seed=7, size=24)
    for i in (0, 5, 23):
        (xa, ya, ma), (xb, yb, mb) = a[i], b[i]
        assert torch.equal(xa, xb) and ya == yb and torch.equal(ma, mb)
    # an item regenerated alone, in any order, is the same
    assert torch.equal(a[5][0], SynthClick("train", 64, seed=7, size=24)[5][0])
    for other in (SynthClick("train", 64, seed=8, size=24), SynthClick("val", 64, seed=7, size=24)):
        assert not torch.equal(a[5][0], other[5][0])
        assert not torch.equal(a[5][2], other[5][2])


def test_generation_ignores_and_keeps_the_global_random_state():
    ds = SynthClick("val", 64, seed=1, size=12)
    np.random.seed(0)
    torch.manual_seed(0)
    first = ds[3][0]
    state_np, state_torch = np.random.get_state()[1].copy(), torch.get_rng_state().clone()
    np.random.seed(123)
    torch.manual_seed(123)
    assert torch.equal(ds[3][0], first)
    np.random.seed(0)
    torch.manual_seed(0)
    ds[4]
    assert np.array_equal(np.random.get_state()[1], state_np)
    assert torch.equal(torch.get_rng_state(), state_torch)


def test_dataloader_workers_give_the_same_items():
    ds = SynthClick("test", 64, seed=2, size=8)
    direct = torch.stack([ds[i][0] for i in range(8)])
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2)
    loaded = torch.cat([batch[0] for batch in loader])
    assert torch.equal(direct, loaded)


@pytest.mark.parametrize("size", [64, 224])
def test_shapes_and_ranges(size):
    ds = SynthClick("train", size, seed=0, size=N_CLASSES)
    for i in (0, 7, 11):
        image, label, human_map = ds[i]
        assert image.shape == (3, size, size) and image.dtype == torch.float32
        assert human_map.shape == (size, size) and human_map.dtype == torch.float32
        assert isinstance(label, int) and label == i % N_CLASSES
        assert 0.0 <= image.min() and image.max() <= 1.0
        assert torch.allclose(image * 255, (image * 255).round(), atol=1e-4)  # an 8-bit image
        assert image.std() > 0.1  # not blank
        assert human_map.min() >= 0.0 and human_map.max() == pytest.approx(1.0)


def test_odd_size_between_bounds_works():
    image, _, human_map = SynthClick("train", 97, size=3)[2]
    assert image.shape == (3, 97, 97) and human_map.shape == (97, 97)


def test_the_same_index_is_the_same_scene_at_every_size():
    small, large = SynthClick("train", 64, size=24).scene(13), SynthClick("train", 224, size=24).scene(13)
    assert small.label == large.label
    for a, b in zip(small.glyphs, large.glyphs):
        assert (a.shape, a.colour, a.marked) == (b.shape, b.colour, b.marked)
        assert a.x / 64 == pytest.approx(b.x / 224) and a.y / 64 == pytest.approx(b.y / 224)


def test_transform_applies_to_the_image_only():
    mean = torch.tensor(SynthClick.mean)[:, None, None]
    std = torch.tensor(SynthClick.std)[:, None, None]
    plain = SynthClick("val", 64, size=4)
    normed = SynthClick("val", 64, size=4, transform=Normalize(SynthClick.mean, SynthClick.std))
    assert torch.allclose(normed[1][0], (plain[1][0] - mean) / std)
    assert torch.equal(normed[1][2], plain[1][2])


def test_batch_stacks_the_items_it_names():
    data = SynthClick("val", image_size=64, seed=3, size=6)
    images, labels, human = data.batch([4, 1])
    for k, i in enumerate([4, 1]):
        image, label, human_map = data[i]
        assert torch.equal(images[k], image) and labels[k].item() == label and torch.equal(human[k], human_map)
    assert data.batch()[0].shape == (6, 3, 64, 64) and data.batch()[1].dtype == torch.int64
    with pytest.raises(ValueError, match="at least one"):
        data.batch([])
    with pytest.raises(IndexError):
        data.batch([6])


# ---------------------------------------------------------------------------------------------
# The design: what makes a class, and no shortcut around the diagnostic parts
# ---------------------------------------------------------------------------------------------


def test_classes_are_balanced_and_all_present():
    ds = SynthClick("train", 64, size=120)
    counts = np.bincount([ds.label_of(i) for i in range(len(ds))], minlength=N_CLASSES)
    assert len(SynthClick.classes) == N_CLASSES and (counts == 10).all()
    assert len(SynthClick("train")) == 12000 and len(SynthClick("test")) == 2400


def test_every_scene_follows_the_design():
    """Every image: all 16 (shape, colour) glyphs plus one duplicate, two of them marked, at the
    distance and along the axis the label says, distractors clear of the marked parts."""
    for size, split in ((64, "train"), (224, "test")):
        ds = SynthClick(split, size, seed=5, size=240)
        g = sc.GLYPH * size
        for i in range(len(ds)):
            scene = ds.scene(i)
            glyphs = scene.glyphs
            assert len(glyphs) == 17 and sum(gl.marked for gl in glyphs) == 2
            kinds = [(gl.shape, gl.colour) for gl in glyphs]
            assert set(kinds) == set(itertools.product(range(4), range(4)))
            a, b = scene.marked
            span, angle = sc.CLASSES[scene.label].split(", ")
            axis = math.degrees(math.atan2(-(b.y - a.y), b.x - a.x)) % 180  # y grows downwards
            off = min(abs(axis - int(angle.split()[0])), 180 - abs(axis - int(angle.split()[0])))
            assert off <= sc.ORIENTATION_JITTER + 1e-6, (axis, angle)
            lo, hi = sc.SPANS[span]
            assert lo * size - 1e-6 <= scene.span_pixels <= hi * size + 1e-6
            for gl in glyphs:
                reach = (sc.PART_RADIUS if gl.marked else sc.GLYPH_RADIUS) * g
                assert reach <= gl.x <= size - reach and reach <= gl.y <= size - reach
                if not gl.marked:
                    for m in scene.marked:
                        assert math.hypot(gl.x - m.x, gl.y - m.y) > (sc.PART_RADIUS + sc.GLYPH_RADIUS) * g


def test_what_a_marked_part_looks_like_says_nothing_about_the_class():
    """In every class each marked glyph's shape and colour are uniform, and so are the duplicate's.
    Checked on 2400 scenes (no drawing)."""
    ds = SynthClick("train", 64, seed=11, size=2400)
    counts = np.zeros((N_CLASSES, 2, 4, 4))  # class, marked part, shape, colour
    duplicate = np.zeros((N_CLASSES, 4, 4))
    for i in range(len(ds)):
        scene = ds.scene(i)
        for k, gl in enumerate(scene.marked):
            counts[scene.label, k, gl.shape, gl.colour] += 1
        kinds = [(gl.shape, gl.colour) for gl in scene.glyphs]
        dup = next(kind for kind in set(kinds) if kinds.count(kind) == 2)
        duplicate[scene.label][dup] += 1
    expected = 200 / 16  # per class, per (shape, colour)
    for table in (counts.sum(axis=1) / 2, duplicate):
        shape_freq = table.sum(axis=2) / 200  # class x shape
        colour_freq = table.sum(axis=1) / 200
        assert np.abs(shape_freq - 0.25).max() < 0.1 and np.abs(colour_freq - 0.25).max() < 0.1
        assert table.max() < 3.5 * expected


def _global_features(images: torch.Tensor) -> torch.Tensor:
    """What a shortcut would use: channel means and stds, 8-bin colour histograms, brightness,
    and the fraction of pixels near each palette colour, white and black."""
    flat = images.reshape(len(images), 3, -1).numpy()
    n, _, pixels = flat.shape
    bins = np.minimum((flat * 8).astype(np.int64), 7) + 8 * np.arange(3 * n).reshape(n, 3, 1)
    hist = np.bincount(bins.ravel(), minlength=24 * n).reshape(n, 24) / pixels
    refs = list(sc.PALETTE.values()) + [(1.0, 1.0, 1.0), (0.05, 0.05, 0.05)]
    near = [(((flat - np.asarray(r, dtype=np.float32)[:, None]) ** 2).sum(1) < 0.15**2).mean(1) for r in refs]
    features = [flat.mean(2), flat.std(2), hist, flat.mean((1, 2))[:, None], np.stack(near, 1)]
    return torch.from_numpy(np.concatenate(features, axis=1).astype(np.float32))


def _linear_probe(train_x, train_y, test_x, test_y, steps=300) -> float:
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = (train_x - mu) / sd, (test_x - mu) / sd
    torch.manual_seed(0)
    layer = torch.nn.Linear(train_x.shape[1], N_CLASSES)
    opt = torch.optim.Adam(layer.parameters(), lr=0.05, weight_decay=1e-3)
    with one_thread():
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(layer(train_x), train_y).backward()
            opt.step()
        with torch.no_grad():
            return (layer(test_x).argmax(1) == test_y).float().mean().item()


def test_no_global_shortcut_a_linear_probe_on_image_statistics_stays_at_chance(probe_set):
    (train_x, train_y), (test_x, test_y) = probe_set
    f_train, f_test = _global_features(train_x), _global_features(test_x)
    accuracy = _linear_probe(f_train, train_y, f_test, test_y)
    assert accuracy < 1 / N_CLASSES + 0.05, accuracy  # chance 0.083; 480 test images: sd 0.013
    # The probe does find a shortcut when there is one: a class-dependent red tint of at most 3%
    # (the image-to-image spread of the red mean is about 10%).
    tint = torch.zeros(N_CLASSES, 3, 1, 1)
    tint[:, 0, 0, 0] = torch.linspace(-0.03, 0.03, N_CLASSES)
    leaky_train = _global_features((train_x + tint[train_y]).clamp(0, 1))
    leaky_test = _global_features((test_x + tint[test_y]).clamp(0, 1))
    assert _linear_probe(leaky_train, train_y, leaky_test, test_y) > 0.2


def test_per_class_image_statistics_are_close(probe_set):
    (images, labels), _ = probe_set
    means = images.mean(dim=(2, 3))  # (n, 3)
    spread = means.std(0)
    for c in range(N_CLASSES):
        class_mean = means[labels == c].mean(0)
        # 80 images per class: the standard error is spread / 9; allow 4 of them
        assert ((class_mean - means.mean(0)).abs() < 4 * spread / math.sqrt(80)).all(), c


def test_normalisation_constants_are_what_channel_stats_measures():
    from dcls_lib.data.synthclick import channel_stats

    small = SynthClick("train", 64, seed=0, size=6)
    images = torch.stack([small[i][0] for i in range(6)])
    mean, std = channel_stats(small, count=6)
    assert torch.allclose(torch.tensor(mean), images.mean(dim=(0, 2, 3)), atol=1e-4)
    assert torch.allclose(torch.tensor(std), images.permute(1, 0, 2, 3).reshape(3, -1).std(1), atol=1e-3)
    # the constants' own measurement, on the first 400 of the 1200 images it used
    mean, std = channel_stats(SynthClick("train", 64, seed=0, size=400), count=400)
    assert torch.allclose(torch.tensor(mean), torch.tensor(SynthClick.mean), atol=0.01)
    assert torch.allclose(torch.tensor(std), torch.tensor(SynthClick.std), atol=0.01)


# ---------------------------------------------------------------------------------------------
# The human map
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [64, 224])
def test_human_map_lies_on_the_diagnostic_parts(size):
    ds = SynthClick("val", size, seed=4, size=N_CLASSES)
    # the blur reaches 5 of 64 map pixels (kernel 10), plus one for the bilinear resizes
    reach = sc.PART_RADIUS * sc.GLYPH * size + 6 * size / 64
    centres = torch.arange(size) + 0.5
    for i in range(0, N_CLASSES, 1 if size == 64 else 5):  # at 224: one class per span
        item = ds.sample(i)
        human_map, mask = item.human_map, item.part_mask
        assert torch.equal(human_map, ds[i][2])
        assert human_map.min() >= 0
        inside = mask > 0.5
        near_parts = torch.zeros(size, size, dtype=torch.bool)
        for glyph in item.scene.marked:
            near_parts |= (centres[None, :] - glyph.x) ** 2 + (centres[:, None] - glyph.y) ** 2 <= reach**2
        assert human_map[near_parts].sum() / human_map.sum() > 0.99
        assert human_map[inside].sum() / human_map.sum() > 0.4
        assert inside.float().mean() < 0.1  # the parts are small: the map is informative
        # both parts get the map's peak value (both are needed), and they are where the scene says
        for glyph in item.scene.marked:
            x, y = int(glyph.x), int(glyph.y)
            assert human_map[y, x] > 0.9


def test_human_maps_are_part_masks_processed_by_the_clickme_code():
    """One implementation of the published map processing serves ClickMe and SynthClick."""
    from dcls_lib.data import clickme

    ds = SynthClick("val", 96, size=3)
    for i in range(3):
        mask = sc._part_mask(ds.scene(i), 96)
        expected = clickme.preprocess_human_map(mask, 96).clamp_min(0)
        expected /= expected.max()
        torch.testing.assert_close(ds[i][2], expected)


# ---------------------------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------------------------


def test_memory_cache_returns_the_same_items():
    plain, cached = SynthClick("train", 64, size=6), SynthClick("train", 64, size=6, cache=True)
    for _ in range(2):
        for i in range(6):
            assert all(torch.equal(a, b) if torch.is_tensor(a) else a == b for a, b in zip(plain[i], cached[i]))
    assert len(cached._memory) == 6


def test_disk_cache_round_trip(tmp_path, monkeypatch):
    first = SynthClick("val", 96, seed=9, size=5, cache_dir=tmp_path)
    items = [first[i] for i in range(5)]
    folder = first.cache_dir
    assert folder.parent == tmp_path and sorted(p.name for p in folder.iterdir()) == [f"{i:07d}.npz" for i in range(5)]

    def no_generation(self, index):
        raise AssertionError("the item should come from the cache")

    monkeypatch.setattr(SynthClick, "_generate", no_generation)
    second = SynthClick("val", 96, seed=9, size=5, cache_dir=tmp_path)
    for i in range(5):
        image, label, human_map = second[i]
        assert torch.equal(image, items[i][0]) and label == items[i][1] and torch.equal(human_map, items[i][2])
    # other settings use another folder, never these files
    assert SynthClick("val", 96, seed=10, size=5, cache_dir=tmp_path).cache_dir != folder


def test_unreadable_cache_file_is_named(tmp_path):
    ds = SynthClick("train", 64, size=3, cache_dir=tmp_path)
    (ds.cache_dir / "0000001.npz").write_bytes(b"not an npz")
    with pytest.raises(ValueError, match="0000001.npz"):
        ds[1]
    np.savez(ds.cache_dir / "0000002.npz", image=np.zeros((3, 32, 32), np.uint8), small_map=np.zeros((64, 64)))
    with pytest.raises(ValueError, match=r"0000002.npz.*\(3, 64, 64\)"):
        ds[2]


def test_disk_cache_leaves_no_partial_file_when_writing_fails(tmp_path, monkeypatch):
    def failing_savez(file, **arrays):
        file.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(sc.np, "savez", failing_savez)
    ds = SynthClick("train", 64, size=2, cache_dir=tmp_path)
    with pytest.raises(OSError, match="disk full"):
        ds[0]
    assert list(ds.cache_dir.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# Bad input, description, figure
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"split": "training"}, ValueError, "split"),
        ({"image_size": 63}, ValueError, "image_size"),
        ({"image_size": 225}, ValueError, "image_size"),
        ({"image_size": 64.0}, TypeError, "image_size"),
        ({"image_size": True}, TypeError, "image_size"),
        ({"seed": -1}, ValueError, "seed"),
        ({"seed": 1.5}, ValueError, "seed"),
        ({"size": 0}, ValueError, "size"),
        ({"size": "10"}, ValueError, "size"),
    ],
)
def test_bad_arguments_name_the_problem(kwargs, error, words):
    with pytest.raises(error, match=words):
        SynthClick(**kwargs)


def test_bad_index_and_bad_map_input():
    ds = SynthClick("train", 64, size=5)
    with pytest.raises(IndexError, match="out of range"):
        ds[5]
    with pytest.raises(TypeError, match="index"):
        ds[1.0]
    with pytest.raises(TypeError, match="index"):
        ds[True]
    assert torch.equal(ds[-1][0], ds[4][0])
    assert torch.equal(ds[torch.tensor(2)][0], ds[np.int64(2)][0])


def test_one_ring_left_out_changes_only_that_ring():
    ds = SynthClick("val", 96, seed=2, size=12)
    for i in (1, 10):
        image, _, human_map = ds[i]
        scene = ds.scene(i)
        for part in (0, 1):
            one = ds.one_part_image(i, part)
            changed = (one - image).abs().sum(0) > 0
            glyph = scene.glyphs[-2 + part]
            ys, xs = torch.nonzero(changed, as_tuple=True)
            assert changed.any()
            reach = sc.PART_RADIUS * sc.GLYPH * 96 + 1
            assert ((xs + 0.5 - glyph.x) ** 2 + (ys + 0.5 - glyph.y) ** 2).max() <= reach**2
        assert torch.equal(ds[i][2], human_map), "the human map is still the evidence: both glyphs"
    with pytest.raises(ValueError, match="part"):
        ds.one_part_image(0, part=2)


def test_the_place_of_one_ring_gives_little_away_except_for_far_pairs():
    """What the placement leaks (the border effect the module docstring measures): one ring's place
    says almost nothing about near and mid classes; where it is a real shortcut (far pairs near the
    edges) the bound says so, and a model using both places alone still misses most mid classes."""
    rows = {r["span"]: r for r in sc.position_bound(112, count=1500)}
    assert rows["near"]["one ring"] < 0.12 and rows["mid"]["one ring"] < 0.12
    assert rows["far"]["one ring"] > 0.3  # far pairs sit near the border: the bound finds it
    assert rows["mid"]["both rings, each alone"] < 0.45
    with pytest.raises(ValueError, match="count"):
        sc.position_bound(112, count=0)


def test_describe_names_every_class_and_its_evidence():
    text = SynthClick.describe()
    for name in SynthClick.classes:
        assert name in text
    assert "long-range" in text and "local" in text


def test_show_examples_draws_a_grid():
    from dcls_lib.chapters.synthclick_plots import show_examples

    ds = SynthClick("val", 64, size=36)
    fig = show_examples(ds, n_per_class=2, classes=[0, 5, 11])
    assert len(fig.axes) == 6
    fig = show_examples(ds, n_per_class=1, classes=[3], overlay=False)
    assert len(fig.axes) == 2
    with pytest.raises(ValueError, match="classes"):
        show_examples(ds, classes=[12])
    with pytest.raises(ValueError, match="too few"):
        show_examples(ds, n_per_class=4)
    matplotlib.pyplot.close("all")


def test_factor_accuracy_splits_a_confusion_matrix_into_factors_and_spans():
    from dcls_lib.data.synthclick import factor_accuracy

    confusion = np.zeros((12, 12), dtype=int)
    for label in range(12):
        confusion[label, (label // 4) * 4] = 10  # span always right, orientation always 0 degrees
    confusion[8:, :] = 0
    for label in range(8, 12):
        confusion[label, label] = 10  # far classes all right
    result = factor_accuracy(confusion)
    assert result["span"] == 1.0 and result["orientation"] == pytest.approx((2 + 4) / 12)
    assert (result["near"], result["mid"], result["far"]) == (0.25, 0.25, 1.0)
    with pytest.raises(ValueError, match="12x12"):
        factor_accuracy(np.zeros((3, 3)))
