"""data.pipeline='device' end to end: training gives the host pipelines' numbers (1 and 2 devices), resumes
exactly, refuses frames that don't fit before writing anything; evaluation and main need nothing more."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from configs import one_layer
from convlstm_jax import checkpoints, train
from convlstm_jax.data import device, pipeline

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def data_dir(smoke_data_dir):
    return smoke_data_dir


def _config(data_dir, pipeline_name: str, **overrides):
    config = one_layer.get_config('smoke')
    config.data.data_dir = str(data_dir)
    config.data.pipeline = pipeline_name
    for key, value in overrides.items():
        config[key] = value
    return config


@pytest.mark.slow  # tests/test_device.py checks the device pipeline's batches against numpy's, fast
def test_smoke_run_gives_the_numpy_pipelines_validation_loss(tmp_path, data_dir):
    results = {
        name: train.train_and_evaluate(_config(data_dir, name), tmp_path / name)['last_validation']
        for name in ('numpy', 'device')
    }
    assert results['device']['num_samples'] == results['numpy']['num_samples'] > 0
    for key in ('loss', 'accuracy', 'auc'):
        assert results['device'][key] == results['numpy'][key], key


def test_frames_that_do_not_fit_are_refused_before_the_workdir_is_written(tmp_path, data_dir, monkeypatch):
    import psutil

    config = _config(data_dir, 'device')
    monkeypatch.setattr(psutil, 'virtual_memory', lambda: type('Memory', (), {'available': 10_000})())
    workdir = tmp_path / 'runs' / 'x'
    with pytest.raises(device.FramesDoNotFit, match="train 0 MB.*use data.pipeline='tfdata' or 'numpy'"):
        train.train_and_evaluate(config, workdir)
    assert not (tmp_path / 'runs').exists()


def test_the_model_is_reserved_beside_the_frames():
    config = one_layer.get_config('smoke')
    variables = train.init_variables(config, 0)
    state = train.create_train_state(config, variables, np.asarray(jax.random.PRNGKey(0)), None)
    params = sum(np.asarray(x).nbytes for x in jax.tree.leaves(state.params))
    # params, Adam's two moments, one gradient and the BatchNorm statistics
    assert 4 * params < train.model_bytes(state) < 4 * params + 1024


def test_evaluation_scores_a_device_checkpoint_through_numpy():
    from convlstm_jax import models
    from convlstm_jax.evaluate import model as model_evaluation

    assert model_evaluation.host_backend('device') == 'numpy'
    assert model_evaluation.host_backend('tfdata') == 'tfdata'
    config = one_layer.get_config('smoke')
    model = models.build_model(config.model)
    n, c = config.data.time_steps, config.data.frames_per_step
    shape = (1, n, config.data.height, config.data.width, c)
    init = jax.jit(lambda key, x: model.init(key, x, train=False))  # one compile, not op by op
    variables = init(jax.random.PRNGKey(0), np.zeros(shape, np.uint8))
    split = pipeline.synthetic_split(40, config.data.height, config.data.width, clip_length=n * c)
    probs = {}
    for name in ('numpy', 'device'):
        config.data.pipeline = name
        probs[name] = model_evaluation.predict_split(model, variables, split, config.data, batch_size=8)
    np.testing.assert_array_equal(probs['device'], probs['numpy'])
    assert probs['device'].shape == split.samples.shape


def test_main_imports_no_tensorflow_for_the_device_pipeline():
    from convlstm_jax import main

    config = one_layer.get_config('smoke')
    assert main._needs_tensorflow(config)  # the default, 'tfdata'
    config.data.pipeline = 'device'
    assert config.data.source != 'tfds' and not main._needs_tensorflow(config)


_TWO_DEVICES = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {repo!r})
    import jax
    from configs import one_layer
    from convlstm_jax import train

    losses = {{}}
    for name in ('numpy', 'device'):
        config = one_layer.get_config('smoke')
        config.data.data_dir, config.data.pipeline = {data_dir!r}, name
        summary = train.train_and_evaluate(config, {tmp!r} + '/' + name)
        losses[name] = summary['last_validation']['loss']
    print(json.dumps({{'devices': jax.local_device_count(), **losses}}))
    """
)


@pytest.mark.slow
def test_two_devices_give_the_numpy_pipelines_validation_loss(tmp_path, data_dir):
    """XLA_FLAGS must be set before JAX starts, hence a subprocess."""
    env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=2', 'JAX_PLATFORMS': 'cpu'}
    script = _TWO_DEVICES.format(repo=str(REPO_ROOT), data_dir=str(data_dir), tmp=str(tmp_path))
    result = subprocess.run(
        [sys.executable, '-c', script], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found['devices'] == 2
    assert found['device'] == found['numpy'], found


@pytest.mark.slow
def test_sigterm_mid_epoch_then_resume_gives_the_uninterrupted_parameters(tmp_path, data_dir, monkeypatch):
    config = _config(data_dir, 'device', num_epochs=2, steps_per_epoch=3)
    train.train_and_evaluate(config, tmp_path / 'straight')

    original = pipeline.train_batches

    def terminated_mid_epoch(*args, **kwargs):
        for i, batch in enumerate(original(*args, **kwargs)):
            if kwargs['epoch'] == 1 and i == 0:
                os.kill(os.getpid(), signal.SIGTERM)
            yield batch

    monkeypatch.setattr(pipeline, 'train_batches', terminated_mid_epoch)
    stopped = train.train_and_evaluate(config, tmp_path / 'resumed')
    assert stopped['stopped_by'] == 'SIGTERM' and 3 < stopped['steps'] < 6, stopped
    monkeypatch.setattr(pipeline, 'train_batches', original)
    assert train.train_and_evaluate(config, tmp_path / 'resumed')['steps'] == 6
    _, straight = checkpoints.load_model(tmp_path / 'straight', select='latest')
    _, resumed = checkpoints.load_model(tmp_path / 'resumed', select='latest')
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_two_processes_each_with_their_own_frames_match_one_process_with_numpy(
    tmp_path, data_dir, two_device_reference
):
    """2 processes × 1 CPU device with 'device' against 1 process × 2 devices with 'numpy', the same global
    batch: each process places its own copy of the frames and takes its slice of every batch."""
    from test_launch import LAUNCH_DIR, SMOKE, assert_same_losses, metrics_by_step, training_env

    two = tmp_path / 'two'
    result = subprocess.run(
        ['bash', str(LAUNCH_DIR / 'local_multiprocess.sh'), '2', *SMOKE, '--workdir', str(two)]
        + [f'--config.data.data_dir={data_dir}', '--config.data.pipeline=device'],
        env=training_env(),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    got = metrics_by_step(two)
    steps = [('train', 1), ('train', 2), ('train', 3), ('validation', 3)]
    assert sorted(got) == sorted(steps)
    assert_same_losses(got, two_device_reference, steps, rtol=1e-6)
