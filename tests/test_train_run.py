"""train_and_evaluate in-process: checks before anything is written, resuming only what was started, the
timed checkpoint, and a resume past a corrupt latest checkpoint."""

from __future__ import annotations

import json
import time

import pytest

from configs import one_layer
from convlstm_jax import checkpoints, loop, train
from convlstm_jax import workdir as workdir_layout


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp('data')


def _config(data_dir, **overrides):
    config = one_layer.get_config('smoke')
    config.data.data_dir = str(data_dir)
    config.data.pipeline = 'numpy'
    for key, value in overrides.items():
        target = config
        *parents, name = key.split('.')
        for parent in parents:
            target = target[parent]
        target[name] = value
    return config


@pytest.mark.parametrize(
    'overrides, message',
    [
        ({'keep_checkpoints': 0}, 'config keep_checkpoints must be at least 1, got 0'),
        ({'checkpoint_every_minutes': -1.0}, 'config checkpoint_every_minutes must be 0 .* got -1.0'),
        ({'log_every_steps': 0}, 'config log_every_steps must be at least 1, got 0'),
        ({'data.source': 'frames', 'data.path': '/no/such/folder'}, 'no/such/folder'),
        ({'class_weights': 'balanced'}, "class_weights must be a pair \\(w0, w1\\) or 'auto'"),
        ({'l2': 1e-3, 'regularized_kernels': ('nothing*/kernel',)}, 'match no parameter'),
        ({'init_from': '/no/such/model'}, 'checkpoint /no/such/model does not exist'),
    ],
    ids=['keep', 'minutes', 'log_every', 'data', 'class_weights', 'regularized', 'init_from'],
)
def test_a_failed_check_leaves_no_files(tmp_path, data_dir, overrides, message):
    workdir = tmp_path / 'runs' / 'x'
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        train.train_and_evaluate(_config(data_dir, **overrides), workdir)
    assert not (tmp_path / 'runs').exists()


def test_a_workdir_started_with_other_values_is_refused_untouched(tmp_path, data_dir):
    workdir = tmp_path / 'x'
    workdir_layout.write_config(workdir, _config(data_dir))
    before = sorted(p.name for p in workdir.iterdir())
    with pytest.raises(ValueError) as error:
        train.train_and_evaluate(_config(data_dir, learning_rate=0.0005, seed=1), workdir)
    assert str(error.value) == (
        f'workdir {workdir} was started with learning_rate=8e-05, seed=0; this run asks for '
        'learning_rate=0.0005, seed=1: use another --workdir, or the same values'
    )
    assert sorted(p.name for p in workdir.iterdir()) == before


def test_the_checkpoint_timer_is_due_after_its_minutes_and_restarts_on_a_save(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(time, 'monotonic', lambda: now[0])
    assert not loop.CheckpointTimer(0.0).due()  # 0: off
    timer = loop.CheckpointTimer(10.0)
    now[0] += 599.0
    assert not timer.due()
    now[0] += 1.0
    assert timer.due()
    timer.restart()
    assert not timer.due()


@pytest.mark.slow
def test_timed_checkpoints_then_a_resume_past_a_corrupt_latest_step(tmp_path, data_dir, capsys):
    workdir = tmp_path / 'run'
    # A tiny interval: due at every step, so every step is saved.
    config = _config(data_dir, checkpoint_every_minutes=1e-9, keep_checkpoints=10)
    summary = train.train_and_evaluate(config, workdir)
    out, err = capsys.readouterr()
    assert out.splitlines()[0] == (
        f'workdir {workdir}: initialized randomly; 11,537 parameters; 1 device(s) × 4 clips; '
        '3 steps per epoch; class weights 0.133, 0.866'
    )
    assert 'tracked_metric' not in err and 'Metadata file' not in err
    # Not a terminal: the bar draws when it starts and when it closes, not at every step.
    assert err.count('epoch 1/1') <= 2, err
    assert summary['steps'] == 3 and summary['device_count'] == 1
    assert sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit()) == [1, 2, 3]
    assert json.loads((workdir / 'config.json').read_text())['checkpoint_every_minutes'] == 1e-9

    for path in (workdir / 'checkpoints' / '3' / 'train_state').rglob('*'):
        if path.is_file() and path.parent.name == 'd':
            path.write_bytes(path.read_bytes()[:5])
    workdir_layout.write_summary(workdir, {'device_count': 4})  # as if trained on 4 devices so far
    longer = _config(data_dir, checkpoint_every_minutes=0.0, keep_checkpoints=10, num_epochs=2)
    summary = train.train_and_evaluate(longer, workdir, devices_note='2 CPU devices (one per core)')
    out, err = capsys.readouterr()
    assert (
        out.splitlines()[0].startswith(f'workdir {workdir}: resumed from step 2; ')
        and '; 2 CPU devices (one per core) × 4 clips; 3 steps per epoch; class weights 0.133, 0.866' in out
    )
    warnings = [line for line in err.splitlines() if line.startswith('warning: ')]
    assert warnings[0] == (
        f'warning: checkpoint step 3 in {workdir}: train_state/ is unreadable ('
        + warnings[0].split('train_state/ is unreadable (', 1)[1]
    )
    assert warnings[0].endswith(
        f'; resumed from step 2, the newest readable one; step 3 moved to {workdir}/checkpoints-broken/3'
    )
    assert warnings[1] == (
        f'warning: workdir {workdir} trained on 4 device(s) so far and goes on with 1: its numbers will '
        'differ from then on (rounding in the reductions)'
    )
    assert summary['steps'] == 6
    # Step 3 saved again, intact; the broken copy kept aside.
    steps = sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit())
    assert steps == [1, 2, 3, 6]
    assert (workdir / 'checkpoints-broken' / '3' / 'train_state').is_dir()
    _, variables = checkpoints.load_model(workdir / 'checkpoints' / '3')
    assert 'convlstm_0' in variables['params']
