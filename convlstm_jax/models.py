"""The ConvLSTM classifier assembled from `config.model`, with Keras-exact BatchNorm.

ConvLSTM2D layers (return_sequences on all but the last) with a per-step 2×2 'valid' max pooling and a
per-step BatchNorm between layers, an optional BatchNorm after the last, global max pooling and Dense(1) → one
logit per clip. The 1-layer and 2-layer models of 2021 are configs (configs/one_layer.py and two_layer.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from convlstm_jax.layers import ConvLSTM2D

Array = jax.Array

COMPUTE_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def compute_dtype(name: str) -> Any:
    """The jnp dtype of a `config.model.compute_dtype` name."""
    try:
        return COMPUTE_DTYPES[name]
    except (KeyError, TypeError):
        raise ValueError(
            f'unknown compute_dtype {name!r}: expected one of {", ".join(COMPUTE_DTYPES)}'
        ) from None


class KerasBatchNorm(nn.Module):
    """tf.keras BatchNormalization(center=False, scale=False) over all axes but the last, in float32.

    Training normalizes with the biased batch variance and moves `var` towards the unbiased one (as TF's fused
    batch norm does). With `axis_name` the statistics are global over that pmap axis: the mean of the
    per-device means and of the per-device squared deviations from the global mean, Bessel-corrected with the
    global count.
    """

    momentum: float = 0.99
    epsilon: float = 1e-3
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        x = x.astype(jnp.float32)
        features = (x.shape[-1],)
        moving_mean = self.variable('batch_stats', 'mean', jnp.zeros, features, jnp.float32)
        moving_var = self.variable('batch_stats', 'var', jnp.ones, features, jnp.float32)
        if not train:
            return (x - moving_mean.value) * jax.lax.rsqrt(moving_var.value + self.epsilon)

        axes = tuple(range(x.ndim - 1))
        count = int(np.prod(x.shape[:-1]))
        mean = jnp.mean(x, axes)
        if self.axis_name is not None:
            mean = jax.lax.pmean(mean, self.axis_name)
            count *= jax.lax.psum(1, self.axis_name)
        var = jnp.mean(jnp.square(x - mean), axes)
        if self.axis_name is not None:
            var = jax.lax.pmean(var, self.axis_name)
        if not self.is_initializing():
            unbiased = var * (count / max(count - 1, 1))
            moving_mean.value = self.momentum * moving_mean.value + (1.0 - self.momentum) * mean
            moving_var.value = self.momentum * moving_var.value + (1.0 - self.momentum) * unbiased
        return (x - mean) * jax.lax.rsqrt(var + self.epsilon)


@jax.custom_vjp
def _max_pool_2x2(x: Array) -> Array:
    """2×2 'valid' max pooling (stride 2) of (N, H, W, C) as a reshape and a max.

    XLA:CPU's reduce_window gradient is slow; this one sends the gradient to the first maximum of each window
    in row-major order, as TF's does.
    """
    return jnp.max(_windows(x), axis=-1)


def _windows(x: Array) -> Array:
    """(N, H, W, C) → (N, H//2, W//2, C, 4): each 2×2 window's values in row-major order."""
    n, height, width, channels = x.shape
    x = x[:, : height // 2 * 2, : width // 2 * 2]
    x = x.reshape(n, height // 2, 2, width // 2, 2, channels)
    return x.transpose(0, 1, 3, 5, 2, 4).reshape(n, height // 2, width // 2, channels, 4)


def _max_pool_2x2_fwd(x: Array):
    return _max_pool_2x2(x), x


def _max_pool_2x2_bwd(x: Array, dy: Array):
    n, height, width, channels = x.shape
    first = jax.nn.one_hot(jnp.argmax(_windows(x), axis=-1), 4, dtype=dy.dtype) * dy[..., None]
    grad = first.reshape(n, height // 2, width // 2, channels, 2, 2).transpose(0, 1, 4, 2, 5, 3)
    grad = grad.reshape(n, height // 2 * 2, width // 2 * 2, channels)
    return (jnp.pad(grad, ((0, 0), (0, height % 2), (0, width % 2), (0, 0))),)


_max_pool_2x2.defvjp(_max_pool_2x2_fwd, _max_pool_2x2_bwd)


def _max_pool_per_step(x: Array) -> Array:
    """2×2 'valid' max pooling of every time step of (B, T, H, W, C)."""
    batch, steps = x.shape[:2]
    pooled = _max_pool_2x2(x.reshape(batch * steps, *x.shape[2:]))
    return pooled.reshape(batch, steps, *pooled.shape[1:])


def _as_float_clips(clips: Array) -> Array:
    if clips.ndim != 5:
        raise ValueError(
            f'clips must have rank 5 (batch, time, height, width, channels), got shape {clips.shape}'
        )
    if clips.dtype == jnp.uint8:
        return clips.astype(jnp.float32) / 255.0
    if not jnp.issubdtype(clips.dtype, jnp.floating):
        raise ValueError(f'clips must be uint8 (scaled by 1/255 here) or float in [0, 1], got {clips.dtype}')
    return clips.astype(jnp.float32)


class Classifier(nn.Module):
    """ConvLSTM video classifier: clips (B, T, H, W, C) uint8 or float → logits (B,) float32."""

    filters: Sequence[int] = (16,)
    kernel_size: int | Sequence[int] = 3
    padding: str = 'valid'
    activation: str = 'tanh'
    recurrent_activation: str = 'hard_sigmoid'
    use_bias: bool = False
    dropout: float | Array = 0.0  # an array: a population member's own rate (population.py)
    recurrent_dropout: float | Array = 0.0
    batchnorm_last: bool = True
    compute_dtype: str = 'float32'
    remat: bool = False
    unroll: int = 1
    axis_name: str | None = None

    @nn.compact
    def __call__(self, clips: Array, train: bool = False) -> Array:
        if not self.filters:
            raise ValueError('model.filters must name at least one ConvLSTM layer')
        x = _as_float_clips(clips)
        dtype = compute_dtype(self.compute_dtype)
        norms = 0
        for index, filters in enumerate(self.filters):
            last = index == len(self.filters) - 1
            x = ConvLSTM2D(
                filters,
                kernel_size=self.kernel_size,
                padding=self.padding,
                activation=self.activation,
                recurrent_activation=self.recurrent_activation,
                use_bias=self.use_bias,
                dropout=self.dropout,
                recurrent_dropout=self.recurrent_dropout,
                return_sequences=not last,
                compute_dtype=dtype,
                remat=self.remat,
                unroll=self.unroll,
                name=f'convlstm_{index}',
            )(x, deterministic=not train)
            if not last or self.batchnorm_last:
                if not last:
                    x = _max_pool_per_step(x)
                x = KerasBatchNorm(axis_name=self.axis_name, name=f'batchnorm_{norms}')(x, train=train)
                norms += 1
        features = jnp.max(x, axis=(1, 2))
        logits = nn.Dense(1, kernel_init=nn.initializers.glorot_uniform(), name='dense')(features)
        return logits[:, 0].astype(jnp.float32)


# config.model fields that define the function the model computes; a checkpoint means nothing without them.
ARCHITECTURE_FIELDS = (
    'filters',
    'kernel_size',
    'padding',
    'activation',
    'recurrent_activation',
    'use_bias',
    'dropout',
    'recurrent_dropout',
    'batchnorm_last',
)
# The subset that decides which parameters exist and their shapes: what resume and `init_from` must match.
PARAMETER_FIELDS = ('filters', 'kernel_size', 'padding', 'use_bias', 'batchnorm_last')
# Fields that change how the model is computed, not what.
COMPUTE_FIELDS = ('compute_dtype', 'remat', 'unroll')
MODEL_FIELDS = ARCHITECTURE_FIELDS + COMPUTE_FIELDS


def build_model(
    model_config: Mapping[str, Any], axis_name: str | None = None, **overrides: Any
) -> Classifier:
    """The Classifier that `config.model` (a ConfigDict or a plain dict, e.g. from model.json) describes.

    Fields missing from `model_config` keep the Classifier's defaults; unknown ones are an error.
    """
    fields = dict(model_config)
    known = set(MODEL_FIELDS)
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f'unknown model config fields {unknown}: expected some of {sorted(known)}')
    if 'filters' in fields:
        fields['filters'] = tuple(int(f) for f in np.atleast_1d(fields['filters']))
    if isinstance(fields.get('kernel_size'), list):
        fields['kernel_size'] = tuple(fields['kernel_size'])
    compute_dtype(fields.get('compute_dtype', 'float32'))
    fields.update(overrides)
    return Classifier(axis_name=axis_name, **fields)


def count_params(params: Any) -> int:
    """The number of scalars in a parameter pytree (the Keras 'trainable parameters')."""
    return int(sum(np.prod(np.shape(leaf)) for leaf in jax.tree_util.tree_leaves(params)))
