"""Model directories: atomic writes, and load_model over a model directory, a training workdir or a step."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap

import numpy as np
import orbax.checkpoint as ocp
import pytest

from convlstm_jax import checkpoints

SPEC = {'model': {'filters': [2]}, 'input': {'height': 4, 'width': 4, 'time_steps': 2, 'frames_per_step': 1}}


def _variables(value: float) -> dict:
    return {
        'params': {'convlstm_0': {'kernel': np.full((3, 3, 1, 8), value, np.float32)}},
        'batch_stats': {'batchnorm_0': {'mean': np.zeros(2, np.float32), 'var': np.ones(2, np.float32)}},
    }


def _workdir(tmp_path, records, with_metrics=True):
    """A training workdir as train.py lays it out: model.json + an orbax CheckpointManager with metrics."""
    options = (
        ocp.CheckpointManagerOptions(best_fn=lambda m: m['val_auc'], best_mode='max')
        if with_metrics
        else None
    )
    manager = ocp.CheckpointManager(
        tmp_path / 'checkpoints', item_names=('variables', 'train_state'), options=options
    )
    for step, metrics in records:
        args = ocp.args.Composite(
            variables=ocp.args.StandardSave(_variables(step)),
            train_state=ocp.args.StandardSave({'step': np.int64(step)}),
        )
        manager.save(step, args=args, metrics=metrics if with_metrics else None)
    manager.wait_until_finished()
    manager.close()
    (tmp_path / 'model.json').write_text(json.dumps({'format': checkpoints.MODEL_FORMAT, **SPEC}))
    return tmp_path


def _kernel_value(variables) -> float:
    return float(variables['params']['convlstm_0']['kernel'].flat[0])


def test_model_dir_round_trip_and_atomic_replace(tmp_path):
    path = tmp_path / 'model'
    checkpoints.save_model_dir(path, {**SPEC, 'source': {'keras_file': 'x.h5'}}, _variables(1.0))
    checkpoints.save_model_dir(path, SPEC, _variables(2.0))  # replaces the first
    assert sorted(p.name for p in tmp_path.iterdir()) == ['model']  # no temporary leftovers
    spec, variables = checkpoints.load_model(path)
    assert spec == {'format': checkpoints.MODEL_FORMAT, **SPEC}
    assert _kernel_value(variables) == 2.0
    kernel = variables['params']['convlstm_0']['kernel']
    assert type(kernel) is np.ndarray and kernel.dtype == np.float32 and kernel.shape == (3, 3, 1, 8)
    np.testing.assert_array_equal(variables['batch_stats']['batchnorm_0']['var'], np.ones(2))


def test_model_dir_spec_is_checked(tmp_path):
    with pytest.raises(ValueError, match=r"lacks the section\(s\) \['input'\]"):
        checkpoints.save_model_dir(tmp_path / 'm', {'model': {}}, _variables(0.0))
    assert not (tmp_path / 'm').exists()
    checkpoints.save_model_dir(tmp_path / 'm', SPEC, _variables(0.0))
    (tmp_path / 'm' / 'model.json').write_text(json.dumps({'format': 'other/2', **SPEC}))
    with pytest.raises(ValueError, match="expected format 'convlstm_jax.model/1', found 'other/2'"):
        checkpoints.load_model(tmp_path / 'm')


def test_workdir_selects_best_auc_best_loss_latest_and_step_dirs(tmp_path):
    workdir = _workdir(
        tmp_path,
        [
            (10, {'val_loss': 0.3, 'val_auc': 0.80}),
            (20, {'val_loss': 0.2, 'val_auc': 0.70}),
            (30, {'val_loss': 0.4, 'val_auc': float('nan')}),
        ],
    )
    assert _kernel_value(checkpoints.load_model(workdir)[1]) == 10  # best_auc is the default
    assert _kernel_value(checkpoints.load_model(workdir, 'best_loss')[1]) == 20
    assert _kernel_value(checkpoints.load_model(workdir, 'latest')[1]) == 30
    spec, variables = checkpoints.load_model(workdir / 'checkpoints' / '20')
    assert spec['model'] == SPEC['model'] and _kernel_value(variables) == 20


def test_workdir_without_metrics_needs_latest(tmp_path):
    workdir = _workdir(tmp_path, [(5, None)], with_metrics=False)
    with pytest.raises(FileNotFoundError, match="metric 'val_auc'.*use --select latest"):
        checkpoints.load_model(workdir)
    assert _kernel_value(checkpoints.load_model(workdir, 'latest')[1]) == 5


def test_load_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown select 'best'"):
        checkpoints.load_model(tmp_path, select='best')
    with pytest.raises(FileNotFoundError, match='does not exist'):
        checkpoints.load_model(tmp_path / 'nowhere')
    with pytest.raises(ValueError, match='is not a model directory'):
        checkpoints.load_model(tmp_path)
    (tmp_path / 'checkpoints').mkdir()
    (tmp_path / 'model.json').write_text(json.dumps({'format': checkpoints.MODEL_FORMAT, **SPEC}))
    with pytest.raises(FileNotFoundError, match=f'no checkpoint yet in {tmp_path}$'):
        checkpoints.load_model(tmp_path, select='latest')


def test_a_workdir_with_a_config_but_no_checkpoint_yet(tmp_path):
    (tmp_path / 'config.json').write_text('{}')  # a run in its first minutes
    with pytest.raises(FileNotFoundError, match=f'^no checkpoint yet in {tmp_path}$'):
        checkpoints.load_model(tmp_path)


def test_input_contract_and_model_fields_from_config():
    from convlstm_jax.config import base_config

    config = base_config()
    assert checkpoints.input_contract(config.data) == {
        'height': 120,
        'width': 160,
        'time_steps': 30,
        'frames_per_step': 4,
        'pixel_scale': 1 / 255,
        'resize': 'nearest',
        'horizon': 45,
    }
    fields = checkpoints.model_fields(config.model)
    assert fields['filters'] == [16] and json.loads(json.dumps(fields)) == fields


def _truncate(path, size):
    path.write_bytes(path.read_bytes()[:size])


def _corrupt_metadata(workdir):
    _truncate(workdir / 'checkpoints' / '2' / 'variables' / '_METADATA', 20)


def _corrupt_manifest(workdir):
    (workdir / 'checkpoints' / '2' / 'variables' / 'manifest.ocdbt').write_bytes(b'')


def _corrupt_data(workdir):
    for path in (workdir / 'checkpoints' / '2' / 'variables').rglob('*'):
        if path.is_file() and path.parent.name == 'd':
            _truncate(path, 5)


@pytest.mark.parametrize(
    'corrupt, unreadable',
    [
        (_corrupt_metadata, r'variables/_METADATA is unreadable \(not valid JSON: Unterminated string'),
        (_corrupt_manifest, r'variables/manifest.ocdbt is unreadable \(empty file\)'),
        (_corrupt_data, r'variables/ is unreadable \(orbax cannot read its tree metadata\)'),
    ],
    ids=['truncated_metadata', 'empty_manifest', 'truncated_data'],
)
def test_a_corrupt_checkpoint_is_one_line_naming_the_step_and_what(tmp_path, corrupt, unreadable):
    workdir = _workdir(
        tmp_path, [(1, {'val_loss': 0.3, 'val_auc': 0.8}), (2, {'val_loss': 0.2, 'val_auc': 0.9})]
    )
    corrupt(workdir)
    with pytest.raises(
        checkpoints.CheckpointError, match=f'^checkpoint step 2 in {workdir}: {unreadable}'
    ) as e:
        checkpoints.load_model(workdir)
    assert isinstance(e.value, ValueError) and '\n' not in str(e.value)
    assert e.value.__cause__ is None and (e.value.__context__ is None or e.value.__suppress_context__)
    assert (
        _kernel_value(checkpoints.load_model(workdir / 'checkpoints' / '1')[1]) == 1
    )  # the other step is fine


_LOAD_CORRUPT = textwrap.dedent(
    """
    import sys
    from convlstm_jax import checkpoints
    for _ in range(5):  # the asyncio noise came from a race: try it a few times
        try:
            checkpoints.load_model(sys.argv[1])
        except checkpoints.CheckpointError as e:
            print(e)
    """
)


def test_a_corrupt_checkpoint_makes_no_noise(tmp_path):
    """No 'Event loop is closed' and no orbax logging on stderr: only the error a command prints."""
    workdir = _workdir(tmp_path, [(2, {'val_loss': 0.2, 'val_auc': 0.9})])
    _corrupt_data(workdir)
    result = subprocess.run(
        [sys.executable, '-c', _LOAD_CORRUPT, str(workdir)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count('checkpoint step 2 in') == 5
    assert 'Event loop is closed' not in result.stderr and 'Traceback' not in result.stderr, result.stderr


def test_normal_loading_and_saving_log_no_orbax_warnings(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    manager = checkpoints.TrainingCheckpoints(tmp_path, keep=2)
    manager.save(1, _variables(1.0), {'step': np.int32(1)})  # without metrics, as a stop signal saves
    manager.wait_until_finished()
    manager.close()
    (tmp_path / 'model.json').write_text(json.dumps({'format': checkpoints.MODEL_FORMAT, **SPEC}))
    assert _kernel_value(checkpoints.load_model(tmp_path, 'latest')[1]) == 1.0
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not warnings, warnings


def test_unretrieved_reads_of_a_corrupt_checkpoint_are_dropped_and_other_task_errors_kept():
    asyncio_logger = logging.getLogger('asyncio')

    def passes(error: Exception) -> bool:
        record = asyncio_logger.makeRecord(
            'asyncio',
            logging.ERROR,
            __file__,
            1,
            'Task exception was never retrieved\nfuture: <Task>',
            (),
            (type(error), error, None),
        )
        return all(f.filter(record) for f in asyncio_logger.filters)

    assert not passes(ValueError('OUT_OF_RANGE: Error reading "x/.zarray" in OCDBT database at local file'))
    assert passes(ValueError('something else went wrong'))
    assert passes(RuntimeError('OCDBT database'))
