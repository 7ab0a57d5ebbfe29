"""The optimizer of the 2021 recipe: Adam exactly as tf.keras applies it (tests/test_optim.py)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class KerasAdamState(NamedTuple):
    count: jax.Array  # int32: updates applied so far (tf.keras `iterations`)
    mu: optax.Updates
    nu: optax.Updates


def keras_adam(learning_rate: float, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-7):
    """Adam exactly as tf.keras 2 applies it (OptimizerV2 and the 2.11+ optimizer agree).

    lr_t = lr·sqrt(1 − β2^t) / (1 − β1^t);  m += (g − m)(1 − β1);  v += (g² − v)(1 − β2);
    w −= (m·lr_t) / (sqrt(v) + ε). ε is added to sqrt(v) *before* the bias correction is undone, unlike
    `optax.adam`, so with ε = 1e-7 the two differ wherever sqrt(v) is small. Arithmetic in float32 like Keras.
    Hand-written because optax has no transformation with this ε placement.
    """

    def init_fn(params):
        return KerasAdamState(
            count=jnp.zeros([], jnp.int32),
            mu=jax.tree.map(jnp.zeros_like, params),
            nu=jax.tree.map(jnp.zeros_like, params),
        )

    def update_fn(grads, state, params=None):
        del params
        count = state.count + 1
        t = count.astype(jnp.float32)
        alpha = jnp.float32(learning_rate) * jnp.sqrt(1 - jnp.float32(b2) ** t) / (1 - jnp.float32(b1) ** t)
        mu = jax.tree.map(lambda m, g: m + (g - m) * jnp.float32(1 - b1), state.mu, grads)
        nu = jax.tree.map(lambda v, g: v + (g * g - v) * jnp.float32(1 - b2), state.nu, grads)
        updates = jax.tree.map(lambda m, v: -(m * alpha) / (jnp.sqrt(v) + jnp.float32(eps)), mu, nu)
        return updates, KerasAdamState(count, mu, nu)

    return optax.GradientTransformation(init_fn, update_fn)


def make_optimizer(config) -> optax.GradientTransformation:
    """The config's Adam (learning_rate, adam_b1, adam_b2, adam_eps)."""
    return keras_adam(config.learning_rate, config.adam_b1, config.adam_b2, config.adam_eps)
