"""Pictures: the evaluation plots, and a look inside the ConvLSTM for one clip.

    python -m convlstm_jax.visualize --checkpoint DIR --split test --t INDEX --out FILE.png

draws, for the clip ending at frame t, its input time-channels, and per time step the gates i, f, c̃, o,
the cell state and the hidden state of chosen channels of each ConvLSTM layer, and the saliency (gradient
of the logit with respect to the input). Figures are drawn with matplotlib's object API on the Agg canvas,
so nothing here touches pyplot's global state or needs a display.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from convlstm_jax import io, metrics

if TYPE_CHECKING:
    from convlstm_jax.evaluate import Predictor, ScoredFrames


def save_figure(figure: Figure, path: str | os.PathLike) -> pathlib.Path:
    """Writes a PNG atomically (temporary file in the same folder, then rename)."""

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    io.write_atomic(path, lambda f: figure.savefig(f, format='png', dpi=110, bbox_inches='tight'))
    return path


def _plottable(predictors: Sequence[Predictor]) -> list[Predictor]:
    """Probability-valued predictors that are not constant (all-negative has no curve worth drawing)."""
    return [p for p in predictors if p.probabilities and np.ptp(p.scores) > 0]


# ---------------------------------------------------------------------------------------------------------
# Evaluation plots


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


def thresholds_figure(
    scored: ScoredFrames, predictors: Sequence[Predictor], results: dict[str, dict]
) -> Figure:
    shown = _plottable(predictors)
    figure = Figure(figsize=(6.4, 2.6 * max(len(shown), 1)))
    axes = np.atleast_1d(figure.subplots(max(len(shown), 1), 1, squeeze=False)[:, 0])
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
                label=f'{rule} (from {r[rule]["chosen_on"]})',
            )
        ax.set(xlim=(0, 1), ylim=(0, 1), ylabel=predictor.name)
        ax.legend(fontsize=7, loc='best')
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel(f'threshold (score ≥ threshold is positive), scored on {scored.split}')
    return figure


def timeline_figure(
    scored: ScoredFrames,
    predictors: Sequence[Predictor],
    results: dict[str, dict],
    window: int = 600,
    start: int | None = None,
) -> Figure:
    """ỹ (top) and the predictions (bottom) over `window` frames from `start` (default: the first scored
    frame), frames labelled positive shaded in both."""
    start = int(scored.frames[0]) if start is None else start
    in_window = (scored.frames >= start) & (scored.frames < start + window)
    if not in_window.any():
        raise ValueError(f'no scored frame in the window {start} … {start + window - 1}')
    frames = scored.frames[in_window]
    positive = scored.labels[in_window] == 1
    figure = Figure(figsize=(12, 5.5))
    top, bottom = figure.subplots(2, 1, sharex=True)
    top.plot(frames, scored.y_tilde[frames], color='black', lw=1)
    top.set_ylabel('ỹ (speed proxy)')
    top.set_title(
        f'{scored.split}: frames {frames[0]} … {frames[-1]}; shaded: label 1 (burst within the horizon)'
    )
    for predictor in _plottable(predictors):
        (line,) = bottom.plot(frames, predictor.scores[in_window], lw=1, label=predictor.name)
        if predictor.kind == 'model':
            threshold = results[predictor.name]['youden']['threshold']
            bottom.axhline(threshold, color=line.get_color(), ls='--', lw=0.8)
    bottom.set(ylabel='ŷ (probability)', xlabel='frame t', ylim=(-0.02, 1.02))
    bottom.legend(fontsize=8, loc='upper right')
    for ax in (top, bottom):
        ax.fill_between(
            frames, 0, 1, where=positive, transform=ax.get_xaxis_transform(), color='C3', alpha=0.2, lw=0
        )
        ax.grid(alpha=0.3)
    return figure


def histogram_figure(scored: ScoredFrames, predictors: Sequence[Predictor]) -> Figure:
    shown = _plottable(predictors)
    figure = Figure(figsize=(6.4, 2.4 * max(len(shown), 1)))
    axes = np.atleast_1d(figure.subplots(max(len(shown), 1), 1, squeeze=False)[:, 0])
    bins = np.linspace(0, 1, 51)
    for ax, predictor in zip(axes, shown, strict=False):
        for label, color in ((0, 'C0'), (1, 'C3')):
            values = predictor.scores[scored.labels == label]
            ax.hist(
                values,
                bins=bins,
                density=True,
                alpha=0.5,
                color=color,
                label=f'label {label} ({len(values)})',
            )
        ax.set_ylabel(predictor.name, fontsize=8)
        ax.legend(fontsize=7)
    axes[-1].set_xlabel(f'ŷ on {scored.split} (density per class)')
    return figure


# ---------------------------------------------------------------------------------------------------------
# Inside the ConvLSTM: gates, states and saliency for one clip

GATE_ROWS = ('i', 'f', 'c̃', 'o', 'c', 'h')  # input, forget, candidate, output gates; cell and hidden state


@dataclasses.dataclass
class LayerActivations:
    """Per time step of one ConvLSTM layer, arrays (T, H', W', filters)."""

    name: str
    states: dict[str, np.ndarray]  # keys GATE_ROWS


def _replay(layer: Any) -> Callable[[dict, Any], dict[str, Any]]:
    """A jitted step-by-step run of one ConvLSTM2D layer's own cell from its parameters and its input x
    (1, T, H, W, C), keeping the gates and states per step that the layer does not return."""
    import jax
    import jax.numpy as jnp

    from convlstm_jax import layers

    cell = layers.ConvLSTMCell.of(layer, keep_gates=True)

    def replay(params: dict, x: Any) -> dict[str, Any]:
        frames = jnp.swapaxes(jnp.asarray(x, jnp.float32), 0, 1)  # (T, 1, H, W, C)
        if layer.go_backwards:
            frames = frames[::-1]
        kernels = (params['kernel'], params['recurrent_kernel'], params.get('bias'))

        def step(carry, x_t):
            return cell.apply({}, carry, x_t, *kernels)

        carry = cell.initialize_carry(frames.shape[1:], params['kernel'].shape[:2], layer.filters)
        _, states = jax.lax.scan(step, carry, frames)
        return {name: state[:, 0] for name, state in zip(GATE_ROWS, states, strict=True)}

    return jax.jit(replay)


def layer_activations(model: Any, variables: dict, clip: np.ndarray) -> tuple[float, list[LayerActivations]]:
    """(logit, per ConvLSTM layer its gates and states per time step) for one clip (T, H, W, C).

    A flax method interceptor captures each layer's input and parameters during a normal (jitted) apply;
    each layer is then replayed step by step, and its last hidden state is checked against what the layer
    itself returned.
    """
    import flax.linen as nn
    import jax

    from convlstm_jax import layers

    modules: list[Any] = []

    def forward(variables: dict, clip: Any):
        modules.clear()
        captured = []

        def interceptor(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            if isinstance(context.module, layers.ConvLSTM2D) and context.method_name == '__call__':
                modules.append(context.module)
                captured.append((context.module.variables['params'], args[0], out))
            return out

        with nn.intercept_methods(interceptor):
            logits = model.apply(variables, clip[None], train=False)
        return logits[0], captured

    logit, captured = jax.jit(forward)(variables, clip)
    result = []
    for layer, (params, x, out) in zip(modules, captured, strict=True):
        states = {name: np.asarray(v) for name, v in _replay(layer)(params, x).items()}
        returned = np.asarray(out[0][-1] if layer.return_sequences else out[0])
        if not np.allclose(states['h'][-1], returned, atol=1e-4, rtol=1e-3):
            raise RuntimeError(f'{layer.name}: the step-by-step replay does not reproduce the layer output')
        result.append(LayerActivations(layer.name, states))
    return float(logit), result


def saliency(model: Any, variables: dict, clip: np.ndarray) -> np.ndarray:
    """∂logit/∂input for one clip, with the input as float in [0, 1]: (T, H, W, C)."""
    import jax
    import jax.numpy as jnp

    scale = 1 / 255 if clip.dtype == np.uint8 else 1.0
    x = jnp.asarray(clip, jnp.float32) * scale
    grad = jax.jit(jax.grad(lambda v, x: model.apply(v, x[None], train=False)[0], argnums=1))(variables, x)
    return np.asarray(grad)


def shown_steps(num_steps: int, max_columns: int) -> list[int]:
    """Up to max_columns time steps spread evenly, always including the first and the last."""
    if max_columns >= num_steps:
        return list(range(num_steps))
    return sorted({int(round(k)) for k in np.linspace(0, num_steps - 1, max_columns)})


def clip_figure(
    clip: np.ndarray,
    activations: Sequence[LayerActivations],
    gradient: np.ndarray,
    *,
    channels: Sequence[int] = (0, 1),
    max_columns: int = 10,
    title: str = '',
) -> Figure:
    """Image grid: columns = time steps; rows = input channels, saliency, then per layer and chosen
    channel the gates i, f, c̃, o and the cell and hidden state."""
    for layer in activations:
        filters = layer.states['h'].shape[-1]
        bad = [c for c in channels if not 0 <= c < filters]
        if bad:
            raise ValueError(f'{layer.name} has {filters} channels (0 … {filters - 1}); cannot show {bad}')
    steps = shown_steps(clip.shape[0], max_columns)
    rows: list[tuple[str, np.ndarray, dict]] = []
    pixel = clip.astype(np.float32) / (255.0 if clip.dtype == np.uint8 else 1.0)
    for channel in range(clip.shape[-1]):
        rows.append((f'input ch {channel}', pixel[..., channel], {'cmap': 'gray', 'vmin': 0, 'vmax': 1}))
    magnitude = np.abs(gradient).sum(axis=-1)
    rows.append(
        ('|∂logit/∂x|', magnitude, {'cmap': 'magma', 'vmin': 0, 'vmax': float(magnitude.max()) or 1.0})
    )
    for layer in activations:
        for channel in channels:
            for name in GATE_ROWS:
                values = layer.states[name][..., channel]
                rows.append((f'{layer.name}[{channel}] {name}', values, _state_style(name, values)))
    aspect = clip.shape[1] / clip.shape[2]
    figure = Figure(figsize=(1.5 * len(steps) + 2.0, 1.5 * aspect * len(rows) + 0.6), layout='constrained')
    axes = figure.subplots(len(rows), len(steps), squeeze=False)
    for r, (label, values, style) in enumerate(rows):
        for k, step in enumerate(steps):
            ax = axes[r, k]
            image = ax.imshow(values[step], interpolation='nearest', **style)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f'step {step}', fontsize=8)
            if k == 0:
                ax.set_ylabel(label, fontsize=7, rotation=0, ha='right', va='center')
        figure.colorbar(image, ax=axes[r, :].tolist(), fraction=0.02, pad=0.01, aspect=8)
    if title:
        figure.suptitle(title, fontsize=10)
    return figure


def _state_style(name: str, values: np.ndarray) -> dict:
    if name in ('i', 'f', 'o'):
        return {'cmap': 'viridis', 'vmin': 0, 'vmax': 1}
    limit = float(np.abs(values).max()) or 1.0
    return {'cmap': 'RdBu_r', 'vmin': -limit, 'vmax': limit}


def visualize(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    split: str = 'test',
    t: int,
    select: str = 'best_auc',
    channels: Sequence[int] = (0, 1),
    max_columns: int = 10,
    overrides: Sequence[str] = (),
) -> pathlib.Path:
    """Draws the clip ending at frame t of `split` through the model of `checkpoint` into a PNG."""
    from convlstm_jax import checkpoints, evaluate, models
    from convlstm_jax.data import clips, dataset

    if split not in evaluate.SPLIT_NAMES:
        raise ValueError(f'unknown split {split!r}: expected one of {", ".join(evaluate.SPLIT_NAMES)}')
    spec, variables = checkpoints.load_model(checkpoint, select=select)
    data_config = evaluate.resolve_data_config(checkpoint, spec, overrides)
    splits = dataset.load_splits(data_config)
    if split not in splits:
        raise ValueError(f'the data has no split {split!r}: found {sorted(splits)}')
    data = splits[split]
    if t not in set(data.samples.tolist()):
        first, last = int(data.samples[0]), int(data.samples[-1])
        raise ValueError(f'frame {t} is not a valid sample of {split}: valid frames lie in {first} … {last}')
    clip = clips.time_channels(data.frames, t, data_config.time_steps, data_config.frames_per_step)
    model = models.build_model(spec['model'])
    logit, activations = layer_activations(model, variables, clip)
    gradient = saliency(model, variables, clip)
    probability = 1 / (1 + np.exp(-logit))
    title = (
        f'{split} frame t = {t}: label {int(data.labels[t])}, ỹ[t] = {data.y_tilde[t]:.2e}, '
        f'ŷ = {probability:.3f}  ({checkpoint})'
    )
    figure = clip_figure(clip, activations, gradient, channels=channels, max_columns=max_columns, title=title)
    return save_figure(figure, out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog='python -m convlstm_jax.visualize',
        description='Gates, states and saliency of a ConvLSTM for the clip ending at one frame.',
        epilog='Data overrides as in evaluate: --config.data.FIELD=VALUE',
    )
    parser.add_argument(
        '--checkpoint', required=True, help='model directory, training workdir or step directory'
    )
    parser.add_argument(
        '--select', default='best_auc', help='step of a workdir: best_auc | best_loss | latest'
    )
    parser.add_argument('--split', default='test')
    parser.add_argument('--t', type=int, required=True, help='target frame index of the clip')
    parser.add_argument('--out', required=True, help='PNG to write')
    parser.add_argument('--channels', default='0,1', help='comma-separated channels of each layer to show')
    parser.add_argument('--max_columns', type=int, default=10, help='time steps shown, spread evenly')
    args, rest = parser.parse_known_args(argv)
    unknown = [arg for arg in rest if not arg.startswith('--config.data.')]
    if unknown:
        parser.error(f'unrecognized arguments: {" ".join(unknown)}')
    try:
        channels = [int(c) for c in args.channels.split(',') if c.strip()]
        path = visualize(
            args.checkpoint,
            args.out,
            split=args.split,
            t=args.t,
            select=args.select,
            channels=channels,
            max_columns=args.max_columns,
            overrides=rest,
        )
    except (ValueError, FileNotFoundError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    print(f'wrote {path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
