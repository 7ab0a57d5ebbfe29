"""The tf.keras Adam: its formula by hand, and where it differs from optax.adam."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax

from convlstm_jax import optim


def test_keras_adam_differs_from_optax_adam_only_through_epsilon():
    params = {'w': jnp.array([1.0, -2.0, 3.0])}
    grads = {'w': jnp.array([1e-6, -0.5, 2e-8])}
    ours = optim.keras_adam(1e-3, eps=1e-7)
    state = ours.init(params)
    for _ in range(3):
        updates, state = ours.update(grads, state)
    # By hand, tf.keras's formula at t = 3 (m and v reached by the same recurrences).
    m = v = 0.0
    for _ in range(3):
        m, v = m + (grads['w'] - m) * 0.1, v + (grads['w'] ** 2 - v) * 0.001
    alpha = 1e-3 * np.sqrt(1 - 0.999**3) / (1 - 0.9**3)
    np.testing.assert_allclose(updates['w'], -(m * alpha) / (np.sqrt(v) + 1e-7), rtol=1e-5)
    # optax.adam puts ε after the bias correction: a different update where sqrt(v) ~ ε.
    optax_updates, _ = optax.adam(1e-3, eps=1e-7).update(grads, optax.adam(1e-3).init(params))
    assert not np.allclose(optax_updates['w'][2], optim.keras_adam(1e-3).update(grads, state)[0]['w'][2])
