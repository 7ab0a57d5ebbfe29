"""The 2021 objective: tf.keras's class-weighted BCE, the L1L2 penalty, the class-weight rule."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from convlstm_jax import losses


def test_loss_is_tf_keras_class_weighted_bce_plus_penalty():
    logits = jnp.array([2.0, -1.0, 0.5, -3.0])
    labels = jnp.array([1.0, 0.0, 0.0, 1.0])
    weights = np.where(np.asarray(labels) > 0.5, 0.8, 0.2)
    probs = 1 / (1 + np.exp(-np.asarray(logits, np.float64)))
    bce = -(labels * np.log(probs) + (1 - labels) * np.log(1 - probs))
    expected = np.sum(weights * bce) / 4  # tf.keras: sum of weighted losses / batch size
    np.testing.assert_allclose(losses.class_weighted_loss(logits, labels, (0.2, 0.8), 4), expected, rtol=1e-6)

    params = {
        'convlstm_0': {'kernel': jnp.array([1.0, -2.0]), 'recurrent_kernel': jnp.array([5.0])},
        'dense': {'kernel': jnp.array([7.0])},
    }
    assert losses.regularized_paths(params, ('convlstm_*/kernel',)) == ['convlstm_0/kernel']
    np.testing.assert_allclose(
        losses.l1l2_penalty(params, 0.1, 0.01, ('convlstm_*/kernel',)), 0.1 * 3 + 0.01 * 5
    )
    both = ('convlstm_*/kernel', 'convlstm_*/recurrent_kernel')
    np.testing.assert_allclose(losses.l1l2_penalty(params, 0.1, 0.0, both), 0.1 * 8)


def test_class_weights_auto_is_the_2021_rule():
    labels = np.array([1, 0, 0, 0, 1, 0, 0, 0], np.int8)
    assert losses.resolve_class_weights('auto', labels) == (0.25, 0.75)
    assert losses.resolve_class_weights((0.133, 0.866), labels) == (0.133, 0.866)
    with pytest.raises(ValueError, match="a pair \\(w0, w1\\) or 'auto'"):
        losses.resolve_class_weights('balanced', labels)
    with pytest.raises(ValueError, match='two non-negative numbers'):
        losses.resolve_class_weights((0.1, 0.2, 0.7), labels)


def test_a_penalty_that_matches_no_parameter_is_refused():
    from convlstm_jax.config import base_config

    config = base_config()
    config.l2 = 1e-3
    config.regularized_kernels = ('dense*/kernel',)
    params = {'convlstm_0': {'kernel': jnp.zeros(2)}, 'head': {'kernel': jnp.zeros(1)}}
    with pytest.raises(
        ValueError,
        match=r"regularized_kernels \('dense\*/kernel',\) match no parameter; .*"
        r'convlstm_0/kernel, head/kernel',
    ):
        losses.check_regularized(config, params)
    config.l2 = 0.0
    losses.check_regularized(config, params)  # no penalty: nothing to match
