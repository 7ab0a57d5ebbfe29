"""A look inside the ConvLSTM for one clip (the evaluation's plots live in convlstm_jax/evaluate/plots.py).

    python -m convlstm_jax.visualize --checkpoint DIR --split test --t INDEX --out FILE.png

draws, for the clip ending at frame t, its input time-channels, and per time step the gates i, f, c̃, o,
the cell state and the hidden state of chosen channels of each ConvLSTM layer, and the saliency (gradient
of the logit with respect to the input). Figures are drawn with matplotlib's object API on the Agg canvas
(convlstm_jax/plotting.py), so nothing here touches pyplot's global state or needs a display.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

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
    member: int | str | None = None,
    channels: Sequence[int] = (0, 1),
    max_columns: int = 10,
    data_config: Any = None,
) -> pathlib.Path:
    """Draws the clip ending at frame t of `split` through the model of `checkpoint` into a PNG.
    `data_config` (config.data) defaults to the data the model was trained on (cli.model_config); `member`
    picks one member of a population (checkpoints.load_model)."""
    from convlstm_jax import checkpoints, cli, models
    from convlstm_jax.data import clips, dataset, sources

    sources.check_split_name(split)
    if data_config is None:
        data_config = cli.model_config(checkpoint).data
    spec, variables = checkpoints.load_model(checkpoint, select=select, member=member)
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
        f'ŷ = {probability:.3f}  ({checkpoint}{_member_note(spec)})'
    )
    figure = clip_figure(clip, activations, gradient, channels=channels, max_columns=max_columns, title=title)
    return save_figure(figure, out)


def _member_note(spec: dict) -> str:
    return f', member {spec["member"]}' if 'member' in spec else ''


def define_flags(flag_values: Any, argv: Sequence[str]) -> None:
    """The options of the command, in `flag_values` (see cli.run)."""
    from absl import flags

    from convlstm_jax import cli
    from convlstm_jax import config as config_lib

    config_lib.define_config_flag(from_workdir=True, flag_values=flag_values, argv=argv)
    cli.define_common_flags(flag_values)
    cli.define_checkpoint_flags(flag_values)
    for name, default, text in (
        ('checkpoint', None, 'Model directory, training workdir or step directory.'),
        ('split', 'test', 'Split the frame belongs to: train | validation | test.'),
        ('out', None, 'PNG to write.'),
        ('channels', '0,1', 'Comma-separated channels of each layer to show.'),
    ):
        flags.DEFINE_string(name, default, text, flag_values=flag_values)
    flags.DEFINE_integer(
        't', None, 'Target frame index of the clip (its last frame).', flag_values=flag_values
    )
    flags.DEFINE_integer(
        'max_columns', 10, 'Time steps shown, spread evenly.', lower_bound=1, flag_values=flag_values
    )
    flags.mark_flags_as_required(['checkpoint', 't', 'out'], flag_values=flag_values)


def run(f: Any) -> int:
    from convlstm_jax import cli

    try:
        channels = [int(c) for c in f.channels.split(',') if c.strip()]
    except ValueError:
        sys.exit(f'error: --channels: expected comma-separated integers such as 0,1, found {f.channels!r}')
    try:
        config = cli.saved_model_start(f, 1, 'visualizing')  # one clip: one device
        path = visualize(
            f.checkpoint,
            f.out,
            split=f.split,
            t=f.t,
            select=f.select,
            member=f.member,
            channels=channels,
            max_columns=f.max_columns,
            data_config=config.data,
        )
    except (ValueError, FileNotFoundError) as e:  # a corrupt checkpoint too (checkpoints.CheckpointError)
        print(f'error: {e}', file=sys.stderr)
        return 2
    print(f'wrote {path}')
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The command with `argv` (the arguments, without the program name; default sys.argv[1:])."""
    from convlstm_jax import cli

    return cli.run(run, __doc__, define_flags, argv)


if __name__ == '__main__':
    sys.exit(main())
