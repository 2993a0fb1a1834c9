"""The offline delay task: deterministic, balanced, and only solvable from spike timing."""

import pytest
import torch

from dcls_lib.data.delay_task import DelayTaskSpec, generate, make_motifs, make_splits
from dcls_lib.snn import DelaySNN, readout_scores

CLEAN = DelayTaskSpec(n_channels=5, n_classes=3, n_steps=20, max_lag=7, jitter=0, noise_rate=0.0, seed=3)


def test_generation_is_deterministic_and_seeded():
    x1, y1 = generate(DelayTaskSpec(), 64, seed=5)
    x2, y2 = generate(DelayTaskSpec(), 64, seed=5)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    x3, _ = generate(DelayTaskSpec(), 64, seed=6)
    assert not torch.equal(x1, x3)
    splits = make_splits(DelayTaskSpec(), 32, 16, seed=0)
    assert splits["train"][0].shape == (32, 8, 32) and splits["test"][0].shape == (16, 8, 32)
    assert not torch.equal(splits["train"][0][:16], splits["test"][0])


def test_motifs_are_distinct_classes_of_distinct_offsets():
    motifs = make_motifs(DelayTaskSpec(n_classes=6))
    assert motifs.shape == (6, 8)
    assert motifs.min() >= 0 and motifs.max() < 10
    assert all(len(set(m.tolist())) == 8 for m in motifs), "no two pattern spikes coincide"
    assert len({tuple(m.tolist()) for m in motifs}) == 6


def test_clean_samples_hold_one_spike_per_channel_at_the_motif_offsets():
    x, y = generate(CLEAN, 30, seed=0)
    motifs = make_motifs(CLEAN)
    assert set(x.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(x.sum(-1), torch.ones(30, 5)), "every class has the same spike count on every channel"
    assert torch.equal(torch.bincount(y), torch.tensor([10, 10, 10]))
    times = x.argmax(-1)
    relative = times - times.min(-1, keepdim=True).values
    for sample in range(30):
        motif = motifs[y[sample]]
        assert torch.equal(relative[sample], motif - motif.min())


def test_noise_and_jitter_stay_inside_the_window():
    spec = DelayTaskSpec(jitter=2, jitter_prob=1.0, noise_rate=0.05)
    x, _ = generate(spec, 200, seed=1)
    assert x.shape == (200, 8, 32)
    assert (x.sum(-1) >= 1).all()
    assert x.sum() > 200 * 8, "background spikes added"


def test_without_delays_memoryless_neurons_cannot_tell_the_classes_apart():
    """The task needs delays: a network with no delays and no memory scores every class alike."""
    x, y = generate(CLEAN, 12, seed=2)
    torch.manual_seed(0)
    model = DelaySNN(5, 3, n_hidden=16, delays="none", tau=1.0, readout_tau=1.0).eval()
    scores = readout_scores(model(x))
    for a in range(12):
        for b in range(12):
            if y[a] != y[b]:
                torch.testing.assert_close(scores[a], scores[b])


def test_bad_specs_name_the_field():
    with pytest.raises(ValueError, match="max_lag"):
        DelayTaskSpec(n_channels=8, max_lag=4)
    with pytest.raises(ValueError, match="noise_rate"):
        DelayTaskSpec(noise_rate=1.5)
    with pytest.raises(ValueError, match="n_samples"):
        generate(DelayTaskSpec(), 0, seed=0)
