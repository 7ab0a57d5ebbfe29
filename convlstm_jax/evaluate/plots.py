"""The evaluation's figures: ROC curves, accuracy and J against the threshold, predictions over time in the
windows that hold the positives, and the predictions' distribution per class.

Score axes span the scores drawn (and the thresholds applied), not 0 … 1: a model whose scores lie in
0.39 … 0.55 would otherwise be a flat line. Every axis says what it shows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from convlstm_jax import metrics
from convlstm_jax.evaluate.core import Predictor, ScoredFrames
from convlstm_jax.plotting import shade, span

PLOT_CAPTIONS = {
    'roc.png': 'ROC curves (dots: Youden operating points at the thresholds chosen as the table says)',
    'thresholds.png': 'Accuracy and Youden J against the threshold (dashed: thresholds applied)',
    'timeline.png': 'Predictions over time beside ỹ, in the windows with the most positives; '
    'shaded: frames labelled "burst ahead"',
    'histogram.png': 'Distribution of the predictions per class',
}
TIMELINE_WINDOWS = 3


def plottable(predictors: Sequence[Predictor]) -> list[Predictor]:
    """Probability-valued predictors that are not constant (all-negative has no curve worth drawing)."""
    return [p for p in predictors if p.probabilities and np.ptp(p.scores) > 0]


def evaluation_figures(
    scored: ScoredFrames, predictors: Sequence[Predictor], results: dict[str, dict], *, window: int = 600
) -> dict[str, Figure]:
    """The figures of PLOT_CAPTIONS, by file name."""
    return {
        'roc.png': roc_figure(scored, predictors, results),
        'thresholds.png': thresholds_figure(scored, predictors, results),
        'timeline.png': timeline_figure(scored, predictors, results, window=window),
        'histogram.png': histogram_figure(scored, predictors),
    }


def roc_figure(scored: ScoredFrames, predictors: Sequence[Predictor], results: dict[str, dict]) -> Figure:
    figure = Figure(figsize=(6.4, 6.0))
    ax = figure.subplots()
    for predictor in predictors:
        fpr, tpr, _ = metrics.roc_curve(scored.labels, predictor.scores)
        r = results[predictor.name]
        (line,) = ax.plot(fpr, tpr, lw=1.4, label=f'{predictor.name} (AUC {r["auc"]:.3f})')
        ax.plot(r['youden']['fpr'], r['youden']['tpr'], 'o', color=line.get_color(), ms=5)
    ax.plot([0, 1], [0, 1], ':', color='grey', lw=1)
    ax.set(xlabel='false positive rate', ylabel='true positive rate', xlim=(0, 1), ylim=(0, 1.01))
    ax.set_title(f'ROC on {scored.split} ({len(scored.frames)} frames)')
    ax.legend(loc='lower right', fontsize=8)
    ax.grid(alpha=0.3)
    return figure


def _applied_thresholds(result: dict) -> list[float]:
    return [result[rule]['threshold'] for rule in ('max_accuracy', 'youden')]


def thresholds_figure(
    scored: ScoredFrames, predictors: Sequence[Predictor], results: dict[str, dict]
) -> Figure:
    shown = plottable(predictors)
    figure = Figure(figsize=(6.4, 2.8 * max(len(shown), 1)), layout='constrained')
    axes = figure.subplots(max(len(shown), 1), 1, squeeze=False)[:, 0]
    for ax, predictor in zip(axes, shown, strict=False):
        curves = metrics.accuracy_and_j_curves(scored.labels, predictor.scores)
        ax.plot(curves['threshold'], curves['accuracy'], label='accuracy')
        ax.plot(curves['threshold'], curves['j'], label='Youden J')
        r = results[predictor.name]
        for rule, color in (('max_accuracy', 'C0'), ('youden', 'C1')):
            ax.axvline(
                r[rule]['threshold'],
                ls='--',
                color=color,
                lw=1,
                label=f'{rule} {r[rule]["threshold"]:.3g} (from {r[rule]["chosen_on"]})',
            )
        ax.set_xlim(span(predictor.scores, *_applied_thresholds(r)))
        ax.set_ylim(span(curves['accuracy'], curves['j'], 0.0))
        ax.set_title(predictor.name, fontsize=9)
        ax.set(
            ylabel='accuracy, Youden J', xlabel=f'threshold on ŷ (ŷ ≥ threshold: positive), {scored.split}'
        )
        ax.legend(fontsize=7, loc='best')
        ax.grid(alpha=0.3)
    return figure


def positive_windows(
    frames: np.ndarray, labels: np.ndarray, window: int, count: int = TIMELINE_WINDOWS
) -> list[int]:
    """First frames of up to `count` non-overlapping windows of `window` frames holding the most positives,
    each centred on its positives, in time order. With no positive at all: the first window only."""
    first, last = int(frames[0]), int(frames[-1])
    latest_start = max(first, last - window + 1)
    positives = frames[labels == 1]
    starts = frames[frames <= latest_start]
    # Positives in [s, s + window) for every candidate start s.
    counts = np.searchsorted(positives, starts + window) - np.searchsorted(positives, starts)
    chosen: list[int] = []
    while len(chosen) < count:
        free = np.array([all(abs(int(s) - c) >= window for c in chosen) for s in starts], bool)
        if not free.any() or counts[free].max() == 0:
            break
        best = int(starts[free][np.argmax(counts[free])])  # the earliest among equals
        inside = positives[(positives >= best) & (positives < best + window)]
        centred = min(max((int(inside[0]) + int(inside[-1]) + 1 - window) // 2, first), latest_start)
        # Centring keeps the window's positives in it; it must not slide over a window already chosen.
        chosen.append(centred if all(abs(centred - c) >= window for c in chosen) else best)
    return sorted(chosen) or [first]


def timeline_figure(
    scored: ScoredFrames,
    predictors: Sequence[Predictor],
    results: dict[str, dict],
    window: int = 600,
    starts: Sequence[int] | None = None,
) -> Figure:
    """ỹ (top row) and each predictor's scores (a row each, its Youden threshold dashed) in windows of
    `window` frames side by side: by default the windows with the most positives. Frames labelled positive
    are shaded."""
    if window < 1:
        raise ValueError(f'the timeline window must be at least 1 frame, got {window}')
    starts = list(positive_windows(scored.frames, scored.labels, window) if starts is None else starts)
    masks = [(scored.frames >= s) & (scored.frames < s + window) for s in starts]
    empty = [s for s, mask in zip(starts, masks, strict=True) if not mask.any()]
    if empty:
        raise ValueError(f'no scored frame in the window(s) starting at {empty}')
    shown = plottable(predictors)
    rows, columns = 1 + len(shown), len(starts)
    figure = Figure(figsize=(4.6 * columns + 1.4, 1.8 * rows + 1.0), layout='constrained')
    axes = figure.subplots(rows, columns, squeeze=False, sharex='col', sharey='row')
    shown_frames = np.concatenate([scored.frames[mask] for mask in masks])
    axes[0, 0].set_ylim(span(scored.y_tilde[shown_frames]))
    for row, predictor in enumerate(shown, start=1):
        threshold = results[predictor.name]['youden']['threshold']
        in_windows = np.concatenate([predictor.scores[mask] for mask in masks])
        axes[row, 0].set_ylim(span(in_windows, threshold))
    for column, mask in enumerate(masks):
        frames, positive = scored.frames[mask], scored.labels[mask] == 1
        top = axes[0, column]
        top.plot(frames, scored.y_tilde[frames], color='black', lw=1)
        top.set_title(f'frames {frames[0]} … {frames[-1]}: {int(positive.sum())} positive', fontsize=9)
        for row, predictor in enumerate(shown, start=1):
            ax = axes[row, column]
            (line,) = ax.plot(frames, predictor.scores[mask], lw=1, color=f'C{row - 1}')
            youden = results[predictor.name]['youden']
            ax.axhline(
                youden['threshold'],
                color=line.get_color(),
                ls='--',
                lw=0.8,
                label=f'Youden threshold {youden["threshold"]:.3g} (from {youden["chosen_on"]})',
            )
            if column == 0:
                ax.legend(fontsize=7, loc='upper left')
        for ax in axes[:, column]:
            shade(ax, frames, positive)
            ax.grid(alpha=0.3)
        axes[-1, column].set_xlabel('frame t')
    axes[0, 0].set_ylabel('ỹ (speed proxy)')
    for row, predictor in enumerate(shown, start=1):
        axes[row, 0].set_ylabel(f'ŷ {predictor.name}', fontsize=8)
    figure.suptitle(
        f'{scored.split}: {len(starts)} window(s) of {window} frames with the most positives '
        f'(of {len(scored.frames)} scored frames, {int(scored.labels.sum())} positive); '
        'shaded: label 1 (burst within the horizon)',
        fontsize=9,
    )
    return figure


def histogram_figure(scored: ScoredFrames, predictors: Sequence[Predictor]) -> Figure:
    shown = plottable(predictors)
    figure = Figure(figsize=(6.4, 2.6 * max(len(shown), 1)), layout='constrained')
    axes = figure.subplots(max(len(shown), 1), 1, squeeze=False)[:, 0]
    for ax, predictor in zip(axes, shown, strict=False):
        bins = np.linspace(*span(predictor.scores, margin=0.0), 51)
        for label, color in ((0, 'C0'), (1, 'C3')):
            values = predictor.scores[scored.labels == label]
            ax.hist(
                values,
                bins=bins,
                density=True,
                alpha=0.5,
                color=color,
                label=f'label {label} ({len(values)} frames)',
            )
        ax.set_xlim(span(predictor.scores))
        ax.set_title(predictor.name, fontsize=9)
        ax.set(xlabel=f'ŷ on {scored.split}', ylabel='density per class')
        ax.legend(fontsize=7)
    return figure
