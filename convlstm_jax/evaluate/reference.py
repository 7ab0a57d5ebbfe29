"""The 2021 evaluation from its shipped artifacts: the published table reproduced on its own crop with its
thresholds chosen on test, and the correct evaluation (valid frames only, the baselines' thresholds chosen
on validation)."""

from __future__ import annotations

import dataclasses
import os
import pathlib

import numpy as np

from convlstm_jax.data import labels as labels_lib
from convlstm_jax.evaluate.core import (
    BASELINE_2021,
    REPORT_FORMAT,
    THRESHOLD_RULES,
    BootstrapOptions,
    Predictor,
    ScoredFrames,
    auc_differences,
    baseline_predictors,
    frames_summary,
    score_predictors,
)

# The 2021 reference: shipped predictions cover test frames 119 … 5355 (its h = 10 leftover crop).
REFERENCE_TIME_STEPS, REFERENCE_FRAMES_PER_STEP, REFERENCE_HORIZON = 30, 4, 45
REFERENCE_CROP_2021 = (119, 5355)
REFERENCE_MODELS = {
    'upbeat-snowflake-91': 'Y_pred.npy',
    'visionary-serenity': 'Y_pred_visionary_serenity.npy',
}
CHOSEN_ON_TEST_2021 = 'test (2021 model: only test predictions exist)'
CHOSEN_ON_TEST_AS_PUBLISHED = 'test (as the 2021 analysis did)'

# The published test-split table (reference-system.md); the figures are truncated or rounded as printed.
PUBLISHED_2021 = {
    'upbeat-snowflake-91': {
        'auc': '0.830',
        'max_accuracy': {'accuracy': '0.847', 'threshold': '0.80'},
        'youden': {'j': '0.519', 'threshold': '0.31', 'tpr': '0.829', 'fpr': '0.310'},
    },
    'visionary-serenity': {
        'auc': '0.79',
        'max_accuracy': {'accuracy': '0.844'},
        'youden': {'tpr': '0.815', 'fpr': '0.374'},
    },
    BASELINE_2021: {
        'auc': '0.838',
        'max_accuracy': {'accuracy': '0.854', 'threshold': '0.98'},
        'youden': {'j': '0.543', 'threshold': '0.60', 'tpr': '0.831', 'fpr': '0.289'},
    },
}


def _load_reference_array(reference_dir: pathlib.Path, split: str, name: str) -> np.ndarray:
    path = reference_dir / 'targets' / split / name
    if not path.is_file():
        raise FileNotFoundError(f'expected the 2021 reference array {path}; not found')
    return np.load(path)


def published_matches(value: float, published: str) -> bool:
    """Does `value` print as the published figure? The 2021 tables truncate (sometimes round), and their
    inputs differ slightly, so: equal when truncated or rounded to the printed decimals, or within ±0.002."""
    decimals = len(published.split('.')[1])
    target = float(published)
    step = 10.0**-decimals
    truncates = target - 1e-12 <= value < target + step - 1e-12
    rounds = abs(value - target) <= step / 2 + 1e-12
    return truncates or rounds or abs(value - target) <= 0.002 + 1e-12


def compare_with_published(results: dict[str, dict]) -> dict[str, dict[str, dict]]:
    """Per predictor and published figure: published text, our value, and whether they match."""
    comparison: dict[str, dict[str, dict]] = {}
    for name, figures in PUBLISHED_2021.items():
        ours = results[name]
        rows = {'auc': (figures['auc'], ours['auc'])}
        for rule in THRESHOLD_RULES:
            for figure, text in figures.get(rule, {}).items():
                rows[f'{rule}.{figure}'] = (text, ours[rule][figure])
        comparison[name] = {
            key: {'published': text, 'ours': value, 'match': published_matches(value, text)}
            for key, (text, value) in rows.items()
        }
    return comparison


def reference_evaluation(
    reference_dir: str | os.PathLike, bootstrap: BootstrapOptions | None = None
) -> tuple[dict, ScoredFrames, list[Predictor]]:
    """The 2021 table reproduced on its own crop (thresholds on test, as published), and the honest
    evaluation on the correct crop (h = 45) with the baselines' thresholds chosen on validation.

    Returns (metrics.json content, and the honest evaluation's scored frames and predictors for the plots).
    """
    reference_dir = pathlib.Path(reference_dir)
    bootstrap = bootstrap or BootstrapOptions()
    test_y_tilde = _load_reference_array(reference_dir, 'test', 'Y_tilde.npy')
    test_labels = _load_reference_array(reference_dir, 'test', 'Y_label.npy').astype(np.int8)
    val_y_tilde = _load_reference_array(reference_dir, 'validation', 'Y_tilde.npy')
    val_labels = _load_reference_array(reference_dir, 'validation', 'Y_label.npy').astype(np.int8)
    shipped_baseline = _load_reference_array(reference_dir, 'test', 'Y_pred_baseline.npy')
    model_predictions = {
        name: _load_reference_array(reference_dir, 'test', file).reshape(-1)
        for name, file in REFERENCE_MODELS.items()
    }

    first_2021, last_2021 = REFERENCE_CROP_2021
    for name, predictions in model_predictions.items():
        if len(predictions) != last_2021 - first_2021 + 1:
            raise ValueError(
                f'{name}: expected {last_2021 - first_2021 + 1} predictions (test frames {first_2021} … '
                f'{last_2021}), found {len(predictions)}'
            )
    crop_2021 = np.arange(first_2021, last_2021 + 1)
    correct = _valid_frames(len(test_y_tilde))
    val_frames = _valid_frames(len(val_y_tilde))
    validation = ScoredFrames('validation', val_frames, val_labels[val_frames], val_y_tilde)

    def model_predictors(frames: np.ndarray, chosen_on: str) -> list[Predictor]:
        return [
            Predictor(name, predictions[frames - first_2021], None, kind='model', chosen_on_scored=chosen_on)
            for name, predictions in model_predictions.items()
        ]

    # The 2021 table: its crop, every threshold chosen on test, only the predictors it reported.
    as_published = ScoredFrames('test', crop_2021, test_labels[crop_2021], test_y_tilde)
    published_predictors = model_predictors(crop_2021, CHOSEN_ON_TEST_AS_PUBLISHED) + [
        dataclasses.replace(p, select_scores=None, chosen_on_scored=CHOSEN_ON_TEST_AS_PUBLISHED)
        for p in baseline_predictors(as_published, None)
        if p.name == BASELINE_2021
    ]
    published_results = score_predictors(as_published, published_predictors, None, bootstrap)

    # The honest evaluation: valid frames only; baselines' thresholds from validation.
    honest = ScoredFrames('test', correct, test_labels[correct], test_y_tilde)
    honest_predictors = model_predictors(correct, CHOSEN_ON_TEST_2021) + baseline_predictors(
        honest, validation
    )
    honest_results = score_predictors(honest, honest_predictors, validation, bootstrap)

    in_crop = slice(first_2021, last_2021 + 1)
    recomputed_baseline = labels_lib.baseline_probability(test_y_tilde)
    checks = {
        'test_labels_equal_recomputed': bool(np.array_equal(test_labels, _recomputed_labels(test_y_tilde))),
        'validation_labels_equal_recomputed': bool(
            np.array_equal(val_labels, _recomputed_labels(val_y_tilde))
        ),
        'shipped_baseline_max_abs_difference_in_2021_crop': float(
            np.max(np.abs(shipped_baseline[in_crop] - recomputed_baseline[in_crop]))
        ),
        'unlabelled_frames_in_2021_crop': int(last_2021 - correct[-1]),
    }
    report = {
        'format': REPORT_FORMAT,
        'source': {'reference': str(reference_dir)},
        'frames': frames_summary(honest, f'valid range [4n−1, T−2−h] with n = 30, h = {REFERENCE_HORIZON}'),
        'selection': frames_summary(validation, 'valid range of the validation split'),
        'predictors': honest_results,
        'published_comparison': {
            'frames': frames_summary(as_published, 'the 2021 crop (its h = 10 leftover): frames 119 … 5355'),
            'predictors': published_results,
            'published': PUBLISHED_2021,
            'matches': compare_with_published(published_results),
        },
        'auc_differences': auc_differences(honest, honest_predictors, bootstrap),
        'auc_change_from_2021_crop': {
            name: honest_results[name]['auc'] - published_results[name]['auc'] for name in published_results
        },
        'checks': checks,
        'bootstrap': dataclasses.asdict(bootstrap),
    }
    return report, honest, honest_predictors


def _valid_frames(num_frames: int) -> np.ndarray:
    first, last = labels_lib.valid_range(
        num_frames, REFERENCE_TIME_STEPS, REFERENCE_HORIZON, REFERENCE_FRAMES_PER_STEP
    )
    return np.arange(first, last + 1)


def _recomputed_labels(y_tilde: np.ndarray) -> np.ndarray:
    return labels_lib.burst_labels(
        y_tilde, REFERENCE_TIME_STEPS, REFERENCE_HORIZON, frames_per_step=REFERENCE_FRAMES_PER_STEP
    )
