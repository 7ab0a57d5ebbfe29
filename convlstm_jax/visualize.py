"""A look inside the ConvLSTM for one clip (the evaluation's plots live in convlstm_jax/evaluate/plots.py).

    python -m convlstm_jax.visualize --checkpoint DIR --split test --t INDEX --out FILE.png

draws, for the clip ending at frame t, its input time-channels, and per time step the gates i, f, c̃, o,
the cell state and the hidden state of chosen channels of each ConvLSTM layer, and the saliency (gradient
of the logit with respect to the input). Figures are drawn with matplotlib's object API on the Agg canvas
(convlstm_jax/plotting.py), so nothing here touches pyplot's global state or needs a display.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from convlstm_jax import model_data
from convlstm_jax.plotting import save_figure

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
    from convlstm_jax import checkpoints, models
    from convlstm_jax.data import clips, dataset

    model_data.check_split_name(split)
    spec, variables = checkpoints.load_model(checkpoint, select=select)
    data_config = model_data.resolve_data_config(checkpoint, spec, overrides)
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


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """(the options, the --config.data.FIELD=VALUE overrides): the one reader of the command line."""
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
    parser.add_argument('--split', default='test', help='split the frame belongs to (default: test)')
    parser.add_argument('--t', type=int, required=True, help='target frame index of the clip')
    parser.add_argument('--out', required=True, help='PNG to write')
    parser.add_argument('--channels', default='0,1', help='comma-separated channels of each layer to show')
    parser.add_argument('--max_columns', type=int, default=10, help='time steps shown, spread evenly')
    args, rest = parser.parse_known_args(argv)
    unknown = [arg for arg in rest if not arg.startswith(model_data.OVERRIDE_PREFIX)]
    if unknown:
        parser.error(f'unrecognized arguments: {" ".join(unknown)}')
    try:
        args.channels = [int(c) for c in args.channels.split(',') if c.strip()]
    except ValueError:
        parser.error(f'--channels: expected comma-separated integers such as 0,1, found {args.channels!r}')
    return args, rest


def main(argv: Sequence[str] | None = None) -> int:
    args, overrides = parse_args(argv)
    try:
        path = visualize(
            args.checkpoint,
            args.out,
            split=args.split,
            t=args.t,
            select=args.select,
            channels=args.channels,
            max_columns=args.max_columns,
            overrides=overrides,
        )
    except (ValueError, FileNotFoundError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    print(f'wrote {path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
