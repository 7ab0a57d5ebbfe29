"""The classifier: parameter counts, Keras parity (inference, training, BatchNorm), global stats, errors."""

from __future__ import annotations

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convlstm_jax import models
from convlstm_jax.benchmark import keras_models
from convlstm_jax.tf_cpu import import_tensorflow

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHAPE = (2, 3, 10, 12, 4)  # (B, T, H, W, C): the 2-layer model's second ConvLSTM still sees 3×4 pixels


def _model_config(name: str):
    spec = importlib.util.spec_from_file_location(f'config_{name}', REPO_ROOT / 'configs' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config().model


def _clips(seed=0, shape=SHAPE):
    return np.random.default_rng(seed).uniform(0.0, 1.0, shape).astype(np.float32)


def _variables(model, seed=0):
    """Initialized variables with random moving statistics, so that inference really uses them."""
    variables = jax.jit(model.init)(jax.random.key(seed), jnp.asarray(_clips()))  # one compile, not op by op
    rng = np.random.default_rng(seed + 7)
    stats = jax.tree.map(lambda v: v, variables['batch_stats'])
    for name in stats:
        size = stats[name]['mean'].shape
        stats[name] = {
            'mean': rng.normal(0, 0.1, size).astype(np.float32),
            'var': rng.uniform(0.01, 0.2, size).astype(np.float32),
        }
    return {'params': variables['params'], 'batch_stats': stats}


@pytest.mark.parametrize('name, trainable', [('one_layer', 11_537), ('two_layer', 66_849)])
def test_parameter_counts_and_tree(name, trainable):
    config = _model_config(name)
    # Shapes are all this needs: no initializer runs.
    variables = jax.eval_shape(
        models.build_model(config).init, jax.random.key(0), jnp.zeros(SHAPE, jnp.uint8)
    )
    assert models.count_params(variables['params']) == trainable
    layers = len(config.filters)
    assert set(variables['params']) == {f'convlstm_{i}' for i in range(layers)} | {'dense'}
    assert set(variables['params']['convlstm_0']) == {'kernel', 'recurrent_kernel'}  # use_bias=False
    assert variables['params']['dense']['kernel'].shape == (config.filters[-1], 1)
    assert len(variables['batch_stats']) == 1
    assert set(variables['batch_stats']['batchnorm_0']) == {'mean', 'var'}


@pytest.mark.parametrize(
    'name, remat',
    [
        ('one_layer', False),
        pytest.param('two_layer', False, marks=pytest.mark.slow),
        pytest.param('two_layer', True, marks=pytest.mark.slow),
    ],
)
def test_classifier_matches_tf_keras(name, remat):
    """Inference, training-mode outputs, gradients and the BatchNorm moving statistics after one update."""
    tf = import_tensorflow()
    config = _model_config(name)
    config.remat = remat
    model = models.build_model(config)
    variables = _variables(model)
    keras_model = keras_models.keras_classifier(config, SHAPE[1:])
    keras_models.set_classifier_weights(keras_model, variables)
    x = _clips(1)

    logits = model.apply(variables, x, train=False)
    assert logits.shape == (SHAPE[0],) and logits.dtype == jnp.float32
    np.testing.assert_allclose(logits, keras_model(x, training=False).numpy()[:, 0], atol=1e-5, rtol=0)

    def loss(params):
        out, updates = model.apply(
            {'params': params, 'batch_stats': variables['batch_stats']},
            x,
            train=True,
            mutable=['batch_stats'],
        )
        return jnp.sum(jnp.sin(out)), (out, updates)

    (_, (train_logits, updates)), grads = jax.value_and_grad(loss, has_aux=True)(variables['params'])
    with tf.GradientTape() as tape:
        want = keras_model(x, training=True)
        keras_loss = tf.reduce_sum(tf.sin(want))
    keras_grads = tape.gradient(keras_loss, keras_model.trainable_weights)
    np.testing.assert_allclose(train_logits, want.numpy()[:, 0], atol=1e-5, rtol=0)
    want_stats = keras_models.classifier_batch_stats(keras_model)
    for layer, stats in want_stats.items():
        for key in ('mean', 'var'):
            np.testing.assert_allclose(updates['batch_stats'][layer][key], stats[key], atol=1e-6, rtol=1e-5)

    by_name = {w.name: g.numpy() for w, g in zip(keras_model.trainable_weights, keras_grads, strict=True)}
    for path, grad in jax.tree_util.tree_leaves_with_path(grads):
        layer, param = (p.key for p in path)
        match = [
            v for k, v in by_name.items() if k.startswith(f'{layer}/') and k.split('/')[-1].startswith(param)
        ]
        assert len(match) == 1, (layer, param, list(by_name))
        err = np.max(np.abs(grad - match[0])) / max(np.max(np.abs(match[0])), 1e-12)
        assert err <= 1e-4, (layer, param, err)


def test_uint8_clips_are_scaled_inside():
    model = models.build_model(_model_config('one_layer'))
    variables = _variables(model)
    clips = np.random.default_rng(3).integers(0, 256, SHAPE, dtype=np.uint8)
    np.testing.assert_allclose(
        model.apply(variables, clips), model.apply(variables, clips.astype(np.float32) / 255.0), atol=1e-6
    )


def test_bfloat16_model_is_close_and_float32_out():
    config = _model_config('two_layer')
    variables = _variables(models.build_model(config))
    x = _clips(4)
    full = models.build_model(config).apply(variables, x)
    config.compute_dtype = 'bfloat16'
    half = models.build_model(config).apply(variables, x)
    assert half.dtype == jnp.float32
    assert jax.tree.map(lambda v: v.dtype, variables['params']) == jax.tree.map(
        lambda _: jnp.float32, variables['params']
    )
    np.testing.assert_allclose(half, full, atol=5e-2)


def test_batchnorm_statistics_are_global_over_the_device_axis():
    """vmap with an axis name stands in for pmap: two shards must give the statistics of the whole batch."""
    config = _model_config('two_layer')
    variables = _variables(models.build_model(config))
    x = _clips(5, (4, *SHAPE[1:]))
    whole, whole_updates = models.build_model(config).apply(variables, x, train=True, mutable=['batch_stats'])
    sharded_model = models.build_model(config, axis_name='batch')

    def shard(clips):
        return sharded_model.apply(variables, clips, train=True, mutable=['batch_stats'])

    parts, part_updates = jax.vmap(shard, axis_name='batch')(x.reshape(2, 2, *SHAPE[1:]))
    np.testing.assert_allclose(parts.reshape(-1), whole, atol=1e-5)
    for a, b in zip(jax.tree.leaves(part_updates), jax.tree.leaves(whole_updates), strict=True):
        np.testing.assert_allclose(a[0], b, atol=1e-6, rtol=1e-5)
        np.testing.assert_array_equal(a[0], a[1])


def test_bad_input_and_config_are_refused():
    model = models.build_model(_model_config('one_layer'))
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros(SHAPE))
    with pytest.raises(ValueError, match='rank 5'):
        model.apply(variables, jnp.zeros(SHAPE[1:]))
    with pytest.raises(ValueError, match='4 input channels'):
        model.apply(variables, jnp.zeros((*SHAPE[:-1], 1)))
    with pytest.raises(ValueError, match='uint8'):
        model.apply(variables, jnp.zeros(SHAPE, jnp.int32))
    with pytest.raises(ValueError, match='compute_dtype'):
        models.build_model({'filters': (4,), 'compute_dtype': 'float16'})
    with pytest.raises(ValueError, match='unknown model config fields'):
        models.build_model({'filters': (4,), 'layers': 2})


def test_max_pool_gradient_goes_to_the_first_maximum_like_tf():
    """Ties are common (hard_sigmoid saturates gates to exactly 0): TF picks the first maximum."""
    tf = import_tensorflow()
    x = np.round(np.random.default_rng(0).uniform(0, 2, (2, 7, 9, 3))).astype(np.float32)
    weights = np.random.default_rng(1).normal(size=(2, 3, 4, 3)).astype(np.float32)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        pooled = tf.nn.max_pool2d(xt, 2, 2, 'VALID')
        loss = tf.reduce_sum(pooled * weights)
    want = tape.gradient(loss, xt).numpy()
    np.testing.assert_array_equal(models._max_pool_2x2(jnp.asarray(x)), pooled.numpy())
    got = jax.grad(lambda v: jnp.sum(models._max_pool_2x2(v) * weights))(jnp.asarray(x))
    np.testing.assert_array_equal(got, want)
