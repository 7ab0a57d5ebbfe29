"""The tf.keras Adam: its formula by hand, and where it differs from optax.adam."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
import pytest

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


def _schedule_config(**fields):
    from convlstm_jax import config as config_lib

    config = config_lib.base_config()
    for name, value in fields.items():
        config[name] = value
    config_lib.check(config)
    return config


def test_the_2021_recipe_keeps_the_learning_rate_constant():
    factor = optim.learning_rate_factor(_schedule_config(), total_steps=100)
    assert [float(factor(t)) for t in (1, 50, 100)] == [1.0, 1.0, 1.0]


def test_warmup_then_cosine_decay_to_the_final_fraction():
    config = _schedule_config(warmup_steps=10, lr_schedule='cosine', final_learning_rate_fraction=0.1)
    factor = optim.learning_rate_factor(config, total_steps=110)
    np.testing.assert_allclose(float(factor(1)), 0.1, rtol=1e-6)  # the first update: 1/10 of the peak
    np.testing.assert_allclose(float(factor(10)), 1.0, rtol=1e-6)
    np.testing.assert_allclose(float(factor(60)), 0.55, rtol=1e-5)  # half-way down the cosine
    np.testing.assert_allclose(float(factor(110)), 0.1, rtol=1e-6)
    # The Adam applies it: its first update is the constant-rate update times 0.1.
    params, grads = {'w': jnp.array([1.0, -2.0])}, {'w': jnp.array([0.3, -0.1])}
    scheduled = optim.make_optimizer(config, learning_rate=1e-3, total_steps=110)
    constant = optim.keras_adam(1e-3)
    found = scheduled.update(grads, scheduled.init(params))[0]['w']
    np.testing.assert_allclose(found, 0.1 * constant.update(grads, constant.init(params))[0]['w'], rtol=1e-6)


def test_clipping_scales_the_gradients_to_the_global_norm():
    grads = {'a': jnp.array([3.0]), 'b': jnp.array([4.0])}  # global norm 5
    clipped = optim.clip_gradients(grads, 1.0)
    np.testing.assert_allclose([clipped['a'][0], clipped['b'][0]], [0.6, 0.8], rtol=1e-6)
    assert optim.clip_gradients(grads, 0.0) is grads  # 0: off


@pytest.mark.parametrize(
    'fields, message',
    [
        ({'warmup_steps': -1}, 'warmup_steps must be 0'),
        ({'lr_schedule': 'linear'}, 'lr_schedule must be one of constant, cosine'),
        ({'final_learning_rate_fraction': 1.5}, r'final_learning_rate_fraction must be in \[0, 1\]'),
        ({'clip_global_norm': -1.0}, 'clip_global_norm must be 0'),
    ],
)
def test_bad_schedule_values_are_refused(fields, message):
    from convlstm_jax import config as config_lib

    with pytest.raises(config_lib.ConfigError, match=message):
        _schedule_config(**fields)
