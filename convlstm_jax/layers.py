"""ConvLSTM2D with the semantics of Keras's ConvLSTM2D layer, and a fast custom backward pass.

Keras semantics (tf.keras 2 / Keras 3): gate order i, f, c, o along the last kernel axis; the input
convolution uses the layer's padding, strides and dilation; the recurrent convolution is always 'same' with
stride 1;

    i = σ(x_i + h_i)   f = σ(x_f + h_f)   c' = f·c + i·act(x_c + h_c)   o = σ(x_o + h_o)   h' = o·act(c')

with σ the recurrent activation. The four gates are one convolution of 4·filters outputs.

Two implementations of the recurrence compute the same numbers:
- `implementation='fast'` (default): `frame_recurrence`, a `jax.custom_vjp`. Each step convolves its frame
  and h_{t-1} with XLA's convolution inside the scan (on XLA:CPU this beats one im2col product over all
  frames: those patches and the (T, B, H, W, 4F) result cost more memory traffic than they save). Its
  backward pass is one reverse scan: gate gradients dz_t, then dh_{t-1} and dx_t as forward convolutions with
  the flipped kernels, and every weight gradient accumulated as im2col patches × dz_t. XLA:CPU differentiates
  a convolution inside a scan 10-100× slower than it runs it forward; this path never asks it to. With
  `remat=True` only x, h and c are kept for the backward pass, which recomputes each step's gates (a third of
  the memory, and on XLA:CPU also faster than reading stored gates back); without, z_t is kept too.
  Input dropout (a masked copy of the input per gate) convolves all frames at once outside the scan and runs
  `recurrence`, a custom VJP of the recurrence alone (its input gradient flows through XLA's own im2col
  backward).
- `implementation='scan'`: a plain `flax.linen.scan` over XLA convolutions, differentiated by JAX; the
  reference the fast path is tested against.

Dropout follows Keras 3 (>= 3.5): one mask per gate for the inputs (and one per gate for the recurrent
state), each drawn once per sequence and reused at every time step. tf.keras 2 in graph mode re-drew the
masks at every step; the expectation is the same, the noise is not. Recurrent dropout always runs the
nn.scan recurrence (with im2col convolutions on the 'fast' setting).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

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


# ------------------------------------------------------------------------------------------- convolutions


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int | np.integer) and v >= 1 for v in pair):
        raise ValueError(f'{name} must be a positive int or a pair of them, got {value!r}')
    return int(pair[0]), int(pair[1])


def _same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow's 'SAME' padding (the extra pixel goes after)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _pad_spatial(x: Array, kernel: tuple[int, int], strides, padding: str, dilation) -> Array:
    if padding == 'valid':
        return x
    pads = [_same_padding(x.shape[i + 1], kernel[i], strides[i], dilation[i]) for i in range(2)]
    return jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))


def patches(
    x: Array, kernel: tuple[int, int], strides=(1, 1), padding: str = 'same', dilation=(1, 1)
) -> Array:
    """im2col of (N, H, W, C) → (N, Ho, Wo, kh·kw·C), ordered (dy, dx, c) like a (kh, kw, C, out) kernel."""
    x = _pad_spatial(x, kernel, strides, padding, dilation)
    height, width = x.shape[1:3]
    out_h = (height - (kernel[0] - 1) * dilation[0] - 1) // strides[0] + 1
    out_w = (width - (kernel[1] - 1) * dilation[1] - 1) // strides[1] + 1
    if out_h < 1 or out_w < 1:
        raise ValueError(
            f'input {height}x{width} is smaller than the {kernel} kernel with {padding!r} padding'
        )
    cols = []
    for dy in range(kernel[0]):
        for dx in range(kernel[1]):
            y0, x0 = dy * dilation[0], dx * dilation[1]
            limit = (
                x.shape[0],
                y0 + (out_h - 1) * strides[0] + 1,
                x0 + (out_w - 1) * strides[1] + 1,
                x.shape[3],
            )
            cols.append(jax.lax.slice(x, (0, y0, x0, 0), limit, (1, strides[0], strides[1], 1)))
    return jnp.concatenate(cols, axis=-1)


def conv2d(
    x: Array,
    kernel: Array,
    *,
    strides=(1, 1),
    padding: str = 'same',
    dilation=(1, 1),
    dtype: Any = jnp.float32,
    im2col: bool = True,
) -> Array:
    """NHWC convolution with an HWIO kernel in `dtype`, returning float32.

    `im2col`: patches × one matrix product, whose derivative JAX builds from slices and products (XLA:CPU's
    own convolution derivatives are slow); else XLA's convolution.
    """
    x, kernel = x.astype(dtype), kernel.astype(dtype)
    if im2col:
        cols = patches(x, kernel.shape[:2], strides, padding, dilation)
        flat = kernel.reshape(-1, kernel.shape[-1])
        return jnp.dot(cols, flat, preferred_element_type=jnp.float32)
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        window_strides=strides,
        padding=padding.upper(),
        rhs_dilation=dilation,
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
        preferred_element_type=jnp.float32,
    )


def conv2d_transpose(dz: Array, kernel: Array, padding: str, dtype: Any = jnp.float32) -> Array:
    """∂/∂x of a stride-1, undilated `conv2d`, as a forward convolution with the flipped kernel.

    XLA:CPU runs a convolution's own input gradient 10-100× slower than this inside a scan.
    """
    flipped = jnp.flip(kernel, (0, 1)).swapaxes(2, 3)
    # A forward padding of (lo, hi) becomes (k-1-lo, k-1-hi): 'same' pads ((k-1)//2, k//2), 'valid' none.
    pads = [(k // 2, (k - 1) // 2) if padding == 'same' else (k - 1, k - 1) for k in kernel.shape[:2]]
    return jax.lax.conv_general_dilated(
        dz.astype(dtype),
        flipped.astype(dtype),
        window_strides=(1, 1),
        padding=pads,
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
        preferred_element_type=jnp.float32,
    )


# ----------------------------------------------------------------------------------------- the recurrence


@dataclasses.dataclass(frozen=True)
class _Recurrence:
    """Static description of one recurrence: activations, recurrent conv dtype, remat and scan unrolling."""

    activation: str
    recurrent_activation: str
    dtype: Any
    remat: bool
    unroll: int

    def recurrent_conv(self, h: Array, recurrent_kernel: Array) -> Array:
        # XLA's own convolution: inside a scan its forward is fast; only its derivatives are not (see below).
        return conv2d(h, recurrent_kernel, dtype=self.dtype, im2col=False)

    def recurrent_conv_transpose(self, dz: Array, recurrent_kernel: Array) -> Array:
        """∂/∂h of the 'same' recurrent convolution, written as a forward convolution (fast inside a scan)."""
        return conv2d_transpose(dz, recurrent_kernel, 'same', self.dtype)

    def cell_vjp(self, z: Array, c_prev: Array, dh: Array, dc: Array) -> tuple[Array, Array]:
        """(dz, dc_prev) of `cell`, with the gates on their own axis: no per-gate split and concatenation,
        which XLA:CPU fuses poorly."""
        gates = z.reshape(*z.shape[:-1], 4, c_prev.shape[-1])
        gate = jax.lax.broadcasted_iota(jnp.int32, gates.shape, gates.ndim - 2)
        ones = jnp.ones_like(gates)
        act, rec_act = get_activation(self.activation), get_activation(self.recurrent_activation)
        act_value, act_slope = jax.jvp(act, (gates,), (ones,))
        rec_value, rec_slope = jax.jvp(rec_act, (gates,), (ones,))
        value = jnp.where(gate == 2, act_value, rec_value)
        slope = jnp.where(gate == 2, act_slope, rec_slope)
        i, f, g, o = (value[..., k, :] for k in range(4))
        c = f * c_prev + i * g
        act_c, act_c_slope = jax.jvp(act, (c,), (jnp.ones_like(c),))
        dc = dc + dh * o * act_c_slope
        # ∂c/∂i = g, ∂c/∂f = c_prev, ∂c/∂g = i; ∂h/∂o = act(c).
        partner = jnp.stack([g, c_prev, i, act_c], axis=-2)
        upstream = jnp.where(gate == 3, dh[..., None, :], dc[..., None, :])
        return (upstream * partner * slope).reshape(z.shape), dc * f

    def cell(self, z: Array, c_prev: Array) -> tuple[Array, Array]:
        """The LSTM update from the gate pre-activations z (…, 4F) and the previous carry."""
        act, rec_act = get_activation(self.activation), get_activation(self.recurrent_activation)
        z_i, z_f, z_c, z_o = jnp.split(z, 4, axis=-1)
        c = rec_act(z_f) * c_prev + rec_act(z_i) * act(z_c)
        return rec_act(z_o) * act(c), c


def _forward_scan(
    spec: _Recurrence,
    inputs: Array,
    recurrent_kernel: Array,
    h0: Array,
    c0: Array,
    keep_z=True,
    input_gates: Callable[[Array], Array] = lambda xz_t: xz_t,
):
    """Runs the recurrence over time-major inputs; returns hs, cs and the pre-activations zs (None unless
    `keep_z`). `input_gates` turns a step's input into its (B, H, W, 4F) input part: the identity for
    precomputed input convolutions xz."""

    def step(carry, x_t):
        h, c = carry
        z = input_gates(x_t) + spec.recurrent_conv(h, recurrent_kernel)
        h, c = spec.cell(z, c)
        return (h, c), (h, c, z if keep_z else None)

    _, (hs, cs, zs) = jax.lax.scan(step, (h0, c0), inputs, unroll=spec.unroll)
    return hs, cs, zs


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def recurrence(spec: _Recurrence, xz: Array, recurrent_kernel: Array, h0: Array, c0: Array):
    """hs (T, B, H, W, F) and the last carry c_T, driven by the time-major input-conv outputs xz."""
    hs, cs, _ = _forward_scan(spec, xz, recurrent_kernel, h0, c0, keep_z=False)
    return hs, cs[-1]


def _recurrence_fwd(spec: _Recurrence, xz, recurrent_kernel, h0, c0):
    hs, cs, zs = _forward_scan(spec, xz, recurrent_kernel, h0, c0)
    h_prev = jnp.concatenate([h0[None], hs[:-1]])
    c_prev = jnp.concatenate([c0[None], cs[:-1]])
    return (hs, cs[-1]), (zs, recurrent_kernel, h_prev, c_prev)


def _recurrence_bwd(spec: _Recurrence, residuals, cotangents):
    """Reverse scan for the gate gradients dz_t and dh_{t-1}, dc_{t-1}; then the recurrent kernel's."""
    zs, recurrent_kernel, h_prev, c_prev = residuals
    d_hs, d_c_last = cotangents

    def step(carry, inputs):
        dh_next, dc_next = carry
        z, h_prev_t, c_prev_t, dh_out_t = inputs
        dz, dc_prev = spec.cell_vjp(z, c_prev_t, dh_out_t + dh_next, dc_next)
        return (spec.recurrent_conv_transpose(dz, recurrent_kernel), dc_prev), dz

    init = (jnp.zeros_like(h_prev[0]), d_c_last)
    xs = (zs, h_prev, c_prev, d_hs)
    (dh0, dc0), dzs = jax.lax.scan(step, init, xs, reverse=True, unroll=spec.unroll)
    return dzs, _recurrent_kernel_grad(spec, h_prev, dzs, recurrent_kernel), dh0, dc0


def _recurrent_kernel_grad(spec: _Recurrence, h_prev: Array, dzs: Array, recurrent_kernel: Array) -> Array:
    """∂L/∂K_rec = Σ im2col(h_{t-1})ᵀ · dz_t as ONE matrix product over all T·B·H·W rows.

    Inside the scan, XLA:CPU's kernel gradient of a convolution runs ~50× slower than its forward; after
    it, as a product of patches, it beats XLA's own backward-filter convolution too.
    """
    frames = h_prev.reshape(-1, *h_prev.shape[2:]).astype(spec.dtype)
    cols = patches(frames, recurrent_kernel.shape[:2])
    cols = cols.reshape(-1, cols.shape[-1])
    grad = jnp.dot(
        cols.T, dzs.reshape(-1, dzs.shape[-1]).astype(spec.dtype), preferred_element_type=jnp.float32
    )
    return grad.reshape(recurrent_kernel.shape)


recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)


@dataclasses.dataclass(frozen=True)
class _InputConv:
    """Static description of the input convolution: over all frames at once (`__call__`, im2col on the
    'fast' setting) or one step's frame inside the scan (`step`, with its input gradient `transpose`)."""

    kernel_hw: tuple[int, int]
    strides: tuple[int, int]
    padding: str
    dilation: tuple[int, int]
    dtype: Any
    im2col: bool = True

    def __call__(self, x: Array, kernel: Array) -> Array:
        return self._conv(x, kernel, im2col=self.im2col)

    def _conv(self, x: Array, kernel: Array, *, im2col: bool) -> Array:
        return conv2d(
            x,
            kernel,
            strides=self.strides,
            padding=self.padding,
            dilation=self.dilation,
            dtype=self.dtype,
            im2col=im2col,
        )

    def step(self, x_t: Array, kernel: Array) -> Array:
        """One time step's convolution inside the scan.

        XLA's own convolution per step beats one im2col product over all frames (whose (T·B·H·W, k²·C)
        patches and (T, B, H, W, 4F) output cost more memory traffic than the product saves).
        """
        return self._conv(x_t, kernel, im2col=not self._transposable)

    def transpose(self, dz: Array, kernel: Array, x_t: Array) -> Array:
        """∂/∂x_t of `step` (linear in x_t): a forward convolution where one can express it."""
        if self._transposable:
            return conv2d_transpose(dz, kernel, self.padding, self.dtype)
        (dx,) = jax.linear_transpose(lambda v: self.step(v, kernel), x_t)(dz)
        return dx

    @property
    def _transposable(self) -> bool:
        return self.strides == (1, 1) and self.dilation == (1, 1)

    def output_hw(self, height: int, width: int) -> tuple[int, int]:
        if self.padding == 'same':
            return -(-height // self.strides[0]), -(-width // self.strides[1])
        sizes = []
        for size, k, stride, dilation in zip(
            (height, width), self.kernel_hw, self.strides, self.dilation, strict=True
        ):
            sizes.append((size - (k - 1) * dilation - 1) // stride + 1)
        if min(sizes) < 1:
            raise ValueError(
                f'input {height}x{width} is smaller than the {self.kernel_hw} kernel with valid padding'
            )
        return sizes[0], sizes[1]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def frame_recurrence(spec: _Recurrence, conv: _InputConv, frames, kernel, bias, recurrent_kernel, h0, c0):
    """The recurrence with its input convolution, each frame convolved inside the scan.

    frames (T, B, H, W, C) time-major. The backward pass is one reverse scan that accumulates every weight
    gradient as matrix products step by step, so no full-sequence im2col patches are ever built. With
    `spec.remat` only h and c are kept for it and each step's gates are recomputed from x_t and h_{t-1}:
    one more forward for a third of the memory. Without, the gate pre-activations z are kept too.
    """
    hs, cs, _ = _frame_scan(spec, conv, frames, kernel, bias, recurrent_kernel, h0, c0, keep_z=False)
    return hs, cs[-1]


def _frame_scan(spec: _Recurrence, conv: _InputConv, frames, kernel, bias, recurrent_kernel, h0, c0, keep_z):
    """`_forward_scan` with each step's input convolution inside the scan."""
    return _forward_scan(
        spec, frames, recurrent_kernel, h0, c0, keep_z, input_gates=lambda x_t: conv.step(x_t, kernel) + bias
    )


def _all_frames(conv: _InputConv, frames: Array, kernel: Array) -> Array:
    out = conv(frames.reshape(-1, *frames.shape[2:]), kernel)
    return out.reshape(*frames.shape[:2], *out.shape[1:])


def _frame_recurrence_fwd(spec, conv, frames, kernel, bias, recurrent_kernel, h0, c0):
    # c_{t-1} cannot be recovered from c_t backwards, so the carries are kept (F channels, like h).
    hs, cs, zs = _frame_scan(
        spec, conv, frames, kernel, bias, recurrent_kernel, h0, c0, keep_z=not spec.remat
    )
    h_prev = jnp.concatenate([h0[None], hs[:-1]])
    c_prev = jnp.concatenate([c0[None], cs[:-1]])
    return (hs, cs[-1]), (frames, kernel, bias, recurrent_kernel, h_prev, c_prev, zs)


def _patch_grad(x: Array, dz: Array, kernel_shape, **conv_kw) -> Array:
    cols = patches(x, kernel_shape[:2], **conv_kw)
    grad = jnp.dot(
        cols.reshape(-1, cols.shape[-1]).T, dz.reshape(-1, dz.shape[-1]), preferred_element_type=jnp.float32
    )
    return grad.reshape(kernel_shape)


def _frame_recurrence_bwd(spec, conv, residuals, cotangents):
    frames, kernel, bias, recurrent_kernel, h_prev, c_prev, zs = residuals
    d_hs, d_c_last = cotangents
    conv_kw = dict(strides=conv.strides, padding=conv.padding, dilation=conv.dilation)

    def step(carry, inputs):
        dh_next, dc_next, d_kernel, d_recurrent, d_bias = carry
        x_t, h_prev_t, c_prev_t, dh_out_t, z = inputs
        if z is None:
            z = conv.step(x_t, kernel) + bias + spec.recurrent_conv(h_prev_t, recurrent_kernel)
        dz, dc_prev = spec.cell_vjp(z, c_prev_t, dh_out_t + dh_next, dc_next)
        dh_prev = spec.recurrent_conv_transpose(dz, recurrent_kernel)
        d_kernel = d_kernel + _patch_grad(
            x_t.astype(conv.dtype), dz.astype(conv.dtype), kernel.shape, **conv_kw
        )
        d_recurrent = d_recurrent + _patch_grad(
            h_prev_t.astype(spec.dtype), dz.astype(spec.dtype), recurrent_kernel.shape
        )
        dx_t = conv.transpose(dz, kernel, x_t)
        return (dh_prev, dc_prev, d_kernel, d_recurrent, d_bias + jnp.sum(dz, axis=(0, 1, 2))), dx_t

    init = (
        jnp.zeros_like(h_prev[0]),
        d_c_last,
        jnp.zeros_like(kernel),
        jnp.zeros_like(recurrent_kernel),
        jnp.zeros_like(bias),
    )
    xs = (frames, h_prev, c_prev, d_hs, zs)
    (dh0, dc0, d_kernel, d_recurrent, d_bias), d_frames = jax.lax.scan(
        step, init, xs, reverse=True, unroll=spec.unroll
    )
    return d_frames, d_kernel, d_bias, d_recurrent, dh0, dc0


frame_recurrence.defvjp(_frame_recurrence_fwd, _frame_recurrence_bwd)


def _masked_recurrent_conv(
    spec: _Recurrence, h: Array, recurrent_kernel: Array, masks: Array | None
) -> Array:
    """The recurrent convolution; with recurrent dropout each gate sees its own masked copy of h."""
    if masks is None:
        return spec.recurrent_conv(h, recurrent_kernel)
    gate_kernels = jnp.split(recurrent_kernel, 4, axis=-1)
    return jnp.concatenate([spec.recurrent_conv(h * masks[g], gate_kernels[g]) for g in range(4)], axis=-1)


def _scan_step(spec: _Recurrence, module: nn.Module, carry, xz_t, recurrent_kernel, masks):
    del module  # The cell has no variables of its own: the kernel comes in broadcast.

    def update(carry, xz_t, recurrent_kernel, masks):
        h, c = carry
        return spec.cell(xz_t + _masked_recurrent_conv(spec, h, recurrent_kernel, masks), c)

    if spec.remat:
        update = jax.checkpoint(update)
    h, c = update(carry, xz_t, recurrent_kernel, masks)
    return (h, c), (h, c)


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
    dropout: float = 0.0
    recurrent_dropout: float = 0.0
    return_sequences: bool = False
    return_state: bool = False
    go_backwards: bool = False
    compute_dtype: Any = jnp.float32
    remat: bool = False  # 'fast': recompute the gates in the backward pass; 'scan': jax.checkpoint per step
    unroll: int = 1
    implementation: str = 'fast'  # 'fast' (custom VJP, im2col) | 'scan' (nn.scan over XLA convolutions)

    def _check_config(self) -> None:
        get_activation(self.activation)
        get_activation(self.recurrent_activation)
        if self.padding not in ('valid', 'same'):
            raise ValueError(f"padding must be 'valid' or 'same', got {self.padding!r}")
        if self.implementation not in ('fast', 'scan'):
            raise ValueError(f"implementation must be 'fast' or 'scan', got {self.implementation!r}")
        for name in ('dropout', 'recurrent_dropout'):
            if not 0.0 <= getattr(self, name) < 1.0:
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
        kernel_hw = _pair(self.kernel_size, 'kernel_size')
        strides = _pair(self.strides, 'strides')
        dilation = _pair(self.dilation_rate, 'dilation_rate')
        units = 4 * self.filters
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
        fast = self.implementation == 'fast'
        conv = _InputConv(kernel_hw, strides, self.padding, dilation, self.compute_dtype, im2col=fast)
        h0, c0 = self._initial_state(initial_state, (x.shape[0], *conv.output_hw(*x.shape[2:4])))
        spec = _Recurrence(
            self.activation, self.recurrent_activation, self.compute_dtype, self.remat, self.unroll
        )
        input_dropout = self.dropout > 0.0 and not deterministic
        recurrent_dropout = self.recurrent_dropout > 0.0 and not deterministic

        if fast and not (input_dropout or recurrent_dropout):
            bias_or_zeros = jnp.zeros((units,), jnp.float32) if bias is None else bias
            hs, c_last = frame_recurrence(spec, conv, frames, kernel, bias_or_zeros, recurrent_kernel, h0, c0)
        else:
            xz = self._input_conv(conv, frames, kernel, input_dropout)
            if bias is not None:
                xz = xz + bias
            if fast and not recurrent_dropout:
                hs, c_last = recurrence(spec, xz, recurrent_kernel, h0, c0)
            else:
                hs, c_last = self._scan(spec, xz, recurrent_kernel, h0, c0, recurrent_dropout)

        out = jnp.swapaxes(hs, 0, 1) if self.return_sequences else hs[-1]
        return (out, hs[-1], c_last) if self.return_state else out

    def _input_conv(self, conv: _InputConv, frames: Array, kernel: Array, dropout: bool) -> Array:
        """The input convolution of all T·B frames at once; with dropout, one masked copy per gate."""
        if not dropout:
            return _all_frames(conv, frames, kernel)
        masks = self._dropout_masks(self.dropout, (4, *frames.shape[1:]))
        gate_kernels = jnp.split(kernel, 4, axis=-1)
        return jnp.concatenate(
            [_all_frames(conv, frames * masks[g], gate_kernels[g]) for g in range(4)], axis=-1
        )

    def _dropout_masks(self, rate: float, shape: tuple[int, ...]) -> Array:
        keep = 1.0 - rate
        return jax.random.bernoulli(self.make_rng('dropout'), keep, shape).astype(jnp.float32) / keep

    def _initial_state(self, initial_state, spatial: tuple[int, ...]) -> tuple[Array, Array]:
        """Zeros, or the given (h, c), each (B, H_out, W_out, filters)."""
        shape = (*spatial, self.filters)
        if initial_state is None:
            zeros = jnp.zeros(shape, jnp.float32)
            return zeros, zeros
        if len(initial_state) != 2:
            raise ValueError(f'initial_state must be a pair (h, c), got {len(initial_state)} arrays')
        for name, state in zip(('h', 'c'), initial_state, strict=True):
            if state.shape != shape:
                raise ValueError(f'initial state {name} must have shape {shape}, got {state.shape}')
        return tuple(jnp.asarray(s, jnp.float32) for s in initial_state)

    def _scan(self, spec: _Recurrence, xz, recurrent_kernel, h0, c0, use_dropout: bool):
        """The reference recurrence: nn.scan over time, differentiated by JAX."""
        masks = self._dropout_masks(self.recurrent_dropout, (4, *h0.shape)) if use_dropout else None
        scan = nn.scan(
            functools.partial(_scan_step, spec),
            variable_broadcast='params',
            split_rngs={'params': False},
            in_axes=(0, nn.broadcast, nn.broadcast),
            out_axes=0,
            unroll=self.unroll,
        )
        _, (hs, cs) = scan(self, (h0, c0), xz, recurrent_kernel, masks)
        return hs, cs[-1]
