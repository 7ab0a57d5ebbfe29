"""Binary-classification metrics in plain numpy: exact ROC-AUC, thresholds, rates and a block-bootstrap CI.

Conventions used everywhere here: labels are 0/1 (any numeric or bool dtype), scores are any real numbers
where larger means "more likely positive", and a score >= threshold counts as a positive prediction.
No framework is imported, so training, evaluation and tests all score predictions the same way.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

KERAS_EPSILON = 1e-7  # tf.keras backend.epsilon(): BCE clipping and the AUC end thresholds.


def _check_binary(
    labels: np.ndarray, scores: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Flattens and validates labels (0/1) and, if given, scores of the same length (finite numbers)."""
    labels = np.asarray(labels).reshape(-1)
    if labels.size == 0:
        raise ValueError('expected at least one label, found an empty array')
    if not np.all((labels == 0) | (labels == 1)):
        found = np.unique(labels)[:10]
        raise ValueError(f'expected labels in {{0, 1}}, found values {found.tolist()}')
    labels = labels.astype(bool)
    if scores is None:
        return labels, None
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if scores.shape != labels.shape:
        raise ValueError(f'expected one score per label ({labels.size}), found {scores.size} scores')
    if not np.all(np.isfinite(scores)):
        raise ValueError(f'expected finite scores, found {int(np.sum(~np.isfinite(scores)))} NaN/Inf values')
    return labels, scores


def _require_both_classes(labels: np.ndarray) -> None:
    positives = int(labels.sum())
    if positives == 0 or positives == labels.size:
        raise ValueError(f'ROC needs both classes, found {positives} positives among {labels.size} labels')


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of `values`, tied values sharing the mean of their ranks."""
    order = np.argsort(values, kind='mergesort')
    sorted_values = values[order]
    # Start index of each run of equal values, and the run each sorted element belongs to.
    run_starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    run_ends = np.r_[run_starts[1:], values.size]
    run_of = np.repeat(np.arange(run_starts.size), run_ends - run_starts)
    mean_rank = (run_starts + run_ends + 1) / 2.0  # mean of ranks start+1 … end
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = mean_rank[run_of]
    return ranks


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Exact area under the ROC curve, ties counted as one half (the Mann–Whitney U; equals sklearn's)."""
    labels, scores = _check_binary(labels, scores)
    _require_both_classes(labels)
    return _auc_of_valid(labels, scores)


def _auc_of_valid(labels: np.ndarray, scores: np.ndarray) -> float:
    """roc_auc of already-checked bool labels (both classes present) and float scores."""
    num_pos = int(labels.sum())
    num_neg = labels.size - num_pos
    rank_sum = _average_ranks(scores)[labels].sum()
    return float((rank_sum - num_pos * (num_pos + 1) / 2.0) / (num_pos * num_neg))


def roc_auc_keras(labels: np.ndarray, scores: np.ndarray, num_thresholds: int = 200) -> float:
    """The approximation tf.keras.metrics.AUC() logs (ROC, 'interpolation' summation), for comparison only.

    Keras counts a prediction positive when it is strictly above each of `num_thresholds` thresholds
    (−ε, 1/(n−1), …, (n−2)/(n−1), 1+ε), with predictions clipped to [0, 1] and bucketed in float32, and
    sums trapezoids between consecutive (FPR, TPR) points. Scores outside [0, 1] are clipped, as Keras does,
    so pass probabilities. Use `roc_auc` for reporting.
    """
    labels, scores = _check_binary(labels, scores)
    if num_thresholds < 3:
        raise ValueError(f'expected num_thresholds >= 3, found {num_thresholds}')
    # tf_keras's path for even thresholds: bucket = max(ceil(p·(n−1)) − 1, 0); positive at i iff bucket ≥ i.
    clipped = np.clip(scores.astype(np.float32), 0.0, 1.0)
    buckets = np.maximum(np.ceil(clipped * np.float32(num_thresholds - 1)) - 1, 0).astype(np.int64)
    pos_per_bucket = np.bincount(buckets[labels], minlength=num_thresholds)
    neg_per_bucket = np.bincount(buckets[~labels], minlength=num_thresholds)
    tp = np.cumsum(pos_per_bucket[::-1])[::-1].astype(np.float64)
    fp = np.cumsum(neg_per_bucket[::-1])[::-1].astype(np.float64)
    num_pos, num_neg = labels.sum(), (~labels).sum()
    tpr = tp / num_pos if num_pos else np.zeros_like(tp)  # Keras's divide_no_nan
    fpr = fp / num_neg if num_neg else np.zeros_like(fp)
    heights = (tpr[:-1] + tpr[1:]) / 2.0
    return float(np.sum((fpr[:-1] - fpr[1:]) * heights))


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) at every distinct score, thresholds decreasing, starting from (0, 0) at +inf.

    Point k is the classifier "score >= thresholds[k]"; like sklearn's roc_curve(drop_intermediate=False).
    """
    labels, scores = _check_binary(labels, scores)
    _require_both_classes(labels)
    thresholds, tp, fp = _counts_at_distinct_scores(labels, scores)
    return fp / fp[-1], tp / tp[-1], thresholds


def _counts_at_distinct_scores(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, ...]:
    """(thresholds, tp, fp): +inf then the distinct scores in decreasing order, with the counts of positives
    and negatives scoring >= each threshold."""
    order = np.argsort(-scores, kind='mergesort')
    sorted_scores, sorted_labels = scores[order], labels[order]
    last_of_run = np.flatnonzero(np.r_[sorted_scores[1:] != sorted_scores[:-1], True])
    tp = np.cumsum(sorted_labels)[last_of_run].astype(np.float64)
    fp = (last_of_run + 1) - tp
    return np.r_[np.inf, sorted_scores[last_of_run]], np.r_[0.0, tp], np.r_[0.0, fp]


def _above_all(scores: np.ndarray) -> float:
    """The smallest float above every score: the finite threshold of 'predict nothing positive'."""
    return float(np.nextafter(scores.max(), np.inf))


def _finite_thresholds(thresholds: np.ndarray, scores: np.ndarray) -> np.ndarray:
    return np.where(np.isinf(thresholds), _above_all(scores), thresholds)


def youden(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """The threshold maximizing Youden's J = TPR − FPR (the highest among ties), with its J, TPR and FPR."""
    fpr, tpr, thresholds = roc_curve(labels, scores)
    best = int(np.argmax(tpr - fpr))
    threshold = _finite_thresholds(thresholds, np.asarray(scores, dtype=np.float64).reshape(-1))[best]
    return {
        'threshold': float(threshold),
        'j': float(tpr[best] - fpr[best]),
        'tpr': float(tpr[best]),
        'fpr': float(fpr[best]),
    }


def best_accuracy(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """The threshold maximizing accuracy over the distinct scores and 'none positive' (highest among ties)."""
    labels, scores = _check_binary(labels, scores)
    thresholds, tp, fp = _counts_at_distinct_scores(labels, scores)
    num_neg = labels.size - labels.sum()
    correct = tp + (num_neg - fp)
    best = int(np.argmax(correct))
    return {
        'threshold': float(_finite_thresholds(thresholds, scores)[best]),
        'accuracy': float(correct[best] / labels.size),
    }


def accuracy_and_j_curves(labels: np.ndarray, scores: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy and J = TPR − FPR at every distinct score (thresholds decreasing), for plots."""
    fpr, tpr, thresholds = roc_curve(labels, scores)
    labels_b, _ = _check_binary(labels)
    num_pos = labels_b.sum()
    accuracy_values = (tpr * num_pos + (1 - fpr) * (labels_b.size - num_pos)) / labels_b.size
    return {'threshold': thresholds[1:], 'accuracy': accuracy_values[1:], 'j': (tpr - fpr)[1:]}


def rates_at(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """TPR, FPR and accuracy of "score >= threshold"; a rate is NaN when its class is absent."""
    labels, scores = _check_binary(labels, scores)
    predicted = scores >= threshold
    num_pos = int(labels.sum())
    num_neg = labels.size - num_pos
    return {
        'tpr': float(np.sum(predicted & labels) / num_pos) if num_pos else math.nan,
        'fpr': float(np.sum(predicted & ~labels) / num_neg) if num_neg else math.nan,
        'accuracy': float(np.mean(predicted == labels)),
    }


def accuracy(labels: np.ndarray, probs: np.ndarray, threshold: float = 0.5) -> float:
    """Fraction correct with "prob >= threshold" as positive."""
    return rates_at(labels, probs, threshold)['accuracy']


def binary_cross_entropy(labels: np.ndarray, probs: np.ndarray) -> float:
    """Unweighted mean BCE on probabilities as tf.keras computes it: clip to [ε, 1−ε], then log(p + ε)."""
    labels, probs = _check_binary(labels, probs)
    if np.any((probs < 0) | (probs > 1)):
        raise ValueError(f'expected probabilities in [0, 1], found range [{probs.min()}, {probs.max()}]')
    target = labels.astype(np.float64)
    clipped = np.clip(probs, KERAS_EPSILON, 1.0 - KERAS_EPSILON)
    log_likelihood = target * np.log(clipped + KERAS_EPSILON) + (1 - target) * np.log(
        1 - clipped + KERAS_EPSILON
    )
    return float(-np.mean(log_likelihood))


def _block_resamples(
    labels: np.ndarray, block_length: int, num_resamples: int, seed: int
) -> Iterator[np.ndarray]:
    """Index arrays of a moving-block bootstrap: contiguous blocks of `block_length` samples with random
    starts, concatenated and trimmed to the original length; resamples holding a single class are redrawn."""
    if not 1 <= block_length <= labels.size:
        raise ValueError(
            f'expected 1 <= block_length <= {labels.size} (number of samples), found {block_length}'
        )
    if num_resamples < 1:
        raise ValueError(f'expected num_resamples >= 1, found {num_resamples}')
    rng = np.random.default_rng(seed)
    num_blocks = -(-labels.size // block_length)
    offsets = np.arange(block_length)
    produced, max_attempts = 0, 20 * num_resamples
    for _ in range(max_attempts):
        starts = rng.integers(0, labels.size - block_length + 1, size=num_blocks)
        index = (starts[:, None] + offsets).reshape(-1)[: labels.size]
        positives = labels[index].sum()
        if 0 < positives < labels.size:
            yield index
            produced += 1
            if produced == num_resamples:
                return
    raise ValueError(
        f'only {produced} of {max_attempts} block resamples held both classes; use shorter blocks'
    )


def _interval(values: list[float], confidence: float, block_length: int, seed: int) -> dict[str, float]:
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return {
        'low': float(low),
        'high': float(high),
        'confidence': confidence,
        'block_length': block_length,
        'num_resamples': len(values),
        'seed': seed,
    }


def _check_bootstrap(labels: np.ndarray, confidence: float) -> None:
    _require_both_classes(labels)
    if not 0 < confidence < 1:
        raise ValueError(f'expected 0 < confidence < 1, found {confidence}')


def block_bootstrap_auc(
    labels: np.ndarray,
    scores: np.ndarray,
    *,
    block_length: int = 240,
    num_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """Moving-block bootstrap percentile interval of the ROC-AUC over a time-ordered series of samples.

    Clips of neighbouring frames share > 90 % of their input and their labels are autocorrelated, so
    resampling single frames would give intervals far too narrow. Each resample concatenates contiguous
    blocks of `block_length` samples (default 240: twice the 120-frame clip) drawn with replacement.
    """
    labels, scores = _check_binary(labels, scores)
    _check_bootstrap(labels, confidence)
    aucs = [
        _auc_of_valid(labels[index], scores[index])
        for index in _block_resamples(labels, block_length, num_resamples, seed)
    ]
    return _interval(aucs, confidence, block_length, seed)


def block_bootstrap_auc_difference(
    labels: np.ndarray,
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    *,
    block_length: int = 240,
    num_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """AUC(a) − AUC(b) on the same samples, with a paired block-bootstrap interval (both predictors scored
    on each resample, so their shared difficulty cancels): an interval excluding 0 separates them."""
    labels, scores_a = _check_binary(labels, scores_a)
    _, scores_b = _check_binary(labels, scores_b)
    _check_bootstrap(labels, confidence)
    differences = [
        _auc_of_valid(labels[index], scores_a[index]) - _auc_of_valid(labels[index], scores_b[index])
        for index in _block_resamples(labels, block_length, num_resamples, seed)
    ]
    difference = _auc_of_valid(labels, scores_a) - _auc_of_valid(labels, scores_b)
    return {'difference': difference, **_interval(differences, confidence, block_length, seed)}


def threshold_report(
    labels: np.ndarray,
    scores: np.ndarray,
    *,
    select_labels: np.ndarray | None = None,
    select_scores: np.ndarray | None = None,
    selected_on: str,
) -> dict[str, dict[str, float | str]]:
    """Per rule (`max_accuracy`, `youden`): the threshold chosen on (select_labels, select_scores), then its
    TPR/FPR/accuracy on (labels, scores). Without a selection set the scored set chooses, which is optimistic:
    `selected_on` records which split chose, so reports can say so."""
    if (select_labels is None) != (select_scores is None):
        raise ValueError('give both select_labels and select_scores, or neither')
    if select_labels is None:
        select_labels, select_scores = labels, scores
    chosen = {
        'max_accuracy': best_accuracy(select_labels, select_scores)['threshold'],
        'youden': youden(select_labels, select_scores)['threshold'],
    }
    report: dict[str, dict[str, float | str]] = {}
    for rule, threshold in chosen.items():
        rates = rates_at(labels, scores, threshold)
        report[rule] = {
            'threshold': threshold,
            **rates,
            'j': rates['tpr'] - rates['fpr'],
            'chosen_on': selected_on,
        }
    return report


def evaluation_summary(
    labels: np.ndarray,
    scores: np.ndarray,
    *,
    select_labels: np.ndarray | None = None,
    select_scores: np.ndarray | None = None,
    selected_on: str,
    probabilities: bool = True,
    block_length: int = 240,
    num_resamples: int = 1000,
    seed: int = 0,
) -> dict:
    """Everything reported per predictor: exact AUC with its block-bootstrap CI, Keras's approximate AUC and
    BCE/accuracy at 0.5 (probabilities only), and the two threshold rules applied to (labels, scores)."""
    labels_b, scores_f = _check_binary(labels, scores)
    summary: dict = {
        'num_samples': int(labels_b.size),
        'positive_rate': float(labels_b.mean()),
        'auc': roc_auc(labels_b, scores_f),
        'auc_ci': block_bootstrap_auc(
            labels_b,
            scores_f,
            block_length=min(block_length, labels_b.size),
            num_resamples=num_resamples,
            seed=seed,
        ),
    }
    if probabilities:
        summary['auc_keras_200'] = roc_auc_keras(labels_b, scores_f)
        summary['bce'] = binary_cross_entropy(labels_b, scores_f)
        summary['accuracy_at_0.5'] = accuracy(labels_b, scores_f)
    summary.update(
        threshold_report(
            labels_b,
            scores_f,
            select_labels=select_labels,
            select_scores=select_scores,
            selected_on=selected_on,
        )
    )
    return summary
