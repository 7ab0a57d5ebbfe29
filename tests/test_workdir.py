"""The workdir: model.json from a config, the same-architecture check, and what a resumed run may change."""

from __future__ import annotations

import json

import pytest

from configs import one_layer, two_layer
from convlstm_jax import io, workdir


def test_architecture_mismatch_names_both():
    ours = workdir.model_spec(one_layer.get_config())
    other = workdir.model_spec(two_layer.get_config())
    workdir.check_same_architecture(ours, ours, 'workdir w')
    with pytest.raises(
        ValueError, match=r'workdir w holds .*filters=\[16\].*config asks for filters=\[16, 32\]'
    ):
        workdir.check_same_architecture(ours, other, 'workdir w')


def test_a_resumed_run_may_lengthen_and_pace_but_not_change_the_run():
    started = one_layer.get_config('smoke')
    saved = workdir.config_dict(started)
    longer = one_layer.get_config('smoke')
    longer.num_epochs, longer.eval_every_steps, longer.log_every_steps = 7, 5, 100
    longer.checkpoint_every_minutes, longer.keep_checkpoints = 1.5, 4
    longer.data.pipeline, longer.data.data_dir, longer.model.remat = 'numpy', '/elsewhere', False
    workdir.check_same_run('runs/x', saved, longer)
    assert workdir.config_differences(saved, longer) == {}

    other = one_layer.get_config('smoke')
    other.learning_rate, other.seed = 0.0005, 1
    with pytest.raises(ValueError) as error:
        workdir.check_same_run('runs/x', saved, other)
    assert str(error.value) == (
        'workdir runs/x was started with learning_rate=8e-05, seed=0; this run asks for '
        'learning_rate=0.0005, seed=1: use another --workdir, or the same values'
    )
    # steps_per_epoch moves the epoch boundaries, and with them the shuffles: refused.
    other = one_layer.get_config('smoke')
    other.steps_per_epoch, other.data.source, other.class_weights = 5, 'frames', 'auto'
    assert workdir.config_differences(saved, other) == {
        'class_weights': ([0.133, 0.866], 'auto'),
        'data.source': ('synthetic', 'frames'),
        'steps_per_epoch': (3, 5),
    }
    with pytest.raises(ValueError, match='data.source="synthetic", steps_per_epoch=3; this run asks for'):
        workdir.check_same_run('runs/x', saved, other)


def test_fields_an_older_config_json_lacks_are_not_compared():
    config = one_layer.get_config('smoke')
    saved = workdir.config_dict(config)
    del saved['checkpoint_every_minutes'], saved['data']['label_file']
    config.data.label_file = 'labels.csv'
    assert workdir.config_differences(saved, config) == {}


def test_config_and_summary_files(tmp_path):
    config = one_layer.get_config('smoke')
    assert workdir.read_config(tmp_path) is None and workdir.training_config(tmp_path) is None
    workdir.write_config(tmp_path, config)
    assert json.loads((tmp_path / 'config.json').read_text())['data']['height'] == 16
    assert workdir.read_config(tmp_path) == workdir.config_dict(config)
    step_dir = tmp_path / 'checkpoints' / '3'
    step_dir.mkdir(parents=True)
    assert workdir.training_config(step_dir) == workdir.config_dict(config)  # from a step directory too

    assert workdir.recorded_device_count(tmp_path) is None
    workdir.write_summary(tmp_path, {'device_count': 2, 'steps': None})
    assert workdir.recorded_device_count(tmp_path) == 2

    (tmp_path / 'config.json').write_text('{"seed": ')
    with pytest.raises(ValueError, match='config.json is not valid JSON'):
        workdir.read_config(tmp_path)
    io.write_json(tmp_path / 'config.json', [1, 2])
    with pytest.raises(ValueError, match='holds no config'):
        workdir.read_config(tmp_path)
