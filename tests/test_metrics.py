"""metrics.py against sklearn, tf_keras and hand-checked cases."""

from __future__ import annotations

import numpy as np
import pytest

from convlstm_jax import metrics


def _random_with_ties(seed: int, size: int = 500) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size)
    # Few distinct values (many ties), shifted by the label so the AUC is far from 0.5.
    scores = np.round(rng.random(size) + 0.3 * labels, 1)
    return labels, scores


@pytest.mark.parametrize('seed', range(5))
def test_roc_auc_equals_sklearn_with_ties(seed: int) -> None:
    sklearn_metrics = pytest.importorskip('sklearn.metrics')
    labels, scores = _random_with_ties(seed)
    assert len(np.unique(scores)) < 20
    assert metrics.roc_auc(labels, scores) == pytest.approx(
        sklearn_metrics.roc_auc_score(labels, scores), abs=1e-12
    )


def test_roc_curve_equals_sklearn() -> None:
    sklearn_metrics = pytest.importorskip('sklearn.metrics')
    labels, scores = _random_with_ties(7)
    fpr, tpr, thresholds = metrics.roc_curve(labels, scores)
    ref_fpr, ref_tpr, ref_thresholds = sklearn_metrics.roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr)
    np.testing.assert_allclose(tpr, ref_tpr)
    np.testing.assert_array_equal(thresholds[1:], ref_thresholds[1:])
    assert np.isinf(thresholds[0])


def test_roc_auc_keras_equals_tf_keras() -> None:
    pytest.importorskip('tf_keras')
    from convlstm_jax.tf_cpu import import_tensorflow

    import_tensorflow()
    import tf_keras

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 400)
    # Exact bucket edges (k/199) and ties are the cases where off-by-one bucketing would show.
    scores = np.clip(rng.random(400) * 0.8 + 0.2 * labels, 0, 1).astype(np.float32)
    scores[:40] = np.arange(40, dtype=np.float32) / 199
    scores[40:50] = 0.0
    scores[50:60] = 1.0
    metric = tf_keras.metrics.AUC(num_thresholds=200)
    metric.update_state(labels.astype(np.float32), scores)
    expected = float(metric.result().numpy())
    assert metrics.roc_auc_keras(labels, scores) == pytest.approx(expected, abs=1e-6)
    assert metrics.roc_auc_keras(labels, scores) != pytest.approx(metrics.roc_auc(labels, scores), abs=1e-6)


def test_youden_and_best_accuracy_by_hand() -> None:
    labels = np.array([0, 0, 0, 1, 1, 0, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    j = metrics.youden(labels, scores)
    # ">= 0.4" catches all 4 positives and 1 of 4 negatives: J = 0.75.
    assert j == {'threshold': 0.4, 'j': 0.75, 'tpr': 1.0, 'fpr': 0.25}
    assert metrics.best_accuracy(labels, scores) == {'threshold': 0.4, 'accuracy': 7 / 8}
    assert metrics.rates_at(labels, scores, 0.4) == {'tpr': 1.0, 'fpr': 0.25, 'accuracy': 7 / 8}


def test_threshold_counts_equal_scores_as_positive() -> None:
    labels = np.array([0, 1, 1])
    scores = np.array([0.2, 0.5, 0.5])
    assert metrics.rates_at(labels, scores, 0.5) == {'tpr': 1.0, 'fpr': 0.0, 'accuracy': 1.0}
    assert metrics.accuracy(labels, scores, threshold=0.5) == 1.0


def test_best_accuracy_can_choose_nothing_positive_with_a_finite_threshold() -> None:
    labels = np.array([0, 0, 0, 0, 1])
    scores = np.zeros(5)
    best = metrics.best_accuracy(labels, scores)
    assert best['accuracy'] == 0.8
    assert np.isfinite(best['threshold']) and best['threshold'] > 0
    assert metrics.rates_at(labels, scores, best['threshold'])['tpr'] == 0.0


def test_binary_cross_entropy_matches_keras_formula() -> None:
    labels = np.array([0, 1, 1, 0])
    probs = np.array([0.0, 1.0, 0.25, 0.6])
    eps = 1e-7
    clipped = np.clip(probs, eps, 1 - eps)
    expected = -np.mean(labels * np.log(clipped + eps) + (1 - labels) * np.log(1 - clipped + eps))
    assert metrics.binary_cross_entropy(labels, probs) == pytest.approx(expected, rel=1e-12)
    assert np.isfinite(metrics.binary_cross_entropy(np.array([1, 0]), np.array([0.0, 1.0])))


def test_binary_cross_entropy_equals_tf_keras() -> None:
    pytest.importorskip('tf_keras')
    from convlstm_jax.tf_cpu import import_tensorflow

    import_tensorflow()
    import tf_keras

    labels = np.array([0, 1, 1, 0, 1], dtype=np.float64)
    probs = np.array([0.0, 1.0, 0.3, 0.9, 0.5], dtype=np.float64)
    expected = float(tf_keras.losses.BinaryCrossentropy()(labels, probs).numpy())
    assert metrics.binary_cross_entropy(labels, probs) == pytest.approx(expected, rel=1e-6)


def test_block_bootstrap_is_seeded_and_wider_than_frame_bootstrap() -> None:
    rng = np.random.default_rng(0)
    # Slowly varying labels and scores, like neighbouring frames: single-frame resampling is overconfident.
    labels = np.repeat(rng.integers(0, 2, 40), 50)
    scores = np.repeat(rng.random(40), 50) + 0.3 * labels
    first = metrics.block_bootstrap_auc(labels, scores, block_length=100, num_resamples=200, seed=1)
    again = metrics.block_bootstrap_auc(labels, scores, block_length=100, num_resamples=200, seed=1)
    frames = metrics.block_bootstrap_auc(labels, scores, block_length=1, num_resamples=200, seed=1)
    assert first == again
    assert first['low'] <= metrics.roc_auc(labels, scores) <= first['high']
    assert first['high'] - first['low'] > 2 * (frames['high'] - frames['low'])


@pytest.mark.parametrize(
    ('labels', 'scores', 'message'),
    [
        (np.array([0, 2]), np.array([0.1, 0.2]), 'labels in'),
        (np.array([0, 1]), np.array([0.1]), 'one score per label'),
        (np.array([1, 1]), np.array([0.1, 0.2]), 'both classes'),
        (np.array([0, 1]), np.array([0.1, np.nan]), 'finite'),
    ],
)
def test_bad_input_is_rejected(labels: np.ndarray, scores: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        metrics.roc_auc(labels, scores)


def test_threshold_report_applies_thresholds_chosen_elsewhere() -> None:
    select_labels = np.array([0, 0, 1, 1])
    select_scores = np.array([0.1, 0.2, 0.3, 0.4])
    labels = np.array([0, 1, 0, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.4])
    report = metrics.threshold_report(
        labels, scores, select_labels=select_labels, select_scores=select_scores, selected_on='validation'
    )
    assert report['youden']['threshold'] == 0.3
    assert report['youden']['chosen_on'] == 'validation'
    assert report['youden']['tpr'] == 0.5 and report['youden']['fpr'] == 0.5


def test_paired_auc_difference() -> None:
    rng = np.random.default_rng(2)
    labels = np.repeat(rng.integers(0, 2, 60), 20)
    good = labels + rng.normal(0, 0.5, labels.size)
    poor = labels + rng.normal(0, 3.0, labels.size)
    same = metrics.block_bootstrap_auc_difference(labels, good, good, block_length=40, num_resamples=50)
    assert same['difference'] == 0 and same['low'] == 0 and same['high'] == 0
    better = metrics.block_bootstrap_auc_difference(labels, good, poor, block_length=40, num_resamples=200)
    assert better['difference'] == pytest.approx(
        metrics.roc_auc(labels, good) - metrics.roc_auc(labels, poor)
    )
    assert 0 < better['low'] <= better['difference'] <= better['high']
