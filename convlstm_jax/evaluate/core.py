"""Scoring: predictors on the same frames beside the baselines, thresholds (max accuracy, max Youden J)
chosen on the selection split wherever a predictor has scores there, and block-bootstrap intervals for the
AUCs and their differences (convlstm_jax/metrics.py does the arithmetic)."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence

import numpy as np

from convlstm_jax import metrics
from convlstm_jax.data import labels as labels_lib

REPORT_FORMAT = 'convlstm_jax.evaluation/1'
THRESHOLD_RULES = ('max_accuracy', 'youden')
BASELINE_2021 = 'baseline_2021'


@dataclasses.dataclass
class Predictor:
    """Scores of one predictor on the scored frames, and on the selection split's frames if it has them."""

    name: str
    scores: np.ndarray
    select_scores: np.ndarray | None  # None: thresholds can only be chosen on the scored split itself
    kind: str  # 'model' | 'baseline'
    probabilities: bool = True  # scores are probabilities (BCE, accuracy at 0.5, Keras AUC make sense)
    chosen_on_scored: str = ''  # how to label thresholds chosen on the scored split (select_scores is None)


@dataclasses.dataclass
class ScoredFrames:
    """The frames of one split that are scored: indices, labels, and the split's whole ỹ (for plots)."""

    split: str
    frames: np.ndarray  # int64 frame indices t, increasing
    labels: np.ndarray  # 0/1 per scored frame
    y_tilde: np.ndarray  # float64 ỹ of every frame of the split


@dataclasses.dataclass
class BootstrapOptions:
    block_length: int = 240  # twice the 120-frame clip: neighbouring clips share > 90 % of their input
    num_resamples: int = 1000
    seed: int = 0


def baseline_predictors(scored: ScoredFrames, selection: ScoredFrames | None) -> list[Predictor]:
    """The 2021 algorithmic baseline and the trivial ỹ baselines on the scored (and selection) frames."""

    def on(frames: ScoredFrames) -> dict[str, np.ndarray]:
        per_frame = {
            BASELINE_2021: labels_lib.baseline_probability(frames.y_tilde),
            **labels_lib.trivial_baselines(frames.y_tilde),
        }
        return {name: values[frames.frames] for name, values in per_frame.items()}

    scored_scores = on(scored)
    select_scores = on(selection) if selection else dict.fromkeys(scored_scores)
    predictors = []
    for name, scores in scored_scores.items():
        selected = select_scores[name]
        if np.isnan(scores).any() or (selected is not None and np.isnan(selected).any()):
            # The 2021 baseline needs 89 past values of ỹ; very short clips (smoke configs) start earlier.
            print(f'note: {name} is undefined on some scored frames; left out', file=sys.stderr)
            continue
        is_probability = bool(np.all((scores >= 0) & (scores <= 1)))  # −ỹ[t−1] is a score, not a probability
        predictors.append(Predictor(name, scores, selected, kind='baseline', probabilities=is_probability))
    return predictors


def score_predictors(
    scored: ScoredFrames,
    predictors: Sequence[Predictor],
    selection: ScoredFrames | None,
    bootstrap: BootstrapOptions,
) -> dict[str, dict]:
    """metrics.evaluation_summary per predictor; thresholds from the selection split where the predictor has
    scores there, else from the scored split with the predictor's label for that choice."""
    results = {}
    for predictor in predictors:
        if len(predictor.scores) != len(scored.frames):
            raise ValueError(
                f'{predictor.name}: expected {len(scored.frames)} scores (one per scored frame of '
                f'{scored.split}), found {len(predictor.scores)}'
            )
        if predictor.select_scores is not None:
            if selection is None:
                raise ValueError(f'{predictor.name} has selection scores but no selection split was given')
            select = {
                'select_labels': selection.labels,
                'select_scores': predictor.select_scores,
                'selected_on': selection.split,
            }
        else:
            select = {'selected_on': predictor.chosen_on_scored or scored.split}
        summary = metrics.evaluation_summary(
            scored.labels,
            predictor.scores,
            probabilities=predictor.probabilities,
            block_length=bootstrap.block_length,
            num_resamples=bootstrap.num_resamples,
            seed=bootstrap.seed,
            **select,
        )
        results[predictor.name] = {'kind': predictor.kind, **summary}
    return results


def auc_differences(
    scored: ScoredFrames, predictors: Sequence[Predictor], bootstrap: BootstrapOptions
) -> dict[str, dict]:
    """AUC(model) − AUC(baseline) per model and non-constant baseline, with paired block-bootstrap CIs."""
    models = [p for p in predictors if p.kind == 'model']
    baselines = [p for p in predictors if p.kind == 'baseline' and np.ptp(p.scores) > 0]
    return {
        f'{model.name} − {baseline.name}': metrics.block_bootstrap_auc_difference(
            scored.labels,
            model.scores,
            baseline.scores,
            block_length=min(bootstrap.block_length, len(scored.labels)),
            num_resamples=bootstrap.num_resamples,
            seed=bootstrap.seed,
        )
        for model in models
        for baseline in baselines
    }


def frames_summary(scored: ScoredFrames, description: str) -> dict:
    return {
        'split': scored.split,
        'first': int(scored.frames[0]),
        'last': int(scored.frames[-1]),
        'count': int(len(scored.frames)),
        'positives': int(np.sum(scored.labels)),
        'description': description,
    }
