"""The optimizer of the 2021 recipe, Adam exactly as tf.keras applies it (tests/test_optim.py), and the
learning-rate schedule and gradient clipping a recipe may add."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ('constant', 'cosine')


class KerasAdamState(NamedTuple):
    count: jax.Array  # int32: updates applied so far (tf.keras `iterations`)
    mu: optax.Updates
    nu: optax.Updates


def keras_adam(
    learning_rate: float | jax.Array | Callable[[jax.Array], jax.Array],
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-7,
) -> optax.GradientTransformation:
    """Adam exactly as tf.keras 2 applies it (OptimizerV2 and the 2.11+ optimizer agree).

    lr_t = lr·sqrt(1 − β2^t) / (1 − β1^t);  m += (g − m)(1 − β1);  v += (g² − v)(1 − β2);
    w −= (m·lr_t) / (sqrt(v) + ε). ε is added to sqrt(v) *before* the bias correction is undone, unlike
    `optax.adam`, so with ε = 1e-7 the two differ wherever sqrt(v) is small. Arithmetic in float32 like Keras.
    Hand-written because optax has no transformation with this ε placement.

    `learning_rate` may be an array (a population member's own rate, traced under vmap) or a function of the
    update count t (1 for the first update), as optax schedules are.
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
        rate = learning_rate(count) if callable(learning_rate) else learning_rate
        alpha = jnp.float32(rate) * jnp.sqrt(1 - jnp.float32(b2) ** t) / (1 - jnp.float32(b1) ** t)
        mu = jax.tree.map(lambda m, g: m + (g - m) * jnp.float32(1 - b1), state.mu, grads)
        nu = jax.tree.map(lambda v, g: v + (g * g - v) * jnp.float32(1 - b2), state.nu, grads)
        updates = jax.tree.map(lambda m, v: -(m * alpha) / (jnp.sqrt(v) + jnp.float32(eps)), mu, nu)
        return updates, KerasAdamState(count, mu, nu)

    return optax.GradientTransformation(init_fn, update_fn)


def learning_rate_factor(config, total_steps: int) -> optax.Schedule:
    """The schedule's multiplier of `learning_rate` at update t: a linear warm-up over `warmup_steps`, then
    constant or a cosine decay to `final_learning_rate_fraction` at `total_steps` (optax schedules)."""
    warmup = int(config.warmup_steps)
    if config.lr_schedule == 'cosine':
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0 if warmup else 1.0,
            peak_value=1.0,
            warmup_steps=warmup,
            decay_steps=max(total_steps, warmup + 1),
            end_value=float(config.final_learning_rate_fraction),
        )
    if warmup:
        return optax.linear_schedule(0.0, 1.0, warmup)
    return optax.constant_schedule(1.0)


def make_optimizer(config, learning_rate=None, total_steps: int = 0) -> optax.GradientTransformation:
    """The config's Adam (adam_b1, adam_b2, adam_eps) at `learning_rate` (default config.learning_rate; a
    member's array in a population) times the config's schedule, which needs the run's `total_steps`."""
    peak = config.learning_rate if learning_rate is None else learning_rate
    b1, b2, eps = config.adam_b1, config.adam_b2, config.adam_eps
    if config.lr_schedule == 'constant' and not config.warmup_steps:
        return keras_adam(peak, b1, b2, eps)
    factor = learning_rate_factor(config, total_steps)
    return keras_adam(lambda count: peak * factor(count), b1, b2, eps)


def clip_gradients(grads: optax.Updates, max_norm: float) -> optax.Updates:
    """optax's global-norm clipping, applied before Adam (outside the optimizer state, so that a recipe with
    clipping resumes the same checkpoints as one without)."""
    if not max_norm:
        return grads
    clipped, _ = optax.clip_by_global_norm(max_norm).update(grads, optax.EmptyState())
    return clipped
