"""Honest evaluation: a model (or the shipped 2021 predictions) beside the baselines, with thresholds chosen
on validation and applied to test, written as report.md, metrics.json and PNG plots.

    python -m convlstm_jax.evaluate --reference ../shared/reference/fish2021 --out DIR
    python -m convlstm_jax.evaluate --checkpoint PATH [--select best_auc] --split test --out DIR

Every predictor is scored on the same frames. Thresholds (max accuracy, max Youden J) are chosen on the
validation split wherever validation scores exist; the 2021 models shipped only test predictions, so theirs
can only be chosen on test, and the report labels them so.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import math
import os
import pathlib
import sys
from collections.abc import Sequence

import numpy as np

from convlstm_jax import distributed, io, metrics, progress
from convlstm_jax.data import labels as labels_lib

REPORT_FORMAT = 'convlstm_jax.evaluation/1'
THRESHOLD_RULES = ('max_accuracy', 'youden')

# The 2021 reference: shipped predictions cover test frames 119 … 5355 (its h = 10 leftover crop).
REFERENCE_TIME_STEPS, REFERENCE_FRAMES_PER_STEP, REFERENCE_HORIZON = 30, 4, 45
REFERENCE_CROP_2021 = (119, 5355)
REFERENCE_MODELS = {
    'upbeat-snowflake-91': 'Y_pred.npy',
    'visionary-serenity': 'Y_pred_visionary_serenity.npy',
}
BASELINE_2021 = 'baseline_2021'
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


def differences_lines(differences: dict[str, dict]) -> list[str]:
    if not differences:
        return []
    lines = [
        'AUC differences, paired block bootstrap (an interval excluding 0 separates the two):',
        '',
        '| difference | AUC difference [95 % CI] | separated |',
        '|---|---|---|',
    ]
    for name, d in differences.items():
        separated = 'yes' if d['low'] > 0 or d['high'] < 0 else 'no'
        lines.append(f'| {name} | {d["difference"]:+.3f} [{d["low"]:+.3f}, {d["high"]:+.3f}] | {separated} |')
    return [*lines, '']


def _operating_point(rule_result: dict, figure: str) -> str:
    r = rule_result
    return f'{figure} {r[figure]:.3f} (TPR {r["tpr"]:.3f}, FPR {r["fpr"]:.3f})'


def threshold_change_lines(as_published: dict[str, dict], honest: dict[str, dict]) -> list[str]:
    """For predictors whose thresholds moved from test to validation: what the honest choice costs on test."""
    lines = []
    for name, published in as_published.items():
        result = honest.get(name)
        if result is None or result['youden']['chosen_on'].startswith('test'):
            continue
        for rule, figure in (('youden', 'j'), ('max_accuracy', 'accuracy')):
            before, after = published[rule], result[rule]
            lines.append(
                f'- {name}, {rule}: threshold {before["threshold"]:.4g} chosen on test gives (2021 crop) '
                f'{_operating_point(before, figure)}; threshold {after["threshold"]:.4g} chosen on '
                f'{after["chosen_on"]} gives {_operating_point(after, figure)} on the valid test frames.'
            )
    if not lines:
        return []
    return ['What choosing thresholds on validation instead of test changes:', '', *lines, '']


def frames_summary(scored: ScoredFrames, description: str) -> dict:
    return {
        'split': scored.split,
        'first': int(scored.frames[0]),
        'last': int(scored.frames[-1]),
        'count': int(len(scored.frames)),
        'positives': int(np.sum(scored.labels)),
        'description': description,
    }


# ---------------------------------------------------------------------------------------------------------
# The 2021 reference


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


# ---------------------------------------------------------------------------------------------------------
# report.md


def _f(value: float, digits: int = 3) -> str:
    """A rate or AUC for the tables; NaN (a class absent from the scored frames) prints as n/a."""
    return 'n/a' if math.isnan(value) else f'{value:.{digits}f}'


def _threshold_text(value: float) -> str:
    return f'{value:.4g}'


def predictors_table(results: dict[str, dict]) -> list[str]:
    """Markdown table: AUC with CI, Keras AUC, and both threshold rules with where each was chosen."""
    lines = [
        '| predictor | ROC-AUC [95 % block CI] | Keras AUC (200 thr.) | max-accuracy thr. → acc / TPR / FPR '
        '| Youden thr. → J / TPR / FPR | thresholds chosen on |',
        '|---|---|---|---|---|---|',
    ]
    for name, r in results.items():
        ci = r['auc_ci']
        acc, j = r['max_accuracy'], r['youden']
        keras_auc = _f(r['auc_keras_200']) if 'auc_keras_200' in r else '—'
        lines.append(
            f'| {name} | {_f(r["auc"])} [{_f(ci["low"])}, {_f(ci["high"])}] | {keras_auc} '
            f'| {_threshold_text(acc["threshold"])} → '
            f'{_f(acc["accuracy"])} / {_f(acc["tpr"])} / {_f(acc["fpr"])} '
            f'| {_threshold_text(j["threshold"])} → {_f(j["j"])} / {_f(j["tpr"])} / {_f(j["fpr"])} '
            f'| {acc["chosen_on"]} |'
        )
    return lines


def published_table(comparison: dict[str, dict[str, dict]]) -> list[str]:
    lines = ['| predictor | figure | published | reproduced | match |', '|---|---|---|---|---|']
    for name, rows in comparison.items():
        for figure, row in rows.items():
            mark = 'yes' if row['match'] else '**NO**'
            lines.append(f'| {name} | {figure} | {row["published"]} | {row["ours"]:.4f} | {mark} |')
    return lines


def _frames_line(frames: dict) -> str:
    return (
        f'{frames["split"]} frames {frames["first"]} … {frames["last"]} ({frames["count"]} frames, '
        f'{frames["positives"]} positive = {frames["positives"] / frames["count"]:.1%}; '
        f'{frames["description"]})'
    )


def _bootstrap_line(bootstrap: dict) -> str:
    return (
        f'AUC intervals: moving-block bootstrap, blocks of {bootstrap["block_length"]} consecutive samples, '
        f'{bootstrap["num_resamples"]} resamples, seed {bootstrap["seed"]} '
        '(clips of neighbouring frames overlap by > 90 %, '
        'so resampling single frames would be far too narrow).'
    )


PLOT_CAPTIONS = {
    'roc.png': 'ROC curves (dots: Youden operating points at the thresholds chosen as the table says)',
    'thresholds.png': 'Accuracy and Youden J against the threshold (dashed: thresholds applied)',
    'timeline.png': 'Predictions over time beside ỹ; shaded: frames labelled "burst ahead"',
    'histogram.png': 'Distribution of the predictions per class',
}


def reference_markdown(report: dict) -> str:
    published = report['published_comparison']
    changes = report['auc_change_from_2021_crop']
    checks = report['checks']
    lines = [
        '# The 2021 fish-burst evaluation, reproduced and corrected',
        '',
        f'Source: the shipped 2021 predictions and labels in `{report["source"]["reference"]}`.',
        '',
        '## 1. The published table, reproduced',
        '',
        f'Scored: {_frames_line(published["frames"])}. '
        'As in 2021, every threshold here was chosen on the test split itself, which flatters every row.',
        '',
        *predictors_table(published['predictors']),
        '',
        'Published figures (truncated or rounded as printed) against the reproduction:',
        '',
        *published_table(published['matches']),
        '',
        '## 2. The correct evaluation',
        '',
        f'Scored: {_frames_line(report["frames"])}. The 2021 crop also scored '
        f'{checks["unlabelled_frames_in_2021_crop"]} trailing frames whose label was never computed (0 by '
        'default). Baseline thresholds are chosen on '
        f'{_frames_line(report["selection"])} and applied to test. '
        'The 2021 models shipped only test predictions: their thresholds can only be chosen on test, '
        'so their threshold columns are optimistic.',
        '',
        *predictors_table(report['predictors']),
        '',
        _bootstrap_line(report['bootstrap']),
        '',
        *differences_lines(report['auc_differences']),
        *threshold_change_lines(published['predictors'], report['predictors']),
        'What the correct crop changes (AUC on the valid frames minus AUC on the 2021 crop): '
        + ', '.join(f'{name} {delta:+.4f}' for name, delta in changes.items())
        + '.',
        '',
        f'Checks: shipped test labels equal the recomputed rule: {checks["test_labels_equal_recomputed"]}; '
        f'validation: {checks["validation_labels_equal_recomputed"]}; '
        'the recomputed 2021 baseline differs from the shipped one by at most '
        f'{checks["shipped_baseline_max_abs_difference_in_2021_crop"]:.1e} in the 2021 crop '
        '(the shipped one is 0 outside it).',
        '',
        *_plot_lines(),
    ]
    return '\n'.join(lines) + '\n'


def _plot_lines() -> list[str]:
    lines = ['## Plots', '']
    for file, caption in PLOT_CAPTIONS.items():
        lines += [f'![{caption}]({file})', '', f'*{caption}.*', '']
    return lines


# ---------------------------------------------------------------------------------------------------------
# Output


def write_outputs(
    out_dir: str | os.PathLike,
    report: dict,
    markdown: str,
    scored: ScoredFrames,
    predictors: Sequence[Predictor],
    results: dict[str, dict],
    window: int = 600,
) -> pathlib.Path:
    """report.md, metrics.json and the four plots in out_dir (created if needed)."""
    from convlstm_jax import visualize  # matplotlib only when writing

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plotters = {
        'roc.png': lambda: visualize.roc_figure(scored, predictors, results),
        'thresholds.png': lambda: visualize.thresholds_figure(scored, predictors, results),
        'timeline.png': lambda: visualize.timeline_figure(scored, predictors, results, window=window),
        'histogram.png': lambda: visualize.histogram_figure(scored, predictors),
    }
    for file, make_figure in plotters.items():
        visualize.save_figure(make_figure(), out / file)
    io.write_json(out / 'metrics.json', report)
    io.write_text(out / 'report.md', markdown)
    return out


def reference_report(
    reference_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    bootstrap: BootstrapOptions | None = None,
    window: int = 600,
) -> dict:
    """Reproduces the 2021 table, writes the correct evaluation to out_dir; returns metrics.json's content."""
    report, scored, predictors = reference_evaluation(reference_dir, bootstrap)
    write_outputs(
        out_dir, report, reference_markdown(report), scored, predictors, report['predictors'], window
    )
    return report


# ---------------------------------------------------------------------------------------------------------
# A model from a checkpoint

SPLIT_NAMES = ('train', 'validation', 'test')
SELECTION_SPLIT = 'validation'
WORKDIR_CONFIG = 'config.json'
# config.data fields that must agree with the model directory's input contract.
INPUT_FIELDS = ('height', 'width', 'time_steps', 'frames_per_step')


def workdir_data_config(checkpoint: pathlib.Path) -> dict | None:
    """The `data` section of the training config beside a workdir (or a step directory in one), if any."""
    for folder in (checkpoint, checkpoint.parent.parent):
        path = folder / WORKDIR_CONFIG
        if path.is_file():
            data = json.loads(path.read_text()).get('data')
            if not isinstance(data, dict):
                raise ValueError(f'{path} has no "data" section')
            return data
    return None


def _merge(config, values: dict, where: str) -> None:
    """Sets `values` (nested dicts from JSON) into a ConfigDict, lists back to tuples where defaults are."""
    for key, value in values.items():
        if key not in config:
            raise ValueError(f'{where}: unknown data config field {key!r}')
        if isinstance(value, dict):
            _merge(config[key], value, f'{where}.{key}')
        else:
            config[key] = tuple(value) if isinstance(value, list) else value


def parse_override(text: str) -> tuple[list[str], object]:
    """'--config.data.a.b=VALUE' → (['a', 'b'], VALUE as a Python literal, or the raw string)."""
    name, sep, raw = text.partition('=')
    if not sep or not name.startswith('--config.data.'):
        raise ValueError(f'expected an override --config.data.FIELD=VALUE, found {text!r}')
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return name.removeprefix('--config.data.').split('.'), value


def resolve_data_config(checkpoint: str | os.PathLike, spec: dict, overrides: Sequence[str] = ()):
    """config.data for evaluating `checkpoint`: the workdir's training data config where there is one, else
    the defaults with the model directory's input contract; then the command-line overrides."""
    from convlstm_jax.config import base_config

    data_config = base_config().data
    saved = workdir_data_config(pathlib.Path(checkpoint))
    if saved is not None:
        _merge(data_config, saved, 'workdir config.json data')
    else:
        for field in (*INPUT_FIELDS, 'horizon', 'resize'):
            if field in spec['input']:
                data_config[field] = type(data_config[field])(spec['input'][field])
    for override in overrides:
        path, value = parse_override(override)
        target = data_config
        for key in path[:-1]:
            target = target[key]
        if path[-1] not in target:
            raise ValueError(f'unknown data config field {".".join(path)!r} in {override!r}')
        target[path[-1]] = value
    mismatched = {
        field: (data_config[field], spec['input'][field])
        for field in INPUT_FIELDS
        if field in spec['input'] and data_config[field] != spec['input'][field]
    }
    if mismatched:
        details = ', '.join(f'{k}: data {d} vs model {m}' for k, (d, m) in mismatched.items())
        raise ValueError(f"the data config does not fit the model's input contract ({details})")
    return data_config


def predict_split(model, variables: dict, split, data_config, *, batch_size: int) -> np.ndarray:
    """Probabilities for every sample of `split`, in order, through the eval pipeline and a jitted apply."""

    from convlstm_jax import predict
    from convlstm_jax.data import pipeline

    apply = predict.make_apply(model, variables)
    logits, index = [], []
    with progress.bar(total=len(split.samples), unit='clip', desc=f'predict {split.name}') as bar:
        batches = pipeline.eval_batches(
            split,
            global_batch=batch_size,
            backend=data_config.pipeline,
            time_steps=data_config.time_steps,
            frames_per_step=data_config.frames_per_step,
        )
        for batch in batches:
            real = batch['mask'][0] > 0.5
            logits.append(apply(batch['clips'][0])[real])
            index.append(batch['index'][0][real])
            bar.update(int(real.sum()))
    index_all = np.concatenate(index) if index else np.zeros(0, np.int64)
    if not np.array_equal(index_all, split.samples):
        raise RuntimeError(f'the eval pipeline did not return every sample of {split.name} once, in order')
    return predict.sigmoid(np.concatenate(logits)).astype(np.float64)


def model_evaluation(
    checkpoint: str | os.PathLike,
    *,
    select: str = 'best_auc',
    split: str = 'test',
    overrides: Sequence[str] = (),
    batch_size: int = 16,
    bootstrap: BootstrapOptions | None = None,
) -> tuple[dict, ScoredFrames, list[Predictor]]:
    """The model's predictions on `split` beside the baselines, thresholds chosen on validation."""
    from convlstm_jax import checkpoints, models
    from convlstm_jax.data import dataset

    bootstrap = bootstrap or BootstrapOptions()
    if split not in SPLIT_NAMES:
        raise ValueError(f'unknown split {split!r}: expected one of {", ".join(SPLIT_NAMES)}')
    spec, variables = checkpoints.load_model(checkpoint, select=select)
    data_config = resolve_data_config(checkpoint, spec, overrides)
    splits = dataset.load_splits(data_config)
    needed = [split] if split == SELECTION_SPLIT else [split, SELECTION_SPLIT]
    missing = [name for name in needed if name not in splits]
    if missing:
        raise ValueError(f'the data has no split(s) {missing}: found {sorted(splits)}')
    model = models.build_model(spec['model'])

    def scored_frames(name: str) -> tuple[ScoredFrames, np.ndarray]:
        data = splits[name]
        if len(data.samples) == 0:
            raise ValueError(f'split {name!r} has no valid samples')
        probs = predict_split(model, variables, data, data_config, batch_size=batch_size)
        return ScoredFrames(name, data.samples, data.labels[data.samples], data.y_tilde), probs

    scored, scores = scored_frames(split)
    if split == SELECTION_SPLIT:
        selection, select_scores = None, None
    else:
        selection, select_scores = scored_frames(SELECTION_SPLIT)
    optimistic = f'{split} (the scored split itself: no other split to choose on)'
    predictors = [Predictor('model', scores, select_scores, kind='model', chosen_on_scored=optimistic)]
    predictors += [
        dataclasses.replace(p, chosen_on_scored=optimistic) for p in baseline_predictors(scored, selection)
    ]
    results = score_predictors(scored, predictors, selection, bootstrap)
    report = {
        'format': REPORT_FORMAT,
        'source': {
            'checkpoint': str(checkpoint),
            'select': select,
            'model': spec['model'],
            'model_source': spec.get('source', {}),
            'data': data_config.to_dict(),
        },
        'frames': frames_summary(scored, 'every valid sample of the split'),
        'selection': frames_summary(selection, 'every valid sample') if selection else None,
        'predictors': results,
        'auc_differences': auc_differences(scored, predictors, bootstrap),
        'bootstrap': dataclasses.asdict(bootstrap),
    }
    return report, scored, predictors


def model_markdown(report: dict) -> str:
    source = report['source']
    data = source['data']
    selection = report['selection']
    chosen = (
        f'Thresholds are chosen on {_frames_line(selection)} and applied to {report["frames"]["split"]}.'
        if selection
        else 'Thresholds are chosen on the scored split itself (no other split to choose on): optimistic.'
    )
    lines = [
        f'# Evaluation of `{source["checkpoint"]}`',
        '',
        f'Checkpoint selection: {source["select"]}; model: filters {source["model"].get("filters")}; data: '
        f'source {data["source"]!r}, {data["height"]}×{data["width"]}, n = {data["time_steps"]}, '
        f'h = {data["horizon"]}.',
        '',
        f'Scored: {_frames_line(report["frames"])}. {chosen}',
        '',
        *predictors_table(report['predictors']),
        '',
        _bootstrap_line(report['bootstrap']),
        '',
        *differences_lines(report['auc_differences']),
        *_plot_lines(),
    ]
    return '\n'.join(lines) + '\n'


def model_report(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    select: str = 'best_auc',
    split: str = 'test',
    overrides: Sequence[str] = (),
    batch_size: int = 16,
    bootstrap: BootstrapOptions | None = None,
    window: int = 600,
) -> dict:
    """Evaluates a checkpoint, writes report.md, metrics.json and plots; returns metrics.json's content."""
    report, scored, predictors = model_evaluation(
        checkpoint,
        select=select,
        split=split,
        overrides=overrides,
        batch_size=batch_size,
        bootstrap=bootstrap,
    )
    write_outputs(out_dir, report, model_markdown(report), scored, predictors, report['predictors'], window)
    return report


# ---------------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog='python -m convlstm_jax.evaluate',
        description='Evaluate a model (or the shipped 2021 predictions) beside the ỹ baselines; '
        'thresholds are chosen on validation and applied to the scored split.',
        epilog='Model mode also takes data overrides: --config.data.FIELD=VALUE, e.g. --config.data.path=DIR',
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--checkpoint', help='model directory, training workdir or step directory')
    source.add_argument('--reference', help='the 2021 artifacts folder (e.g. ../shared/reference/fish2021)')
    parser.add_argument(
        '--select', default='best_auc', help='step of a workdir: best_auc | best_loss | latest'
    )
    parser.add_argument('--split', default='test', help='split to score (model mode)')
    parser.add_argument('--out', required=True, help='folder for report.md, metrics.json and the plots')
    parser.add_argument('--batch_size', type=int, default=16, help='clips per prediction batch (model mode)')
    distributed.add_cpu_devices_argument(parser)
    parser.add_argument(
        '--num_resamples', type=int, default=1000, help='bootstrap resamples for AUC intervals'
    )
    parser.add_argument('--block_length', type=int, default=240, help='bootstrap block length in samples')
    parser.add_argument('--seed', type=int, default=0, help='bootstrap seed')
    parser.add_argument('--window', type=int, default=600, help='frames shown in the timeline plot')
    args, rest = parser.parse_known_args(argv)
    overrides = [arg for arg in rest if arg.startswith('--config.')]
    unknown = [arg for arg in rest if not arg.startswith('--config.')]
    if unknown:
        parser.error(f'unrecognized arguments: {" ".join(unknown)}')
    if overrides and args.reference:
        parser.error('--config.* overrides apply to --checkpoint only')
    return args, overrides


def main(argv: Sequence[str] | None = None) -> int:
    args, overrides = parse_args(argv)
    if args.cpu_devices:
        distributed.use_cpu_devices(args.cpu_devices)
    bootstrap = BootstrapOptions(args.block_length, args.num_resamples, args.seed)
    try:
        if args.reference:
            report = reference_report(args.reference, args.out, bootstrap, window=args.window)
        else:
            report = model_report(
                args.checkpoint,
                args.out,
                select=args.select,
                split=args.split,
                overrides=overrides,
                batch_size=args.batch_size,
                bootstrap=bootstrap,
                window=args.window,
            )
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    print(f'wrote {pathlib.Path(args.out) / "report.md"}')
    for name, result in report['predictors'].items():
        rule = result['youden']
        print(
            f'  {name:24s} AUC {result["auc"]:.3f}  Youden thr {rule["threshold"]:.4g} '
            f'(chosen on {rule["chosen_on"]}): TPR {rule["tpr"]:.3f} FPR {rule["fpr"]:.3f}'
        )
    return 0


if __name__ == '__main__':
    sys.exit(main())
