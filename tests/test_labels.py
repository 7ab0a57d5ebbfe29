"""Labels and ỹ baselines against the 2021 arrays, and their edge cases."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from convlstm_jax.data import labels

SPLITS = ('train', 'validation', 'test')


def rank_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Exact ROC-AUC with ties (Mann–Whitney U from average ranks)."""
    order = np.argsort(scores, kind='mergesort')
    sorted_scores = scores[order]
    ranks = np.empty(len(scores))
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    stops = np.concatenate([boundaries, [len(scores)]])
    for start, stop in zip(starts, stops, strict=True):
        ranks[order[start:stop]] = (start + stop + 1) / 2
    positives = y_true.astype(bool)
    num_pos, num_neg = positives.sum(), (~positives).sum()
    return float((ranks[positives].sum() - num_pos * (num_pos + 1) / 2) / (num_pos * num_neg))


@pytest.mark.parametrize('split', SPLITS)
def test_labels_reproduce_2021_exactly(reference_dir, split):
    y_tilde = np.load(reference_dir / 'targets' / split / 'Y_tilde.npy')
    expected = np.load(reference_dir / 'targets' / split / 'Y_label.npy')
    got = labels.burst_labels(y_tilde, n=30, h=45, b=0.1, c=0.001)
    assert got.dtype == np.int8 and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


def test_baseline_matches_2021_and_its_test_auc(reference_dir):
    targets = reference_dir / 'targets' / 'test'
    y_tilde = np.load(targets / 'Y_tilde.npy')
    y_true = np.load(targets / 'Y_label.npy')
    shipped = np.load(targets / 'Y_pred_baseline.npy')
    probs = labels.baseline_probability(y_tilde)
    assert np.isnan(probs[:89]).all() and not np.isnan(probs[89:]).any()
    np.testing.assert_allclose(probs[119:5356], shipped[119:5356], rtol=0, atol=1e-15)

    first, last = labels.valid_range(len(y_tilde))
    valid = slice(first, last + 1)
    assert rank_auc(y_true[valid], probs[valid]) == pytest.approx(0.838, abs=5e-4)
    previous = labels.trivial_baselines(y_tilde)['-y_tilde[t-1]']
    assert rank_auc(y_true[valid], previous[valid]) == pytest.approx(0.867, abs=5e-4)


def test_rank_auc_handles_ties():
    y_true = np.array([0, 0, 1, 1, 0, 1])
    scores = np.array([0.1, 0.5, 0.5, 0.9, 0.2, 0.1])
    # Pairs (pos, neg): 9; wins 5, ties 2 → (5 + 1) / 9.
    assert rank_auc(y_true, scores) == pytest.approx(6 / 9)


def test_speed_proxy_matches_2021_on_sample_frames(reference_dir):
    paths = sorted((reference_dir / 'sample_frames').glob('*.png'))
    frames = np.stack([np.asarray(Image.open(path)) for path in paths])
    y_tilde = labels.speed_proxy(frames)
    shipped = np.load(reference_dir / 'targets' / 'train' / 'Y_tilde.npy')[: len(paths) - 1]
    # The 2021 values carry float32 rounding (relative 1e-7); as sums of |ΔX| in pixel units they are exact.
    np.testing.assert_array_equal(
        np.round(y_tilde[:-1] * 255 * frames[0].size), np.round(shipped * 255 * frames[0].size)
    )
    np.testing.assert_allclose(y_tilde[:-1], shipped, rtol=2e-7, atol=0)
    assert y_tilde[-1] == 0


def test_speed_proxy_is_mean_absolute_difference():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (5, 3, 4), dtype=np.uint8)
    as_float = frames.astype(np.float64) / 255
    expected = np.abs(np.diff(as_float, axis=0)).mean(axis=(1, 2))
    np.testing.assert_allclose(labels.speed_proxy(frames), np.append(expected, 0.0), rtol=1e-12)


def test_speed_proxy_rejects_color_or_float_frames():
    with pytest.raises(ValueError, match='uint8 frames'):
        labels.speed_proxy(np.zeros((3, 4, 5, 3), np.uint8))
    with pytest.raises(ValueError, match='uint8 frames'):
        labels.speed_proxy(np.zeros((3, 4, 5), np.float32))


def test_valid_range_and_labels_outside_it():
    assert labels.valid_range(5367, 30, 45) == (119, 5320)
    assert labels.valid_range(100, 4, 6, frames_per_step=1) == (3, 92)
    y_tilde = np.random.default_rng(1).random(30) * 0.01
    got = labels.burst_labels(y_tilde, n=2, h=5)
    assert not got[:7].any() and not got[24:].any()
    assert not labels.burst_labels(y_tilde[:10], n=2, h=5).any()  # too short: no valid t at all


def test_burst_label_rule_on_a_step():
    # Flat, then a jump at frame 20: frames within h before the jump (and at the low level) are positive.
    y_tilde = np.where(np.arange(40) < 20, 0.001, 0.01)
    got = labels.burst_labels(y_tilde, n=1, h=5)
    np.testing.assert_array_equal(np.flatnonzero(got), np.arange(15, 20))


def test_trivial_baselines():
    scores = labels.trivial_baselines(np.array([0.1, 0.2, 0.3]))
    assert set(scores) == {'-y_tilde[t-1]', 'all-negative'}
    np.testing.assert_array_equal(scores['-y_tilde[t-1]'], [np.nan, -0.1, -0.2])
    np.testing.assert_array_equal(scores['all-negative'], [0, 0, 0])
