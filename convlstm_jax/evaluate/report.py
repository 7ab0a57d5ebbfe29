"""report.md from an evaluation's metrics, and the whole output folder: report.md, metrics.json, plots."""

from __future__ import annotations

import math
import os
import pathlib
from collections.abc import Sequence

from convlstm_jax import io
from convlstm_jax.evaluate import model as model_lib
from convlstm_jax.evaluate import plots, reference
from convlstm_jax.evaluate.core import BootstrapOptions, Predictor, ScoredFrames
from convlstm_jax.plotting import save_figure


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
    for file, caption in plots.PLOT_CAPTIONS.items():
        lines += [f'![{caption}]({file})', '', f'*{caption}.*', '']
    return lines


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
        f'Checkpoint selection: {source["select"]}{_member_part(source)}; model: filters '
        f'{source["model"].get("filters")}; data: '
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


def _member_part(source: dict) -> str:
    """', population member 1 (--member best)' for a population's member; '' for a solo model."""
    if source.get('member') is None:
        return ''
    return f', population member {source["member"]} (--member {source.get("member_asked", "best")})'


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
    out = pathlib.Path(out_dir)
    figures = plots.evaluation_figures(
        scored, predictors, results, window=window
    )  # may refuse: before writing
    for file, figure in figures.items():
        save_figure(figure, out / file)
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
    report, scored, predictors = reference.reference_evaluation(reference_dir, bootstrap)
    write_outputs(
        out_dir, report, reference_markdown(report), scored, predictors, report['predictors'], window
    )
    return report


def model_report(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    select: str = 'best_auc',
    member: int | str | None = None,
    split: str = 'test',
    data_config=None,
    batch_size: int = 16,
    bootstrap: BootstrapOptions | None = None,
    window: int = 600,
) -> dict:
    """Evaluates a checkpoint, writes report.md, metrics.json and plots; returns metrics.json's content."""
    report, scored, predictors = model_lib.model_evaluation(
        checkpoint,
        select=select,
        member=member,
        split=split,
        data_config=data_config,
        batch_size=batch_size,
        bootstrap=bootstrap,
    )
    write_outputs(out_dir, report, model_markdown(report), scored, predictors, report['predictors'], window)
    return report
