"""The reference ConvLSTM2D the product is checked against: a plain `nn.scan` over `lax` convolutions,
differentiated by JAX, with the gate math written out again here.

Same fields, parameter names and dropout masks (drawn from the same 'dropout' stream in the same order) as
`convlstm_jax.layers.ConvLSTM2D`, so one set of params and rngs drives both. Slow on XLA:CPU in training
(JAX differentiates the convolutions inside the scan): tests use tiny shapes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from convlstm_jax.layers import get_activation, keras_glorot_uniform, keras_orthogonal, lstm_bias_init


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _conv(x, kernel, dtype, strides=(1, 1), padding='same', dilation=(1, 1)):
    return jax.lax.conv_general_dilated(
        x.astype(dtype),
        kernel.astype(dtype),
        window_strides=strides,
        padding=padding.upper(),
        rhs_dilation=dilation,
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
        preferred_element_type=jnp.float32,
    )


def _gate_conv(x, kernel, masks, conv):
    """conv(x, kernel), or with dropout masks (4, …) each gate's kernel slice on its own masked copy."""
    if masks is None:
        return conv(x, kernel)
    kernels = jnp.split(kernel, 4, axis=-1)
    return jnp.concatenate([conv(x * masks[g], kernels[g]) for g in range(4)], axis=-1)


class ReferenceConvLSTM2D(nn.Module):
    filters: int
    kernel_size: int | Sequence[int] = (3, 3)
    strides: int | Sequence[int] = (1, 1)
    padding: str = 'valid'
    dilation_rate: int | Sequence[int] = (1, 1)
    activation: str = 'tanh'
    recurrent_activation: str = 'hard_sigmoid'
    use_bias: bool = True
    dropout: float = 0.0
    recurrent_dropout: float = 0.0
    return_sequences: bool = False
    return_state: bool = False
    go_backwards: bool = False
    compute_dtype: Any = jnp.float32
    remat: bool = False  # jax.checkpoint around each step
    unroll: int = 1

    @nn.compact
    def __call__(self, x, initial_state=None, *, deterministic: bool = True):
        kernel_hw, units = _pair(self.kernel_size), 4 * self.filters
        kernel = self.param('kernel', keras_glorot_uniform(), (*kernel_hw, x.shape[-1], units))
        recurrent_kernel = self.param(
            'recurrent_kernel', keras_orthogonal(), (*kernel_hw, self.filters, units)
        )
        bias = self.param('bias', lstm_bias_init(self.filters, True), (units,)) if self.use_bias else 0.0
        frames = jnp.swapaxes(x.astype(jnp.float32), 0, 1)
        if self.go_backwards:
            frames = frames[::-1]

        def input_conv(v, k):
            return _conv(
                v, k, self.compute_dtype, _pair(self.strides), self.padding, _pair(self.dilation_rate)
            )

        if initial_state is None:
            shape = jax.eval_shape(lambda: input_conv(frames[0], kernel)).shape[:-1]
            initial_state = (jnp.zeros((*shape, self.filters)),) * 2

        def masks(rate, shape):
            if rate == 0.0 or deterministic:
                return None
            return jax.random.bernoulli(self.make_rng('dropout'), 1.0 - rate, shape) / (1.0 - rate)

        input_masks = masks(self.dropout, (4, *frames.shape[1:]))
        recurrent_masks = masks(self.recurrent_dropout, (4, *initial_state[0].shape))
        act, rec_act = get_activation(self.activation), get_activation(self.recurrent_activation)

        def step(module, carry, x_t):
            del module  # no variables: the kernels are closed over

            def update(carry, x_t):
                h, c = carry
                z = _gate_conv(x_t, kernel, input_masks, input_conv) + bias
                z = z + _gate_conv(
                    h, recurrent_kernel, recurrent_masks, lambda v, k: _conv(v, k, self.compute_dtype)
                )
                i, f, g, o = jnp.split(z, 4, axis=-1)
                c = rec_act(f) * c + rec_act(i) * act(g)
                return rec_act(o) * act(c), c

            h, c = (jax.checkpoint(update) if self.remat else update)(carry, x_t)
            return (h, c), h

        scan = nn.scan(step, variable_broadcast='params', split_rngs={'params': False}, unroll=self.unroll)
        (h_last, c_last), hs = scan(self, tuple(initial_state), frames)
        out = jnp.swapaxes(hs, 0, 1) if self.return_sequences else h_last
        return (out, h_last, c_last) if self.return_state else out
