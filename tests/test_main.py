"""`python -m convlstm_jax.main`: one end-to-end `:smoke` run, exact resume after SIGTERM, and bad input."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from convlstm_jax import checkpoints

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# Runs whose assertions do not depend on the input pipeline skip TensorFlow's start (seconds per process):
# the backends give identical batches (tests/test_pipeline.py), and a resume may switch between them.
NUMPY = '--config.data.pipeline=numpy'


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory) -> pathlib.Path:
    """One dataset cache for the module: the smoke tank is built once."""
    return tmp_path_factory.mktemp('data')


def _main(
    *args: str, env: dict | None = None, timeout: int = 600, cwd: pathlib.Path = REPO_ROOT
) -> subprocess.CompletedProcess:
    """main in a subprocess on one CPU device (said explicitly: no automatic split), unless `env` says."""
    base = {k: v for k, v in os.environ.items() if k not in ('CONVLSTM_CPU_DEVICES', 'XLA_FLAGS')}
    return subprocess.run(
        [sys.executable, '-m', 'convlstm_jax.main', *args],
        cwd=cwd,
        env={
            **base,
            'JAX_PLATFORMS': 'cpu',
            'CONVLSTM_CPU_DEVICES': '1',
            'PYTHONPATH': str(REPO_ROOT),
            **(env or {}),
        },
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_smoke_run_end_to_end(tmp_path, data_dir):
    workdir = tmp_path / 'run'
    result = _main(
        '--config',
        'configs/one_layer.py:smoke',
        '--workdir',
        str(workdir),
        f'--config.data.data_dir={data_dir}',
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'best validation AUC' in result.stdout and 'ỹ baselines' in result.stdout
    config = json.loads((workdir / 'config.json').read_text())
    assert config['steps_per_epoch'] == 3 and config['data']['height'] == 16
    records = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
    assert [r['step'] for r in records if r['split'] == 'train'] == [1, 2, 3]
    validation = [r for r in records if r['split'] == 'validation']
    assert [r['step'] for r in validation] == [3]
    for key in ('loss', 'auc', 'auc_keras200', 'accuracy', 'youden_threshold', 'baseline_auc/-y_tilde[t-1]'):
        assert key in validation[0], key
    assert list((workdir / 'tensorboard').glob('events.out.tfevents.*'))
    spec, variables = checkpoints.load_model(workdir, select='best_auc')
    assert spec['model']['filters'] == [16] and 'convlstm_0' in variables['params']
    summary = json.loads((workdir / 'summary.json').read_text())
    assert summary['steps'] == 3 and summary['stopped_by'] is None

    # The same workdir with the other architecture: refused, naming both.
    result = _main(
        '--config',
        'configs/two_layer.py:smoke',
        '--workdir',
        str(workdir),
        f'--config.data.data_dir={data_dir}',
        NUMPY,
    )
    assert result.returncode == 1
    assert 'holds a checkpoint of another architecture: filters=[16]' in result.stderr
    assert 'config asks for filters=[16, 32]' in result.stderr

    # Resuming with another objective is refused in one line naming the field and both values, and
    # nothing in the workdir changes.
    before = sorted(str(p.relative_to(workdir)) for p in workdir.rglob('*'))
    result = _main(
        '--config',
        'configs/one_layer.py:smoke',
        '--workdir',
        str(workdir),
        f'--config.data.data_dir={data_dir}',
        '--config.num_epochs=2',
        '--config.l2=1e38',
        NUMPY,
    )
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert 'l2=0.0' in result.stderr and 'l2=1e+38' in result.stderr, result.stderr
    assert sorted(str(p.relative_to(workdir)) for p in workdir.rglob('*')) == before

    # A loss that overflows stops the run with a clear error and names what was kept: here a fresh workdir
    # that starts from the trained model with an overflowing penalty, so no checkpoint is saved.
    diverged = tmp_path / 'diverged'
    result = _main(
        '--config',
        'configs/one_layer.py:smoke',
        '--workdir',
        str(diverged),
        f'--config.data.data_dir={data_dir}',
        f'--config.init_from={workdir}',
        '--config.l2=1e38',
        NUMPY,
    )
    assert result.returncode == 1
    assert 'the training loss is inf at step 1: training diverged; no checkpoint was saved' in result.stderr
    assert not [p for p in (diverged / 'checkpoints').iterdir() if p.name.isdigit()]

    # init_from: a new workdir starting from the trained one.
    result = _main(
        '--config',
        'configs/one_layer.py:smoke',
        '--workdir',
        str(tmp_path / 'fine_tune'),
        f'--config.data.data_dir={data_dir}',
        f'--config.init_from={workdir}',
        NUMPY,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f'initialized from {workdir}' in result.stdout


@pytest.mark.slow
def test_init_from_an_imported_2021_keras_checkpoint(tmp_path, data_dir, reference_dir):
    """The 1-layer SavedModel, imported by keras_io, starts a :smoke run (parameter shapes do not depend on
    the frame size or the number of time steps); the 2-layer config refuses it, naming both architectures."""
    model_dir = tmp_path / 'upbeat'
    source = reference_dir / 'checkpoint_tc-augm-best-validation-retarget-upbeat-snowflake-91'
    imported = subprocess.run(
        [sys.executable, '-m', 'convlstm_jax.keras_io', str(source), '--out', str(model_dir)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert imported.returncode == 0, imported.stderr[-3000:]
    common = [
        f'--config.data.data_dir={data_dir}',
        '--config.data.pipeline=numpy',
        f'--config.init_from={model_dir}',
    ]
    result = _main('--config', 'configs/one_layer.py:smoke', '--workdir', str(tmp_path / 'run'), *common)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f'initialized from {model_dir}' in result.stdout
    spec = json.loads((tmp_path / 'run' / 'model.json').read_text())
    assert spec['source']['init_from'] == str(model_dir)
    result = _main('--config', 'configs/two_layer.py:smoke', '--workdir', str(tmp_path / 'other'), *common)
    assert result.returncode == 1
    assert f'init_from {model_dir} holds a checkpoint of another architecture: filters=[16]' in result.stderr
    assert 'Use another init_from, or a config that matches' in result.stderr


_RESUME = textwrap.dedent(
    """
    import json, os, signal, sys
    sys.path.insert(0, {repo!r})
    import numpy as np
    from configs import one_layer
    from convlstm_jax import checkpoints, train
    from convlstm_jax.data import pipeline

    config = one_layer.get_config('smoke')
    config.data.data_dir = {data_dir!r}
    config.data.pipeline = 'numpy'
    config.num_epochs, config.steps_per_epoch = 2, 4
    tmp = {tmp!r}
    train.train_and_evaluate(config, tmp + '/straight')

    original = pipeline.train_batches

    def terminated_mid_epoch(*args, **kwargs):
        for i, batch in enumerate(original(*args, **kwargs)):
            if kwargs['epoch'] == 1 and i == 1:
                os.kill(os.getpid(), signal.SIGTERM)
            yield batch

    pipeline.train_batches = terminated_mid_epoch
    stopped = train.train_and_evaluate(config, tmp + '/resumed')
    pipeline.train_batches = original
    finished = train.train_and_evaluate(config, tmp + '/resumed')
    print(json.dumps({{'stopped': [stopped['stopped_by'], stopped['steps']], 'finished': finished['steps']}}))
    """
)


@pytest.mark.slow
def test_sigterm_mid_epoch_then_resume_gives_the_uninterrupted_parameters(tmp_path, data_dir):
    script = _RESUME.format(repo=str(REPO_ROOT), data_dir=str(data_dir), tmp=str(tmp_path))
    result = subprocess.run(
        [sys.executable, '-c', script],
        env={**os.environ, 'JAX_PLATFORMS': 'cpu'},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    stop_signal, stop_step = found['stopped']
    assert stop_signal == 'SIGTERM' and 4 < stop_step < 8, found  # stopped inside the second epoch
    assert found['finished'] == 8
    _, straight = checkpoints.load_model(tmp_path / 'straight', select='latest')
    _, resumed = checkpoints.load_model(tmp_path / 'resumed', select='latest')
    for a, b in zip(
        __import__('jax').tree.leaves(straight), __import__('jax').tree.leaves(resumed), strict=True
    ):
        np.testing.assert_array_equal(a, b)


def test_missing_config_file_is_a_clear_error(tmp_path):
    result = _main('--config', 'configs/no_such.py', '--workdir', str(tmp_path))
    assert result.returncode == 1
    assert (
        'cannot load the config file configs/no_such.py: [Errno 2] No such file or directory' in result.stderr
    )


def test_unknown_config_field_is_a_clear_error(tmp_path):
    result = _main(
        '--config', 'configs/one_layer.py:smoke', '--config.bach_size=8', '--workdir', str(tmp_path)
    )
    assert result.returncode == 1
    assert 'no such config field in --config.bach_size=8' in result.stderr
    assert 'Did you mean "batch_size"' in result.stderr


@pytest.mark.slow
def test_batch_size_not_divisible_by_the_devices(tmp_path):
    result = _main(
        '--config',
        'configs/one_layer.py:smoke',
        '--config.batch_size=3',
        '--workdir',
        str(tmp_path / 'run'),
        '--cpu_devices=2',  # the CPU split into two devices
        NUMPY,
    )
    assert result.returncode == 1
    assert (
        'batch_size=3 is not divisible by the 2 devices; the nearest valid sizes are 2 and 4' in result.stderr
    )
    assert not (tmp_path / 'run').exists()


@pytest.mark.parametrize(
    'args, message',
    [
        (['--config.batch_size=0'], 'error: batch_size must be at least 1, found 0'),
        (
            ['--config.data.pipeline=torch'],
            "error: data.pipeline must be one of tfdata, numpy, device, found 'torch'",
        ),
        (['--config.model.filters=()'], 'error: model.filters must list at least one positive filter count'),
        (['--config.bach_size=8'], 'error: no such config field in --config.bach_size=8'),
        (['--config.batch_size=x'], 'error: flag --config.batch_size=x: invalid literal for int()'),
    ],
)
def test_a_failed_config_check_leaves_no_files(tmp_path, args, message):
    result = _main('--config', 'configs/one_layer.py:smoke', *args, '--workdir', str(tmp_path / 'run'))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and message in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_broken_config_file_leaves_no_files(tmp_path):
    (tmp_path / 'broken.py').write_text('def get_config():\n    return undefined_name\n')
    result = _main('--config', str(tmp_path / 'broken.py'), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"error: cannot load the config file {tmp_path / 'broken.py'}: NameError: name 'undefined_name' is "
        'not defined'
    )
    assert [p.name for p in tmp_path.iterdir()] == ['broken.py']  # no runs/broken


def test_help_exits_0_and_lists_the_options():
    result = _main('--help')
    assert result.returncode == 0, result.stderr
    for option in (
        '--config:',
        '--workdir:',
        '--cpu_devices:',
        '--[no]print_config:',
        '--coordinator_address:',
    ):
        assert option in result.stdout, option
    assert 'Default: runs/<config file stem>' in result.stdout and '(default: ' in result.stdout
    assert '--config.FIELD=VALUE' in result.stdout and 'lists them all' in result.stdout
    assert '--verbosity' not in result.stdout  # absl's own options only with --helpfull
    result = _main('--helpfull')
    assert result.returncode == 0 and '--verbosity' in result.stdout and '--cpu_devices' in result.stdout


def test_print_config_shows_every_field_with_the_overrides(tmp_path):
    config_file = str(REPO_ROOT / 'configs' / 'two_layer.py')
    result = _main('--config', f'{config_file}:quick', '--config.seed=5', '--print_config', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    assert config['seed'] == 5 and config['data']['height'] == 36 and config['model']['filters'] == [16, 32]
    assert result.stderr == '' and list(tmp_path.iterdir()) == []  # nothing written, no runs/


@pytest.mark.slow
def test_default_workdir_and_one_device_per_core(tmp_path, data_dir):
    """The card's command with :smoke and no --workdir: runs/two_layer_smoke, on every core (no
    --cpu_devices, no CONVLSTM_CPU_DEVICES), and a start without CUDA or TensorFlow noise."""
    from convlstm_jax import cli

    result = _main(
        '--config',
        str(REPO_ROOT / 'configs' / 'two_layer.py') + ':smoke',
        f'--config.data.data_dir={data_dir}',
        env={'CONVLSTM_CPU_DEVICES': ''},
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    workdir = tmp_path / 'runs' / 'two_layer_smoke'
    assert json.loads((workdir / 'config.json').read_text())['data']['height'] == 16
    count = cli.automatic_cpu_devices((4, 8), multi_process=False, environ={})
    if count > 1:
        assert result.stdout.startswith(
            f'workdir runs/two_layer_smoke: initialized randomly; 66,849 parameters; '
            f'{count} CPU devices (one per core) × {4 // count} clips;'
        ), result.stdout
    for noise in ('cuInit', 'cuda', 'absl::InitializeLog', 'oneDNN', 'Downloading'):
        assert noise not in result.stderr, result.stderr


def test_tensorboard_event_file_reads_back_in_tensorflow(tmp_path):
    from convlstm_jax.metric_writer import MetricWriter
    from convlstm_jax.tf_cpu import import_tensorflow

    writer = MetricWriter(tmp_path)
    writer.write({'step': 7, 'split': 'validation', 'loss': 0.25, 'auc': float('nan'), 'note': 'text'})
    writer.close()
    assert json.loads((tmp_path / 'metrics.jsonl').read_text()) == {
        'step': 7,
        'split': 'validation',
        'loss': 0.25,
        'auc': None,
        'note': 'text',
    }
    tf = import_tensorflow()
    (path,) = (tmp_path / 'tensorboard').glob('events.out.tfevents.*')
    events = list(tf.compat.v1.train.summary_iterator(str(path)))  # checks the record CRCs
    assert events[0].file_version == 'brain.Event:2'
    values = {v.tag: v.simple_value for v in events[1].summary.value}
    assert events[1].step == 7 and values['validation/loss'] == 0.25 and 'validation/note' not in values


def test_a_bad_cpu_devices_variable_is_one_line(tmp_path):
    result = _main(
        '--config',
        'configs/one_layer.py:smoke',
        '--workdir',
        str(tmp_path / 'run'),
        env={'CONVLSTM_CPU_DEVICES': 'x'},
    )
    assert result.returncode == 1
    assert (
        result.stderr.strip() == "error: CONVLSTM_CPU_DEVICES must be a positive number of devices, found 'x'"
    )
    assert list(tmp_path.iterdir()) == []


_QUIET_TENSORFLOW = textwrap.dedent(
    """
    import os
    from convlstm_jax import tf_cpu

    with tf_cpu._without_startup_noise():
        os.write(2, b'I0000 port.cc:153] oneDNN custom operations are on.\\n')
        os.write(2, b'W0000 something a user can act on\\n')
    tf = tf_cpu.import_tensorflow()
    assert tf.config.get_visible_devices('GPU') == []
    """
)


@pytest.mark.slow
def test_tensorflow_starts_without_noise_and_keeps_other_lines():
    result = subprocess.run(
        [sys.executable, '-c', _QUIET_TENSORFLOW],
        env={**os.environ, 'PYTHONPATH': str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == 'W0000 something a user can act on\n'
