"""ConvLSTM2D with the semantics of Keras's ConvLSTM2D layer: a ConvLSTMCell scanned over time.

Keras semantics (tf.keras 2 / Keras 3): gate order i, f, c, o along the last kernel axis; the input
convolution uses the layer's padding, strides and dilation; the recurrent convolution is always 'same' with
stride 1;

    i = σ(x_i + h_i)   f = σ(x_f + h_f)   c' = f·c + i·act(x_c + h_c)   o = σ(x_o + h_o)   h' = o·act(c')

with σ the recurrent activation. The four gates are one convolution of 4·filters outputs.

`ConvLSTMCell` holds this gate math, once; `ConvLSTM2D` owns the parameters (so their paths are Keras's
and the checkpoints') and runs the cell with `nn.scan` over time, under `nn.remat`. The cell's two
convolutions go through `conv.gate_convolutions`, the layer's one custom VJP (XLA:CPU differentiates a
convolution inside a scan 10-100× slower than it runs it; see conv.py); JAX differentiates the rest.
With `remat=True` the backward pass keeps only each step's x, h and c and recomputes the step; without,
it keeps the gate pre-activations z too (and recomputes only the cheap gate activations). See
docs/layer.md.

Dropout follows Keras 3 (>= 3.5): one mask per gate for the inputs (and one per gate for the recurrent
state), each drawn once per sequence and reused at every time step. tf.keras 2 in graph mode re-drew the
masks at every step; the expectation is the same, the noise is not.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from convlstm_jax.conv import GATES, ConvSpec, gate_convolutions, pair

Array = jax.Array
Initializer = Callable[..., Array]


# ---------------------------------------------------------------------------------------------- activations


@jax.custom_jvp
def hard_sigmoid(x: Array) -> Array:
    """Keras 2 / tf.keras hard sigmoid: clip(0.2·x + 0.5, 0, 1)."""
    return jnp.clip(0.2 * x + 0.5, 0.0, 1.0)


@hard_sigmoid.defjvp
def _hard_sigmoid_jvp(primals, tangents):
    # TF's clip_by_value passes the gradient where min <= y <= max, both ends inclusive: slope 0.2 at
    # x = ±2.5, where jnp.clip's derivative gives half of that.
    (x,), (dx,) = primals, tangents
    y = 0.2 * x + 0.5
    slope = jnp.where((y >= 0.0) & (y <= 1.0), 0.2, 0.0).astype(x.dtype)
    return jnp.clip(y, 0.0, 1.0), slope * dx


def hard_sigmoid_keras3(x: Array) -> Array:
    """Keras 3 hard sigmoid: relu6(x + 3) / 6."""
    return jax.nn.relu6(x + 3.0) / 6.0


def _linear(x: Array) -> Array:
    return x


ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    'tanh': jnp.tanh,
    'sigmoid': jax.nn.sigmoid,
    'hard_sigmoid': hard_sigmoid,
    'hard_sigmoid_keras3': hard_sigmoid_keras3,
    'relu': jax.nn.relu,
    'linear': _linear,
}


def get_activation(name: str) -> Callable[[Array], Array]:
    """The activation function called `name` (Keras names; `hard_sigmoid` is the Keras 2 formula)."""
    try:
        return ACTIVATIONS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f'unknown activation {name!r}: expected one of {", ".join(sorted(ACTIVATIONS))}'
        ) from None


# --------------------------------------------------------------------------------------------- initializers


def keras_glorot_uniform() -> Initializer:
    """glorot_uniform with Keras's fans for a conv kernel (kh, kw, in, out): kh·kw·in and kh·kw·out."""
    return jax.nn.initializers.variance_scaling(1.0, 'fan_avg', 'uniform', in_axis=-2, out_axis=-1)


def keras_orthogonal() -> Initializer:
    """Keras orthogonal: an orthogonal matrix of the kernel flattened to (prod(shape[:-1]), shape[-1])."""
    return jax.nn.initializers.orthogonal(column_axis=-1)


def lstm_bias_init(filters: int, unit_forget_bias: bool) -> Initializer:
    """Zeros, with ones on the forget gate's slice where `unit_forget_bias` (Keras's default)."""

    def init(key: Array, shape: Sequence[int], dtype: Any = jnp.float32) -> Array:
        del key
        bias = jnp.zeros(shape, dtype)
        return bias.at[filters : 2 * filters].set(1.0) if unit_forget_bias else bias

    return init


# ------------------------------------------------------------------------------------------------ the cell


class ConvLSTMCell(nn.Module):
    """One ConvLSTM time step, (h, c), x_t → (h', c'), h' (with `keep_gates`: i, f, c̃, o, c', h').

    It has no variables: ConvLSTM2D passes its kernels and bias in. `input_masks` (4, B, H, W, C) and
    `recurrent_masks` (4, B, H', W', F) are the per-gate dropout masks, or None.
    """

    activation: str = 'tanh'
    recurrent_activation: str = 'hard_sigmoid'
    conv: ConvSpec = ConvSpec()
    keep_gates: bool = False

    def __call__(
        self,
        carry: tuple[Array, Array],
        x: Array,
        kernel: Array,
        recurrent_kernel: Array,
        bias: Array | None = None,
        input_masks: Array | None = None,
        recurrent_masks: Array | None = None,
    ):
        h, c = carry
        if input_masks is not None:
            x = x[None] * input_masks
        h_in = h if recurrent_masks is None else h[None] * recurrent_masks
        z = gate_convolutions(self.conv, x, h_in, kernel, recurrent_kernel)
        if bias is not None:
            z = z + bias
        # The one value the backward pass keeps when remat is off (ConvLSTM2D's remat policy).
        z = checkpoint_name(z, 'z')
        act, rec_act = get_activation(self.activation), get_activation(self.recurrent_activation)
        z_i, z_f, z_c, z_o = jnp.split(z, GATES, axis=-1)
        i, f, candidate, o = rec_act(z_i), rec_act(z_f), act(z_c), rec_act(z_o)
        c = f * c + i * candidate
        h = o * act(c)
        return (h, c), ((i, f, candidate, o, c, h) if self.keep_gates else h)

    def initialize_carry(self, input_shape: Sequence[int], kernel_hw: tuple[int, int], filters: int):
        """Zero (h, c) for one step's input of shape (B, H, W, C)."""
        batch, height, width = input_shape[:3]
        zeros = jnp.zeros((batch, *self.conv.output_hw(height, width, kernel_hw), filters), jnp.float32)
        return zeros, zeros

    @classmethod
    def of(cls, layer: ConvLSTM2D, keep_gates: bool = False) -> ConvLSTMCell:
        """The cell that `layer` scans (unbound; call it with `.apply({}, ...)`)."""
        return cls(layer.activation, layer.recurrent_activation, layer.conv_spec(), keep_gates, parent=None)


# ------------------------------------------------------------------------------------------------ the layer


class ConvLSTM2D(nn.Module):
    """Keras ConvLSTM2D (channels last). Input (B, T, H, W, C) float; see the module docstring."""

    filters: int
    kernel_size: int | Sequence[int] = (3, 3)
    strides: int | Sequence[int] = (1, 1)
    padding: str = 'valid'
    dilation_rate: int | Sequence[int] = (1, 1)
    activation: str = 'tanh'
    recurrent_activation: str = 'hard_sigmoid'
    use_bias: bool = True
    unit_forget_bias: bool = True
    kernel_init: Initializer = dataclasses.field(default_factory=keras_glorot_uniform)
    recurrent_init: Initializer = dataclasses.field(default_factory=keras_orthogonal)
    bias_init: Initializer | None = None  # None: zeros (+ unit forget bias)
    dropout: float | Array = 0.0  # an array: a population member's own rate (population.py)
    recurrent_dropout: float | Array = 0.0
    return_sequences: bool = False
    return_state: bool = False
    go_backwards: bool = False
    compute_dtype: Any = jnp.float32  # the convolutions' dtype; state and accumulation stay float32
    remat: bool = False  # keep only x, h and c per step and recompute the step in the backward pass
    unroll: int = 1  # time steps per scan iteration

    def conv_spec(self) -> ConvSpec:
        """The cell's convolution geometry and dtype."""
        return ConvSpec(
            pair(self.strides, 'strides'),
            self.padding,
            pair(self.dilation_rate, 'dilation_rate'),
            self.compute_dtype,
        )

    def _check_config(self) -> None:
        get_activation(self.activation)
        get_activation(self.recurrent_activation)
        if self.padding not in ('valid', 'same'):
            raise ValueError(f"padding must be 'valid' or 'same', got {self.padding!r}")
        for name in ('dropout', 'recurrent_dropout'):
            if _is_static(getattr(self, name)) and not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f'{name} must be in [0, 1), got {getattr(self, name)!r}')
        if self.filters < 1:
            raise ValueError(f'filters must be positive, got {self.filters!r}')

    def _check_input(self, x: Array) -> None:
        if x.ndim != 5:
            raise ValueError(
                f'ConvLSTM2D expects input of rank 5 (batch, time, height, width, channels), '
                f'got shape {x.shape}'
            )
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f'ConvLSTM2D expects a floating-point input, got {x.dtype}')
        if self.has_variable('params', 'kernel'):
            expected = self.get_variable('params', 'kernel').shape[2]
            if x.shape[-1] != expected:
                raise ValueError(
                    f'ConvLSTM2D was built for {expected} input channels, got input shape {x.shape}'
                )

    @nn.compact
    def __call__(
        self, x: Array, initial_state: tuple[Array, Array] | None = None, *, deterministic: bool = True
    ):
        self._check_config()
        self._check_input(x)
        kernel_hw = pair(self.kernel_size, 'kernel_size')
        units = GATES * self.filters
        kernel = self.param('kernel', self.kernel_init, (*kernel_hw, x.shape[-1], units), jnp.float32)
        recurrent_kernel = self.param(
            'recurrent_kernel', self.recurrent_init, (*kernel_hw, self.filters, units), jnp.float32
        )
        bias = None
        if self.use_bias:
            bias_init = self.bias_init or lstm_bias_init(self.filters, self.unit_forget_bias)
            bias = self.param('bias', bias_init, (units,), jnp.float32)

        frames = jnp.swapaxes(x.astype(jnp.float32), 0, 1)  # time-major (T, B, H, W, C)
        if self.go_backwards:
            frames = frames[::-1]
        zeros = ConvLSTMCell.of(self).initialize_carry(frames.shape[1:], kernel_hw, self.filters)
        h0, c0 = self._initial_state(initial_state, zeros)
        input_masks = recurrent_masks = None
        if _may_drop(self.dropout) and not deterministic:
            input_masks = self._dropout_masks(self.dropout, (GATES, *frames.shape[1:]))
        if _may_drop(self.recurrent_dropout) and not deterministic:
            recurrent_masks = self._dropout_masks(self.recurrent_dropout, (GATES, *h0.shape))

        # Without remat JAX would keep every gate intermediate of every step (1.7× the memory in a prototype):
        # keep z only, and recompute the cheap activations from it.
        policy = None if self.remat else jax.checkpoint_policies.save_only_these_names('z')
        scan = nn.scan(
            nn.remat(ConvLSTMCell, policy=policy, prevent_cse=False),
            variable_broadcast='params',
            split_rngs={'params': False},
            in_axes=(0, *[nn.broadcast] * 5),
            out_axes=0,
            unroll=self.unroll,
        )
        cell = scan(self.activation, self.recurrent_activation, self.conv_spec(), name='cell')
        (h_last, c_last), hs = cell(
            (h0, c0), frames, kernel, recurrent_kernel, bias, input_masks, recurrent_masks
        )
        out = jnp.swapaxes(hs, 0, 1) if self.return_sequences else h_last
        return (out, h_last, c_last) if self.return_state else out

    def _dropout_masks(self, rate: float | Array, shape: tuple[int, ...]) -> Array:
        keep = 1.0 - rate
        return jax.random.bernoulli(self.make_rng('dropout'), keep, shape).astype(jnp.float32) / keep

    def _initial_state(self, initial_state, zeros: tuple[Array, Array]) -> tuple[Array, Array]:
        """`zeros`, or the given (h, c), each (B, H_out, W_out, filters)."""
        if initial_state is None:
            return zeros
        shape = zeros[0].shape
        if len(initial_state) != 2:
            raise ValueError(f'initial_state must be a pair (h, c), got {len(initial_state)} arrays')
        for name, state in zip(('h', 'c'), initial_state, strict=True):
            if state.shape != shape:
                raise ValueError(f'initial state {name} must have shape {shape}, got {state.shape}')
        return tuple(jnp.asarray(s, jnp.float32) for s in initial_state)


def _is_static(rate: float | Array) -> bool:
    return isinstance(rate, (int, float))


def _may_drop(rate: float | Array) -> bool:
    """A rate given as an array (a population member's own, traced under vmap) always draws masks: with rate 0
    they keep everything, so the member equals a run without dropout."""
    return not _is_static(rate) or rate > 0.0
