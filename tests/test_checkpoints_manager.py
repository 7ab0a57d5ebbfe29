"""TrainingCheckpoints: retention (latest N + best by loss + best by AUC), metrics that survive a restart,
exact restore, and the workdir layout `load_model` reads."""

from __future__ import annotations

import numpy as np
import pytest

from convlstm_jax import checkpoints

SPEC = {
    'format': checkpoints.MODEL_FORMAT,
    'model': {'filters': [2]},
    'input': {'height': 4, 'width': 4, 'time_steps': 2, 'frames_per_step': 1},
}


def _items(step: int):
    variables = {'params': {'dense': {'kernel': np.full((2, 1), step, np.float32)}}, 'batch_stats': {}}
    train_state = {
        'step': np.int32(step),
        'rng': np.array([7, step], np.uint32),
        'opt': {'mu': np.arange(3.0)},
    }
    return variables, train_state


def _save_all(manager, records):
    for step, metrics in records:
        manager.save(step, *_items(step), metrics)
        manager.wait_until_finished()


def test_keeps_latest_and_both_bests_and_never_drops_the_latest(tmp_path):
    records = [
        (1, {'val_loss': 0.50, 'val_auc': 0.60}),
        (2, {'val_loss': 0.40, 'val_auc': 0.55}),  # best loss
        (3, {'val_loss': 0.45, 'val_auc': 0.70}),  # best AUC
        (4, None),  # a stop-signal save without metrics
        (5, {'val_loss': 0.60, 'val_auc': 0.50}),  # worst on both, but the latest
    ]
    manager = checkpoints.TrainingCheckpoints(tmp_path, keep=1)
    _save_all(manager, records)
    assert manager.all_steps() == [2, 3, 5]
    manager.close()

    # Metrics are on disk: after a restart the best steps stay, and load_model finds them.
    (tmp_path / checkpoints.MODEL_JSON).write_text(__import__('json').dumps(SPEC))
    manager = checkpoints.TrainingCheckpoints(tmp_path, keep=1)
    _save_all(manager, [(6, None)])
    assert manager.all_steps() == [2, 3, 6]
    manager.close()
    assert checkpoints.select_step(tmp_path / 'checkpoints', 'best_loss') == 2
    assert checkpoints.select_step(tmp_path / 'checkpoints', 'best_auc') == 3
    spec, variables = checkpoints.load_model(tmp_path, select='latest')
    assert spec['model'] == {'filters': [2]}
    np.testing.assert_array_equal(variables['params']['dense']['kernel'], np.full((2, 1), 6, np.float32))


def test_restore_is_exact(tmp_path):
    manager = checkpoints.TrainingCheckpoints(tmp_path, keep=2)
    variables, train_state = _items(3)
    variables['params']['dense']['kernel'] = np.random.default_rng(0).normal(size=(2, 1)).astype(np.float32)
    manager.save(3, variables, train_state)
    manager.wait_until_finished()
    assert manager.latest_step() == 3
    restored_vars, restored_state = manager.restore(3, *_items(0))
    manager.close()
    np.testing.assert_array_equal(
        restored_vars['params']['dense']['kernel'], variables['params']['dense']['kernel']
    )
    np.testing.assert_array_equal(restored_state['rng'], train_state['rng'])
    assert int(restored_state['step']) == 3
    assert restored_state['rng'].dtype == np.uint32


def test_saving_a_step_twice_is_a_no_op(tmp_path):
    manager = checkpoints.TrainingCheckpoints(tmp_path, keep=2)
    manager.save(1, *_items(1), {'val_loss': 0.5, 'val_auc': 0.5})
    manager.save(1, *_items(1))
    manager.wait_until_finished()
    assert manager.all_steps() == [1]
    manager.close()


def test_bad_keep_is_refused(tmp_path):
    with pytest.raises(ValueError, match='keep_checkpoints must be at least 1, got 0'):
        checkpoints.TrainingCheckpoints(tmp_path, keep=0)


def test_write_spec_is_checked_and_atomic(tmp_path):
    checkpoints.write_spec(tmp_path / 'model.json', SPEC)
    assert checkpoints.read_spec(tmp_path / 'model.json')['model'] == {'filters': [2]}
    assert not list(tmp_path.glob('.*tmp*'))
    with pytest.raises(ValueError, match='lacks the section'):
        checkpoints.write_spec(tmp_path / 'bad.json', {'model': {}})
