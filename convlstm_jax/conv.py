"""The ConvLSTM cell's two convolutions (input and recurrent) and their one custom VJP.

Why a custom VJP: on XLA:CPU the derivative of a convolution inside a `lax.scan` (the time loop) runs
10-100× slower than the convolution itself. `gate_convolutions` keeps JAX from ever differentiating one:
its backward pass writes the input gradients as forward convolutions with the flipped kernels and the
weight gradients as im2col patches × dz, one matrix product each. Everything else in the cell (the gates)
is differentiated by JAX.

Strided or dilated input convolutions have no flipped-kernel form here: they run as im2col patches × one
matrix product, whose input gradient JAX transposes from slices (XLA's path, slower inside the scan).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

GATES = 4  # i, f, c, o: the kernels' last axis holds them side by side, `filters` channels each


def pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    """(value, value) for an int, else the pair itself; positive ints only."""
    values = (value, value) if isinstance(value, int | np.integer) else tuple(value)
    if len(values) != 2 or not all(isinstance(v, int | np.integer) and v >= 1 for v in values):
        raise ValueError(f'{name} must be a positive int or a pair of them, got {value!r}')
    return int(values[0]), int(values[1])


def _same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow's 'SAME' padding (the extra pixel goes after)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def patches(
    x: Array, kernel: tuple[int, int], strides=(1, 1), padding: str = 'same', dilation=(1, 1)
) -> Array:
    """im2col of (N, H, W, C) → (N, Ho, Wo, kh·kw·C), ordered (dy, dx, c) like a (kh, kw, C, out) kernel."""
    if padding == 'same':
        pads = [_same_padding(x.shape[i + 1], kernel[i], strides[i], dilation[i]) for i in range(2)]
        x = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
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


@dataclasses.dataclass(frozen=True)
class ConvSpec:
    """The input convolution's geometry and the dtype both convolutions compute in (results are float32).

    The recurrent convolution is always 'same', stride 1, undilated (Keras).
    """

    strides: tuple[int, int] = (1, 1)
    padding: str = 'valid'
    dilation: tuple[int, int] = (1, 1)
    dtype: Any = jnp.float32

    @property
    def transposable(self) -> bool:
        """Whether the input convolution's gradient has the flipped-kernel form (stride 1, undilated)."""
        return self.strides == (1, 1) and self.dilation == (1, 1)

    def output_hw(self, height: int, width: int, kernel_hw: tuple[int, int]) -> tuple[int, int]:
        if self.padding == 'same':
            return -(-height // self.strides[0]), -(-width // self.strides[1])
        sizes = [
            (size - (k - 1) * d - 1) // s + 1
            for size, k, s, d in zip((height, width), kernel_hw, self.strides, self.dilation, strict=True)
        ]
        if min(sizes) < 1:
            raise ValueError(
                f'input {height}x{width} is smaller than the {kernel_hw} kernel with valid padding'
            )
        return sizes[0], sizes[1]

    def input_conv(self, x: Array, kernel: Array) -> Array:
        """The input convolution of (N, H, W, C): XLA's where it has a flipped-kernel transpose, else im2col
        (whose derivative JAX builds from slices and a product, faster than XLA:CPU's)."""
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        if self.transposable:
            return _xla_conv(x, kernel, self.padding)
        cols = patches(x, kernel.shape[:2], self.strides, self.padding, self.dilation)
        return jnp.dot(cols, kernel.reshape(-1, kernel.shape[-1]), preferred_element_type=jnp.float32)

    def recurrent_conv(self, h: Array, kernel: Array) -> Array:
        return _xla_conv(h.astype(self.dtype), kernel.astype(self.dtype), 'same')

    def input_conv_transpose(self, dz: Array, kernel: Array, x: Array) -> Array:
        """∂/∂x of `input_conv` given dz (its cotangent)."""
        if self.transposable:
            return conv_transpose(dz, kernel, self.padding, self.dtype)
        (dx,) = jax.linear_transpose(lambda v: self.input_conv(v, kernel), x)(dz.astype(jnp.float32))
        return dx

    def recurrent_conv_transpose(self, dz: Array, kernel: Array, h: Array) -> Array:
        """∂/∂h of `recurrent_conv` given dz."""
        del h  # linear: only its shape matters, which dz and the kernel fix
        return conv_transpose(dz, kernel, 'same', self.dtype)

    def input_kernel_grad(self, x: Array, dz: Array, kernel_shape: Sequence[int]) -> Array:
        return _patch_product(x, dz, kernel_shape, self.dtype, self.strides, self.padding, self.dilation)

    def recurrent_kernel_grad(self, h: Array, dz: Array, kernel_shape: Sequence[int]) -> Array:
        return _patch_product(h, dz, kernel_shape, self.dtype)


def _xla_conv(x: Array, kernel: Array, padding: str | list[tuple[int, int]]) -> Array:
    """XLA's stride-1 convolution of (N, H, W, C) with (kh, kw, C, F), with a batching rule for a population
    (population.py), whose members vmap over their own kernels.

    JAX would batch a vmapped kernel into a grouped convolution, which XLA:CPU runs several times slower than
    the members' convolutions one after another (6× at the :quick shape, 4 members). So: a batched input
    with a shared kernel folds the members into N; a shared input (the clips) with member kernels is one
    convolution with the kernels side by side; member inputs with member kernels run member by member.
    """
    padding = padding.upper() if isinstance(padding, str) else padding

    @jax.custom_batching.custom_vmap
    def conv(x, kernel):
        return jax.lax.conv_general_dilated(
            x,
            kernel,
            window_strides=(1, 1),
            padding=padding,
            dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
            preferred_element_type=jnp.float32,
        )

    @conv.def_vmap
    def conv_members(members, batched, x, kernel):
        x_batched, kernel_batched = batched
        if x_batched and kernel_batched:
            return jax.lax.map(lambda pair: conv(*pair), (x, kernel)), True
        if x_batched:
            out = conv(x.reshape(-1, *x.shape[2:]), kernel)
            return out.reshape(members, -1, *out.shape[1:]), True
        side_by_side = jnp.moveaxis(kernel, 0, -2).reshape(*kernel.shape[1:-1], -1)
        out = conv(x, side_by_side)
        return jnp.moveaxis(out.reshape(*out.shape[:-1], members, -1), -2, 0), True

    return conv(x, kernel)


def conv_transpose(dz: Array, kernel: Array, padding: str, dtype: Any = jnp.float32) -> Array:
    """∂/∂x of a stride-1, undilated convolution, as a forward convolution with the flipped kernel."""
    flipped = jnp.flip(kernel, (0, 1)).swapaxes(2, 3)
    # A forward padding of (lo, hi) becomes (k-1-lo, k-1-hi): 'same' pads ((k-1)//2, k//2), 'valid' none.
    pads = [(k // 2, (k - 1) // 2) if padding == 'same' else (k - 1, k - 1) for k in kernel.shape[:2]]
    return _xla_conv(dz.astype(dtype), flipped.astype(dtype), pads)


def _patch_product(x: Array, dz: Array, kernel_shape, dtype, strides=(1, 1), padding='same', dilation=(1, 1)):
    """A convolution's kernel gradient as im2col(x)ᵀ · dz, one matrix product over all N·Ho·Wo rows."""
    cols = patches(x.astype(dtype), tuple(kernel_shape[:2]), strides, padding, dilation)
    grad = jnp.dot(
        cols.reshape(-1, cols.shape[-1]).T,
        dz.reshape(-1, dz.shape[-1]).astype(dtype),
        preferred_element_type=jnp.float32,
    )
    return grad.reshape(kernel_shape)


def _per_gate(array: Array, shared_ndim: int) -> bool:
    """Whether `array` holds one input per gate (a leading axis of 4, as dropout makes) or one shared."""
    return array.ndim == shared_ndim + 1


def _convolve(conv, inputs: Array, kernel: Array) -> Array:
    """conv(inputs, kernel) for a shared input, or gate by gate for per-gate inputs (4, N, H, W, C)."""
    if not _per_gate(inputs, 4):
        return conv(inputs, kernel)
    kernels = jnp.split(kernel, GATES, axis=-1)
    return jnp.concatenate([conv(inputs[g], kernels[g]) for g in range(GATES)], axis=-1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def gate_convolutions(spec: ConvSpec, x: Array, h: Array, kernel: Array, recurrent_kernel: Array) -> Array:
    """The gate pre-activations without bias, input_conv(x) + recurrent_conv(h): (N, Ho, Wo, 4F) float32.

    x (N, H, W, C) and h (N, Ho, Wo, F) are shared by the four gates, or (4, N, …) with one per gate (the
    dropout-masked copies), each then convolved with its gate's slice of the kernel.
    """
    return _convolve(spec.input_conv, x, kernel) + _convolve(spec.recurrent_conv, h, recurrent_kernel)


def _gate_convolutions_fwd(spec: ConvSpec, x, h, kernel, recurrent_kernel):
    # The inputs are the residuals: nothing is computed here that the backward pass needs.
    return gate_convolutions(spec, x, h, kernel, recurrent_kernel), (x, h, kernel, recurrent_kernel)


def _gate_convolutions_bwd(spec: ConvSpec, residuals, dz: Array):
    x, h, kernel, recurrent_kernel = residuals
    dx, d_kernel = _grads(spec.input_conv_transpose, spec.input_kernel_grad, x, kernel, dz)
    dh, d_recurrent = _grads(
        spec.recurrent_conv_transpose, spec.recurrent_kernel_grad, h, recurrent_kernel, dz
    )
    # In bfloat16 the transposed convolutions return float32: cotangents must match their primals' dtypes.
    return (
        dx.astype(x.dtype),
        dh.astype(h.dtype),
        d_kernel.astype(kernel.dtype),
        d_recurrent.astype(recurrent_kernel.dtype),
    )


def _grads(transpose, kernel_grad, inputs: Array, kernel: Array, dz: Array) -> tuple[Array, Array]:
    """(∂/∂inputs, ∂/∂kernel) of one convolution, shared or gate by gate as `_convolve` ran it."""
    if not _per_gate(inputs, 4):
        return transpose(dz, kernel, inputs), kernel_grad(inputs, dz, kernel.shape)
    kernels, dzs = jnp.split(kernel, GATES, axis=-1), jnp.split(dz, GATES, axis=-1)
    d_inputs = jnp.stack([transpose(dzs[g], kernels[g], inputs[g]) for g in range(GATES)])
    d_kernel = jnp.concatenate([kernel_grad(inputs[g], dzs[g], kernels[g].shape) for g in range(GATES)], -1)
    return d_inputs, d_kernel


gate_convolutions.defvjp(_gate_convolutions_fwd, _gate_convolutions_bwd)
