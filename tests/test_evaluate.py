"""The evaluation engine: scores equal a direct per-image computation; results resume without loss or double counting."""

import json
import warnings

import numpy as np
import pytest
import scipy.stats
import torch
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn
from torch.utils.data import Dataset

import dcls_lib.evaluate as evaluate
from dcls_lib.cam import ThresholdGradCAM
from dcls_lib.data.clickme import ClickMe, write_clickme_shard
from dcls_lib.evaluate import ExplainerSettings, PixelNormalize, evaluate_alignment
from dcls_lib.metrics import HUMAN_CEILING


class Tiny224(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 8, stride=8)
        self.target = nn.Conv2d(8, 6, 3, stride=2, padding=1)
        self.head = nn.Linear(6, classes)

    def forward(self, x):
        return self.head(torch.relu(self.target(torch.relu(self.stem(x)))).mean((2, 3)))


def model(seed=0):
    torch.manual_seed(seed)
    return Tiny224().eval()


def shard_samples(count, seed, blank=()):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        coarse = torch.from_numpy(rng.integers(0, 256, (1, 3, 8, 8)).astype(np.float32))
        image = torch.nn.functional.interpolate(coarse, size=(256, 256), mode="bilinear")[0].permute(1, 2, 0)
        heat = np.zeros((256, 256), np.uint8)
        if i not in blank:
            r, c = rng.integers(40, 216, 2)
            heat[r - 40 : r + 40, c - 40 : c + 40] = 255
        out.append((image.round().byte().numpy(), heat, int(rng.integers(0, 10))))
    return out


@pytest.fixture(scope="module")
def clickme(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clickme")
    write_clickme_shard(folder / "val-0.tfrecords", shard_samples(6, seed=0))
    write_clickme_shard(folder / "val-1.tfrecords", shard_samples(4, seed=1, blank=(2,)))
    return ClickMe(folder)


def run(dataset, results=None, **kw):
    net = model()
    explainer = {k: kw.pop(k) for k in ("explainer", "threshold", "amp", "channels_last") if k in kw}
    options = dict(preprocess=PixelNormalize(), batch_size=3, progress=False, results_path=results,
                   settings=ExplainerSettings(**explainer))
    options.update(kw)
    return evaluate_alignment(net, net.target, dataset, **options)


def direct_scores(dataset, threshold=0.3):
    """One image at a time: pytorch-grad-cam's API with ThresholdGradCAM, scipy's Spearman."""
    net, normalize, rhos = model(), PixelNormalize(), []
    with ThresholdGradCAM(net, [net.target], threshold=threshold) as cam:
        for image, label, human in (dataset[i] for i in range(len(dataset))):
            heat = cam(normalize(image[None]), [ClassifierOutputTarget(label)])[0]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                rhos.append(scipy.stats.spearmanr(heat.ravel(), human.numpy().ravel()).statistic)
    return np.array(rhos)


def image_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines() if '"type": "image"' in line]


def test_scores_equal_a_direct_per_image_computation(clickme, tmp_path):
    rho = direct_scores(clickme)
    summary = run(clickme, tmp_path / "r.jsonl")
    assert summary.images == 10 and summary.constant_human_maps == 1 and np.isnan(rho[8])
    assert summary.alignment == pytest.approx(np.nan_to_num(rho).mean() / HUMAN_CEILING, abs=1e-6)
    lines = image_lines(tmp_path / "r.jsonl")
    assert [e["id"] for e in lines] == clickme.image_ids
    stored = np.array([np.nan if e["spearman"] is None else e["spearman"] for e in lines])
    np.testing.assert_allclose(stored, rho, atol=1e-6)
    skipped = run(clickme, tmp_path / "r.jsonl", constant="skip")  # same file, nothing recomputed
    assert skipped.images_this_run == 0
    assert skipped.alignment == pytest.approx(np.nanmean(rho) / HUMAN_CEILING, abs=1e-6)
    saved = json.loads((tmp_path / "r.jsonl.summary.json").read_text())
    assert saved["alignment"] == skipped.alignment and saved["constant_policy"] == "skip"
    assert "alignment score" in summary.table()


class Interrupted(Dataset):
    """Stops the run (as Ctrl-C would) when item ``at`` is loaded."""

    def __init__(self, base, at):
        self.base, self.at, self.image_ids = base, at, base.image_ids

    def __len__(self):
        return len(self.base)

    def __getitem__(self, index):
        if index == self.at:
            raise KeyboardInterrupt
        return self.base[index]


def test_interrupted_run_resumes_without_loss_or_double_counting(clickme, tmp_path):
    reference = run(clickme, tmp_path / "reference.jsonl")
    path = tmp_path / "r.jsonl"
    with pytest.raises(KeyboardInterrupt):
        run(Interrupted(clickme, at=7), path)
    assert [e["id"] for e in image_lines(path)] == clickme.image_ids[:6]  # two whole batches of 3 were saved
    resumed = run(clickme, path)
    assert resumed.images_this_run == 4 and resumed.images == 10
    assert sorted(e["id"] for e in image_lines(path)) == sorted(clickme.image_ids)
    assert resumed.alignment == pytest.approx(reference.alignment, abs=1e-12)


def test_line_cut_by_a_crash_is_dropped_and_recomputed(clickme, tmp_path):
    path = tmp_path / "r.jsonl"
    full = run(clickme, path)
    text = path.read_text()
    path.write_text(text[: len(text) - 40])  # the last line was being written when the machine died
    again = run(clickme, path)
    assert again.images_this_run == 1 and again.images == 10
    assert again.alignment == pytest.approx(full.alignment, abs=1e-12)
    assert all(json.loads(line) for line in path.read_text().splitlines())


def test_results_of_other_settings_or_duplicates_are_refused(clickme, tmp_path):
    path = tmp_path / "r.jsonl"
    run(clickme, path, limit=3, metadata={"model": "tiny"})
    with pytest.raises(ValueError, match=r"threshold: file 0.3 vs now 0.5"):
        run(clickme, path, threshold=0.5, metadata={"model": "tiny"})
    with pytest.raises(ValueError, match=r"model: file 'tiny' vs now 'other'"):
        run(clickme, path, metadata={"model": "other"})
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines + [lines[-1]]) + "\n")
    with pytest.raises(ValueError, match="already in the file"):
        run(clickme, path, metadata={"model": "tiny"})
    (tmp_path / "other.txt").write_text("hello\n")
    with pytest.raises(ValueError, match="not valid JSON"):
        run(clickme, tmp_path / "other.txt")


def test_limit_gradcam_and_memory_only(clickme):
    summary = run(clickme, limit=4, explainer="gradcam")
    assert summary.images == 4 and summary.results_path is None
    assert summary.settings["threshold"] is None and summary.settings["explainer"] == "gradcam"


def test_loader_workers_give_the_same_results(clickme, tmp_path):
    alone = run(clickme, tmp_path / "a.jsonl", limit=4)
    workers = run(clickme, tmp_path / "b.jsonl", limit=4, num_workers=2)  # as on CUDA, where workers are the default
    # workers run torch on one thread: float sums may round differently (the blur), by ~1e-7
    np.testing.assert_allclose(
        [e["spearman"] for e in image_lines(tmp_path / "b.jsonl")], [e["spearman"] for e in image_lines(tmp_path / "a.jsonl")], atol=1e-6
    )
    assert workers.alignment == pytest.approx(alone.alignment, abs=1e-6)


def test_channels_last_changes_rounding_only(clickme):
    fast = run(clickme, limit=4)
    plain = run(clickme, limit=4, channels_last=False)
    assert fast.alignment == pytest.approx(plain.alignment, abs=1e-5)


def test_mixed_precision_on_cpu_is_close_to_float32(clickme):
    full = run(clickme, limit=6)
    mixed = run(clickme, limit=6, amp=True)
    assert mixed.settings["precision"] == "bfloat16"
    assert mixed.alignment == pytest.approx(full.alignment, abs=0.05)


def test_bad_arguments(clickme):
    with pytest.raises(ValueError, match="explainer"):
        run(clickme, explainer="saliency")
    with pytest.raises(ValueError, match="amp"):
        run(clickme, amp="int8")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            run(clickme, device="cuda")


def test_pixel_normalize():
    images = torch.ones(2, 3, 4, 4)
    out = PixelNormalize(mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))(images)
    assert torch.allclose(out[:, :, 0, 0], torch.tensor([2.0, 1.0, 0.5]).expand(2, 3))


def test_top_ten_percent_dice_and_iou_as_harmonization_computes_them(clickme, tmp_path):
    """Each map binarised above its own 90th percentile (numpy's), Dice and IoU with Harmonization's epsilon."""
    net, normalize = model(), PixelNormalize()
    expected = []
    with ThresholdGradCAM(net, [net.target], threshold=0.3) as cam:
        for image, label, human in (clickme[i] for i in range(4)):
            heat = cam(normalize(image[None]), [ClassifierOutputTarget(label)])[0]
            a, b = heat > np.percentile(heat, 90), human.numpy() > np.percentile(human.numpy(), 90)
            expected.append((2 * (a & b).sum() / (a.sum() + b.sum() + 1e-9), (a & b).sum() / ((a | b).sum() + 1e-9)))
    summary = run(clickme, tmp_path / "r.jsonl", limit=4)
    lines = image_lines(tmp_path / "r.jsonl")
    np.testing.assert_allclose([(e["dice"], e["iou"]) for e in lines], expected, atol=1e-6)
    assert summary.dice == pytest.approx(np.mean([d for d, _ in expected]), abs=1e-6)
    assert summary.iou == pytest.approx(np.mean([j for _, j in expected]), abs=1e-6)
    assert 0 < summary.iou < summary.dice < 1 and "top-10% Dice" in summary.table()


def test_skipped_constant_maps_are_counted_in_the_table(clickme):
    kept, skipped = run(clickme), run(clickme, constant="skip")
    assert (kept.images, kept.scored) == (10, 10) and (skipped.images, skipped.scored) == (10, 9)
    assert "10 evaluated, 9 scored (1 with a constant map left out)" in skipped.table()


def damaged_copy(folder, tmp_path, record=4):
    """The clickme folder with one record's JPEG bytes changed: its data CRC no longer matches."""
    from dcls_lib.data.tfrecords import index_tfrecord

    copy = tmp_path / "damaged"
    copy.mkdir()
    for shard in folder.iterdir():
        (copy / shard.name).write_bytes(shard.read_bytes())
    shard = copy / "val-0.tfrecords"
    offset, _ = index_tfrecord(shard)[record]
    data = bytearray(shard.read_bytes())
    data[offset + 12 + 40] ^= 0xFF
    shard.write_bytes(bytes(data))
    return ClickMe(copy)


def test_a_damaged_record_keeps_its_batch_and_can_be_skipped(clickme, tmp_path):
    damaged = damaged_copy(clickme.files[0].parent, tmp_path)
    path = tmp_path / "r.jsonl"
    with pytest.raises(evaluate.DamagedRecordError, match=r"val-0.tfrecords: record 4: data CRC.*--skip-damaged"):
        run(damaged, path)  # batches of 3: record 4 sits in the second, with records 3 and 5
    assert [e["id"] for e in image_lines(path)] == damaged.image_ids[:4] + damaged.image_ids[5:6]
    summary = run(damaged, path, skip_damaged=True)
    assert summary.images == 9 and summary.images_this_run == 5
    assert list(summary.damaged) == ["val-0.tfrecords#4"] and "data CRC" in summary.damaged["val-0.tfrecords#4"]
    assert "1 skipped" in summary.table() and "val-0.tfrecords#4" in summary.table()
    run(clickme, tmp_path / "intact.jsonl")
    intact = {e["id"]: e["spearman"] for e in image_lines(tmp_path / "intact.jsonl")}
    for entry in image_lines(path):  # the same scores as without the damage (batches differ: float rounding)
        assert entry["spearman"] == pytest.approx(intact[entry["id"]], abs=1e-6, nan_ok=True) or entry["spearman"] is None
