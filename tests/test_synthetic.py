"""The synthetic tank: deterministic, drawn at any size, and with bursts that proximity predicts beyond ỹ."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from convlstm_jax.data import labels, synthetic


def test_same_seed_same_recording_other_seed_other():
    first = synthetic.generate(200, seed=3, height=24, width=32)
    again = synthetic.generate(200, seed=3, height=24, width=32)
    other = synthetic.generate(200, seed=4, height=24, width=32)
    np.testing.assert_array_equal(first.frames, again.frames)
    np.testing.assert_array_equal(first.positions, again.positions)
    assert not np.array_equal(first.frames, other.frames)


def test_frames_look_like_the_tank():
    recording = synthetic.generate(40, seed=0)
    frames = recording.frames
    assert frames.dtype == np.uint8 and frames.shape == (40, 120, 160)
    assert recording.positions.shape == (40, 6, 2) and recording.headings.shape == (40, 6)
    assert 3 <= np.median(frames) <= 12  # dark background with sensor noise
    # Six bright fish of about a dozen pixels each: a small bright fraction, bright peaks.
    bright = (frames > 60).mean()
    assert 0.002 < bright < 0.03, bright
    assert frames.max() > 150
    # A fish is bright at its true position.
    y, x = recording.positions[10, 0].round().astype(int)
    assert frames[10, max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2].max() > 80


def test_renders_at_quick_and_smoke_sizes_from_the_same_motion():
    small = synthetic.generate(30, seed=1, height=48, width=64)
    tiny = synthetic.generate(30, seed=1, height=16, width=20)
    full = synthetic.generate(30, seed=1)
    assert small.frames.shape == (30, 48, 64) and tiny.frames.shape == (30, 16, 20)
    np.testing.assert_array_equal(small.positions, full.positions)
    # Anti-aliased: the light of the fish is conserved across resolutions, about.
    light = [
        (r.frames.astype(float) - 6).clip(0).sum(axis=(1, 2)).mean() / r.frames[0].size for r in (small, full)
    ]
    assert light[0] == pytest.approx(light[1], rel=0.25)


def test_chases_follow_long_encounters():
    params = synthetic.TankParams()
    trajectories = synthetic.simulate(6000, seed=0, params=params)
    bursts = trajectories.bursts
    chases = bursts['cause'] == synthetic.CAUSES.index('chase')
    assert chases.sum() >= 5 and (bursts['cause'] == synthetic.CAUSES.index('spontaneous')).any()
    assert np.all(np.diff(bursts['frame']) >= 0)
    gaps = synthetic.proximity_score(trajectories.positions, window_frames=1)
    for onset in bursts['frame'][chases]:
        # Before the latency, two fish were together for close_frames.
        before = onset - params.latency_frames[1] - params.close_frames
        window = -gaps[max(before, 0) : onset - params.latency_frames[0]]
        assert (window < params.close_distance).any()
    # During a burst the fish is fast; calm fish are slow.
    fish = bursts['fish'][chases][0]
    onset = bursts['frame'][chases][0]
    assert trajectories.speeds[onset, fish] > 5 * np.median(trajectories.speeds)


def test_proximity_predicts_bursts_better_than_y_tilde():
    """The point of the tank: a video model has something to find that ỹ alone does not show."""
    recording = synthetic.generate(9000, seed=0, height=48, width=64)
    y_tilde = labels.speed_proxy(recording.frames)
    targets = labels.burst_labels(y_tilde)
    first, last = labels.valid_range(len(y_tilde))
    valid = slice(first, last + 1)
    assert 0.04 < targets[valid].mean() < 0.25
    proximity = roc_auc_score(targets[valid], synthetic.proximity_score(recording.positions)[valid])
    for scores in (labels.baseline_probability(y_tilde), labels.trivial_baselines(y_tilde)['-y_tilde[t-1]']):
        assert proximity > roc_auc_score(targets[valid], scores[valid]) + 0.05


def test_rejects_empty_requests():
    with pytest.raises(ValueError, match='at least one frame'):
        synthetic.simulate(0)
