"""The 2021 objective: class-weighted binary cross-entropy as tf.keras reduces it, plus Keras's L1L2."""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any


def bce_from_logits(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-sample binary cross-entropy in TensorFlow's `sigmoid_cross_entropy_with_logits` form (what
    tf.keras computes for a sigmoid output): max(x, 0) − x·z + log(1 + exp(−|x|))."""
    return jax.nn.relu(logits) - logits * labels + jnp.log1p(jnp.exp(-jnp.abs(logits)))


def class_weighted_loss(
    logits: jax.Array, labels: jax.Array, class_weights: tuple[float, float], normalizer: int
) -> jax.Array:
    """Σ w[y]·BCE / normalizer; with normalizer = batch size this is tf.keras's SUM_OVER_BATCH_SIZE."""
    weights = jnp.where(labels > 0.5, jnp.float32(class_weights[1]), jnp.float32(class_weights[0]))
    return jnp.sum(weights * bce_from_logits(logits, labels)) / normalizer


def param_path(path: Sequence[Any]) -> str:
    """'convlstm_0/kernel' for a pytree key path."""
    return '/'.join(str(getattr(key, 'key', getattr(key, 'name', key))) for key in path)


def param_paths(params: PyTree) -> list[str]:
    return [param_path(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def regularized_paths(params: PyTree, patterns: Sequence[str]) -> list[str]:
    """The '/'-joined parameter paths matching any glob pattern (e.g. 'convlstm_*/kernel')."""
    return [path for path in param_paths(params) if any(fnmatch.fnmatchcase(path, p) for p in patterns)]


def l1l2_penalty(
    params: PyTree, l1: float | jax.Array, l2: float | jax.Array, patterns: Sequence[str]
) -> jax.Array:
    """Keras's L1L2 regularizer summed over the matching kernels: l1·Σ|w| + l2·Σw². The factors may be
    arrays (a population member's own, traced); as Python numbers a zero factor adds no term."""
    total = jnp.float32(0)
    static = isinstance(l1, (int, float)) and isinstance(l2, (int, float))
    for path, w in jax.tree_util.tree_flatten_with_path(params)[0]:
        if any(fnmatch.fnmatchcase(param_path(path), pattern) for pattern in patterns):
            if not static or l1:
                total += jnp.float32(l1) * jnp.sum(jnp.abs(w))
            if not static or l2:
                total += jnp.float32(l2) * jnp.sum(jnp.square(w))
    return total


def penalized(config) -> bool:
    """Whether any model of the run (any population member) has an L1 or L2 penalty."""
    overrides = config.get('member_overrides') or {}
    members = [value for name in ('l1', 'l2') for value in overrides.get(name, ())]
    return bool(config.l1 or config.l2 or any(members))


def check_regularized(config, params: PyTree) -> None:
    """A penalty that would silently apply to nothing is a configuration error."""
    if penalized(config) and not regularized_paths(params, config.regularized_kernels):
        raise ValueError(
            f'regularized_kernels {tuple(config.regularized_kernels)} match no parameter; the parameters are '
            f'{", ".join(param_paths(params))}'
        )


def resolve_class_weights(setting: Any, train_labels: np.ndarray) -> tuple[float, float]:
    """(w0, w1) from the config: a pair, or 'auto' — the 2021 rule w0 = p, w1 = 1 − p with p the positive rate
    of the training samples."""
    if isinstance(setting, str):
        if setting != 'auto':
            raise ValueError(f"class_weights must be a pair (w0, w1) or 'auto', got {setting!r}")
        positive_rate = float(np.mean(train_labels))
        return positive_rate, 1.0 - positive_rate
    weights = tuple(float(w) for w in setting)
    if len(weights) != 2 or any(not math.isfinite(w) or w < 0 for w in weights):
        raise ValueError(
            f"class_weights must be two non-negative numbers (w0, w1) or 'auto', got {setting!r}"
        )
    return weights
