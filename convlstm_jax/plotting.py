"""Figures shared by the commands that draw: PNGs written atomically, axis limits that follow the data,
frames with a label shaded, and predict's probability over time. Figures use matplotlib's object API on the
Agg canvas, so nothing here touches pyplot's global state or needs a display."""

from __future__ import annotations

import os
import pathlib

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from convlstm_jax import io


def save_figure(figure: Figure, path: str | os.PathLike, *, dpi: int = 110) -> pathlib.Path:
    """Writes a PNG atomically (temporary file in the same folder, then rename)."""
    path = pathlib.Path(path)
    FigureCanvasAgg(figure)
    io.write_atomic(path, lambda f: figure.savefig(f, format='png', dpi=dpi, bbox_inches='tight'))
    return path


def span(*values: np.ndarray | float, margin: float = 0.05) -> tuple[float, float]:
    """(low, high) axis limits that hold every finite value given, widened by `margin` of the range on each
    side, so that scores spanning 0.39 … 0.55 fill the axis instead of a sliver of 0 … 1."""
    finite = np.concatenate([np.ravel(np.asarray(v, np.float64)) for v in values])
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return 0.0, 1.0
    low, high = float(finite.min()), float(finite.max())
    pad = margin * (high - low) if high > low else max(abs(high), 1.0) * margin
    return low - pad, high + pad


def shade(ax: Axes, frames: np.ndarray, where: np.ndarray, *, color: str = 'C3', alpha: float = 0.2) -> None:
    """Shades the full height of `ax` over the frames where `where` holds."""
    ax.fill_between(
        frames,
        0,
        1,
        where=where,
        transform=ax.get_xaxis_transform(),
        color=color,
        alpha=alpha,
        lw=0,
        step='mid',
    )


def probability_figure(probabilities: np.ndarray, *, fps: float | None = None, title: str = '') -> Figure:
    """The probability of every frame of a recording over time (frames below; seconds on top when fps is
    known), the leading frames without a full clip (NaN) shaded. The probability axis spans the values."""
    figure = Figure(figsize=(10, 3.5), layout='constrained')
    axes = figure.add_subplot()
    missing = int(np.isnan(probabilities).argmin())  # the leading frames without a full clip
    if missing:
        axes.axvspan(-0.5, missing - 0.5, color='0.88', label=f'no full history (frames 0–{missing - 1})')
    axes.plot(
        np.arange(len(probabilities)), probabilities, color='C0', linewidth=0.8, label='burst probability'
    )
    axes.set(xlim=(0, max(len(probabilities) - 1, 1)), ylim=span(probabilities))
    axes.set(xlabel='frame', ylabel='burst probability ŷ')
    axes.set_title(title, fontsize=9)
    if fps:
        top = axes.secondary_xaxis('top', functions=(lambda f: f / fps, lambda s: s * fps))
        top.set_xlabel('time (s)')
    axes.legend(loc='upper right', fontsize=8)
    return figure
