"""The training step: tf.keras parity, multi-device equivalence, batch sizes the devices must divide.

The optimizer, the loss pieces and the workdir have their own test files; a training run is in
test_train_run.py."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from configs import one_layer, two_layer
from convlstm_jax import parallel, population, state, train
from convlstm_jax.benchmark import keras_models

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# Reduced clip for the parity runs: (T, H, W, C); the 2-layer model ends on a 3×4 map.
PARITY_CLIP = (3, 12, 14, 4)
PARITY_BATCH = 4
PARITY_STEPS = 3
PARITY_RTOL = 1e-5


def _config(module, clip=PARITY_CLIP, **overrides):
    config = module.get_config()
    config.data.time_steps, config.data.height, config.data.width, config.data.frames_per_step = clip
    for key, value in overrides.items():
        config[key] = value
    return config


def _batches(num_steps, batch, clip, seed=0):
    """Float clips in [0, 1] and labels with both classes in every batch."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(num_steps):
        clips = rng.uniform(0.0, 1.0, (batch, *clip)).astype(np.float32)
        labels = np.array([1, 0] * (batch // 2), np.float32)
        rng.shuffle(labels)
        out.append((clips, labels))
    return out


def _run_jax(config, variables, batches, devices):
    """`len(batches)` pmapped steps over `devices`; each global batch is split evenly over them."""
    p_step = train.make_train_step(config, devices=devices)
    hparams = population.hparams(config, np.zeros(1))  # the config's pair of class weights
    state = train.create_train_state(config, variables, np.asarray(jax.random.PRNGKey(0)), hparams)
    state = parallel.replicate(state, devices)
    losses = []
    for clips, labels in batches:
        shard = lambda x: x.reshape(len(devices), -1, *x.shape[1:])  # noqa: E731
        state, metrics = p_step(state, {'clips': shard(clips), 'labels': shard(labels)})
        losses.append(float(metrics['loss'][0]))
    return losses, parallel.unreplicate(state)


def _keras_model(config, variables):
    """The tf_keras twin, with the config's L1L2 on the ConvLSTM input kernels, compiled like 2021."""
    keras = keras_models.tf_keras()
    model = keras_models.keras_classifier(config.model, tuple(state.input_shape(config.data)), logits=False)
    if config.l1 or config.l2:
        layers_config = model.get_config()
        for layer in layers_config['layers']:
            if layer['class_name'] == 'ConvLSTM2D':
                layer['config']['kernel_regularizer'] = {
                    'class_name': 'L1L2',
                    'config': {'l1': float(config.l1), 'l2': float(config.l2)},
                }
        model = keras.Model.from_config(layers_config)
    keras_models.set_classifier_weights(model, variables)
    optimizer = keras.optimizers.Adam(
        learning_rate=config.learning_rate,
        beta_1=config.adam_b1,
        beta_2=config.adam_b2,
        epsilon=config.adam_eps,
    )
    model.compile(optimizer=optimizer, loss='binary_crossentropy')
    return model


def _keras_params(model, like):
    """The Keras model's weights in the layout of the flax params `like`."""
    params = {}
    for name, leaves in like.items():
        weights = model.get_layer(name).get_weights()
        keys = ['kernel', 'recurrent_kernel', 'bias'] if name.startswith('convlstm') else ['kernel', 'bias']
        params[name] = {key: w for key, w in zip([k for k in keys if k in leaves], weights, strict=True)}
    return params


def _relative_error(a, b) -> float:
    """max |a − b| / max |b| over one tensor: relative to the tensor's scale, so zeros don't blow it up."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


@pytest.mark.parametrize(
    'module', [one_layer, pytest.param(two_layer, marks=pytest.mark.slow)], ids=['one_layer', 'two_layer']
)
# Where an element's data gradient nearly cancels its penalty gradient, float32 rounding (which differs
# between XLA and TF/oneDNN) is amplified by Adam's g/sqrt(v): (1e-3, 1e-2) put one element of the 1-layer
# kernel at 7e-6, near the tolerance; (1e-4, 1e-3) leaves a margin (worst 2e-6).
@pytest.mark.parametrize(
    'l1l2', [pytest.param((0.0, 0.0), marks=pytest.mark.slow), (1e-4, 1e-3)], ids=['no_penalty', 'l1l2']
)
def test_three_steps_match_tf_keras_train_on_batch(module, l1l2):
    config = _config(module, l1=l1l2[0], l2=l1l2[1])
    variables = train.init_variables(config, seed=3)
    batches = _batches(PARITY_STEPS, PARITY_BATCH, PARITY_CLIP)
    losses, state = _run_jax(config, variables, batches, jax.local_devices()[:1])

    keras_model = _keras_model(config, variables)
    class_weight = dict(enumerate(config.class_weights))
    keras_losses = [
        float(keras_model.train_on_batch(clips, labels[:, None], class_weight=class_weight))
        for clips, labels in batches
    ]
    np.testing.assert_allclose(losses, keras_losses, rtol=PARITY_RTOL)
    keras_params = _keras_params(keras_model, state.params)
    errors = jax.tree.map(_relative_error, state.params, keras_params)
    assert max(jax.tree.leaves(errors)) < PARITY_RTOL, errors
    stats = jax.tree.map(_relative_error, state.batch_stats, keras_models.classifier_batch_stats(keras_model))
    assert max(jax.tree.leaves(stats)) < PARITY_RTOL, stats


_TWO_DEVICES = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np
    sys.path[:0] = [{repo!r}, {tests!r}]
    import test_train
    from configs import two_layer
    from convlstm_jax import train
    assert jax.local_device_count() == 2, jax.devices()
    config = test_train._config(two_layer, clip=(3, 12, 14, 4), l1=1e-3, l2=1e-2)
    variables = train.init_variables(config, seed=5)
    batches = test_train._batches(3, 4, (3, 12, 14, 4), seed=1)
    one = test_train._run_jax(config, variables, batches, jax.local_devices()[:1])
    two = test_train._run_jax(config, variables, batches, jax.local_devices())
    params = jax.tree.leaves(jax.tree.map(test_train._relative_error, two[1].params, one[1].params))
    stats = jax.tree.leaves(jax.tree.map(test_train._relative_error, two[1].batch_stats, one[1].batch_stats))
    print(json.dumps({{'losses': [one[0], two[0]], 'params': max(params), 'stats': max(stats)}}))
    """
)


@pytest.mark.slow
def test_two_devices_match_one_device_with_the_same_global_batch():
    """XLA_FLAGS must be set before JAX starts, hence a subprocess."""
    env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=2', 'JAX_PLATFORMS': 'cpu'}
    script = _TWO_DEVICES.format(repo=str(REPO_ROOT), tests=str(REPO_ROOT / 'tests'))
    result = subprocess.run(
        [sys.executable, '-c', script], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(found['losses'][1], found['losses'][0], rtol=1e-5)
    assert found['params'] < 1e-5
    assert found['stats'] < 1e-5  # BatchNorm statistics over the global batch, not per device


def test_batch_size_not_divisible_names_the_nearest_valid_sizes():
    parallel.check_batch_size(8, 4)
    with pytest.raises(ValueError, match='batch_size=6 is not divisible by the 4 devices; .* 4 and 8'):
        parallel.check_batch_size(6, 4)
    with pytest.raises(ValueError, match='eval_batch_size=3 .* 8'):
        parallel.check_batch_size(3, 8, 'eval_batch_size')
