"""The evaluation's figures say something: windows that hold positives, axes that span the scores, labels."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.figure import Figure

from convlstm_jax import metrics, plotting
from convlstm_jax.evaluate import core, plots


def _labelled_axes(figure: Figure) -> None:
    """Every axis names what it shows: each row's first y axis and each column's bottom x axis."""
    for ax in figure.axes:
        spec = ax.get_subplotspec()
        if spec.is_first_col():
            assert ax.get_ylabel().strip(), ax.get_title()
        if spec.is_last_row():
            assert ax.get_xlabel().strip(), ax.get_title()


def _narrow_run(num_frames: int = 2000) -> tuple[core.ScoredFrames, list[core.Predictor], dict]:
    """Positives in two bursts late in the split; a model whose scores span 0.39 … 0.55 only."""
    rng = np.random.default_rng(0)
    labels = np.zeros(num_frames, np.int8)
    labels[1500:1530] = 1
    labels[1800:1812] = 1
    labels[200] = 1
    frames = np.arange(num_frames) + 119
    scores = 0.39 + 0.12 * rng.random(num_frames) + 0.04 * labels
    scored = core.ScoredFrames('test', frames, labels, rng.random(num_frames + 200) * 1e-3)
    predictors = [
        core.Predictor('model', scores, None, kind='model'),
        core.Predictor('all-negative', np.zeros(num_frames), None, kind='baseline'),
    ]
    results = core.score_predictors(scored, predictors, None, core.BootstrapOptions(240, 5, 0))
    return scored, predictors, results


def test_positive_windows_hold_the_densest_positives() -> None:
    scored, _, _ = _narrow_run()
    starts = plots.positive_windows(scored.frames, scored.labels, 100, count=3)
    assert starts == sorted(starts) and len(starts) == 3
    counts = [int(scored.labels[(scored.frames >= s) & (scored.frames < s + 100)].sum()) for s in starts]
    assert all(count > 0 for count in counts)
    assert sorted(counts, reverse=True) == [30, 12, 1]  # every positive of the split is shown
    assert all(b - a >= 100 for a, b in zip(starts, starts[1:], strict=False)), 'windows overlap'
    assert all(scored.frames[0] <= s <= scored.frames[-1] - 99 for s in starts)
    # The burst of 30 sits in the middle of its window, not at an edge.
    burst = next(s for s, c in zip(starts, counts, strict=True) if c == 30)
    assert abs((burst + 50) - (1500 + 119 + 15)) <= 1


def test_positive_windows_without_positives_show_the_start() -> None:
    frames = np.arange(50, 500)
    assert plots.positive_windows(frames, np.zeros(len(frames)), 100) == [50]
    # A window longer than the split: one window from the first frame.
    labels = np.zeros(len(frames))
    labels[300] = 1
    assert plots.positive_windows(frames, labels, 1000) == [50]


def test_timeline_shows_positives_and_spans_the_scores() -> None:
    scored, predictors, results = _narrow_run()
    figure = plots.timeline_figure(scored, predictors, results, window=100)
    _labelled_axes(figure)
    axes = np.array(figure.axes).reshape(2, 3)  # ỹ and the one non-constant predictor; three windows
    for ax in axes[0]:
        first, last = (int(v) for v in ax.get_title().split(':')[0].removeprefix('frames ').split(' … '))
        assert scored.labels[(scored.frames >= first) & (scored.frames <= last)].sum() > 0
    low, high = axes[1, 0].get_ylim()
    assert 0.35 < low < 0.40 and 0.54 < high < 0.60, (low, high)  # not 0 … 1
    with pytest.raises(ValueError, match='no scored frame'):
        plots.timeline_figure(scored, predictors, results, window=10, starts=[5])


def test_threshold_and_histogram_axes_span_the_scores() -> None:
    scored, predictors, results = _narrow_run()
    for figure in (
        plots.thresholds_figure(scored, predictors, results),
        plots.histogram_figure(scored, predictors),
    ):
        _labelled_axes(figure)
        (ax,) = figure.axes  # the constant all-negative has no curve worth drawing
        assert ax.get_title() == 'model'
        low, high = ax.get_xlim()
        assert 0.35 < low < 0.40 and 0.54 < high < 0.60, (low, high)
    _labelled_axes(plots.roc_figure(scored, predictors, results))


def test_evaluation_figures_are_the_captioned_files() -> None:
    scored, predictors, results = _narrow_run()
    figures = plots.evaluation_figures(scored, predictors, results, window=200)
    assert list(figures) == list(plots.PLOT_CAPTIONS)


def test_span_follows_the_data() -> None:
    assert plotting.span(np.array([0.4, 0.5]), margin=0.1) == pytest.approx((0.39, 0.51))
    assert plotting.span(np.array([np.nan, 2.0, np.inf]), 1.0, margin=0.0) == (1.0, 2.0)
    low, high = plotting.span(np.array([0.7, 0.7]))
    assert low < 0.7 < high
    assert plotting.span(np.array([np.nan])) == (0.0, 1.0)
    # Accuracy and J curves of a real predictor fit their axis.
    labels = np.array([0, 1, 0, 1])
    curves = metrics.accuracy_and_j_curves(labels, np.array([0.1, 0.4, 0.35, 0.8]))
    low, high = plotting.span(curves['accuracy'], curves['j'])
    assert low <= curves['j'].min() and high >= curves['accuracy'].max()
