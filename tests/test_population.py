"""A population (config.population): member i equals the solo run with init seed i, member overrides reach
their member, a diverged member is frozen while the others go on, resume is exact, shapes stay shared.

Runs are `train.train_and_evaluate` of the 1-layer model (the quicker to compile) at :smoke size on the
'numpy' pipeline (no TensorFlow), in this process (one device) and, for the equivalence, in a subprocess with
two CPU devices.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from configs import one_layer
from convlstm_jax import checkpoints, population, train
from convlstm_jax import config as config_lib

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
TOLERANCE = 1e-5  # relative at tensor scale: max |a − b| / max |b| per array


def smoke_config(**fields):
    config = one_layer.get_config('smoke')
    config.data.pipeline = 'numpy'
    config.checkpoint_every_minutes = 0.0
    for name, value in fields.items():
        config_lib.set_field(config, name.replace('__', '.'), value)
    config_lib.check(config)
    return config


def train_losses(workdir: pathlib.Path, member: int | None = None) -> list[float]:
    rows = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
    return [r['loss'] for r in rows if r['split'] == 'train' and r.get('member') == member]


def params_of(workdir: pathlib.Path, member: int | None = None, select: str = 'latest') -> dict:
    return checkpoints.load_model(workdir, select, member)[1]['params']


def tensor_error(found: dict, expected: dict) -> float:
    errors = jax.tree.map(
        lambda a, b: float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30)), found, expected
    )
    return max(jax.tree.leaves(errors))


def member_equals_solo(root: pathlib.Path) -> dict:
    """Member 1 of a population from init seed 3 against the solo run from init seed 4."""
    train.train_and_evaluate(smoke_config(population=2, init_seed=3), root / 'population')
    train.train_and_evaluate(smoke_config(init_seed=4), root / 'solo')
    return {
        'losses': [train_losses(root / 'population', 1), train_losses(root / 'solo')],
        'params': tensor_error(params_of(root / 'population', 1), params_of(root / 'solo')),
    }


def _check_member_equals_solo(found: dict) -> None:
    population_losses, solo_losses = found['losses']
    assert len(solo_losses) == 3
    np.testing.assert_allclose(population_losses, solo_losses, rtol=TOLERANCE)
    assert found['params'] < TOLERANCE, found


def test_member_i_equals_the_solo_run_with_init_seed_i(tmp_path):
    _check_member_equals_solo(member_equals_solo(tmp_path))


_TWO_DEVICES = textwrap.dedent(
    """
    import json, pathlib, sys
    import jax
    sys.path[:0] = [{repo!r}, {tests!r}]
    import test_population
    assert jax.device_count() == 2, jax.devices()
    print(json.dumps(test_population.member_equals_solo(pathlib.Path({root!r}))))
    """
)


@pytest.mark.slow
def test_member_i_equals_the_solo_run_with_init_seed_i_on_two_devices(tmp_path):
    env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=2', 'JAX_PLATFORMS': 'cpu'}
    env['PYTHONPATH'] = os.pathsep.join([str(REPO_ROOT), env.get('PYTHONPATH', '')])
    script = _TWO_DEVICES.format(repo=str(REPO_ROOT), tests=str(REPO_ROOT / 'tests'), root=str(tmp_path))
    run = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    _check_member_equals_solo(result)


@pytest.mark.slow
def test_member_overrides_reach_their_member(tmp_path):
    overrides = {
        'learning_rate': (1e-3, 0.0, 3e-3),
        'l2': (0.0, 0.0, 1e-2),
        'class_weights': ((0.133, 0.866), (0.133, 0.866), (0.3, 0.7)),
        'model.dropout': (0.0, 0.0, 0.2),
        'model.recurrent_dropout': (0.0, 0.0, 0.1),
    }
    config = smoke_config(population=3, member_overrides=overrides)
    train.train_and_evaluate(config, tmp_path / 'population')
    solo = smoke_config(
        init_seed=2,
        learning_rate=3e-3,
        l2=1e-2,
        class_weights=(0.3, 0.7),
        model__dropout=0.2,
        model__recurrent_dropout=0.1,
    )
    train.train_and_evaluate(solo, tmp_path / 'solo')
    np.testing.assert_allclose(
        train_losses(tmp_path / 'population', 2), train_losses(tmp_path / 'solo'), rtol=TOLERANCE
    )
    assert tensor_error(params_of(tmp_path / 'population', 2), params_of(tmp_path / 'solo')) < TOLERANCE

    # Learning rate 0: the parameters stay those of the initialization (BatchNorm statistics still move).
    initial = train.fresh_state(config, population.hparams(config, np.zeros(1))).params
    kept = params_of(tmp_path / 'population', 1)
    jax.tree.map(np.testing.assert_array_equal, kept, population.take(initial, 1))
    assert tensor_error(params_of(tmp_path / 'population', 0), population.take(initial, 0)) > 1e-4

    summary = json.loads((tmp_path / 'population' / 'summary.json').read_text())
    assert [m['learning_rate'] for m in summary['members']] == [1e-3, 0.0, 3e-3]
    assert [m['init_seed'] for m in summary['members']] == [0, 1, 2]


@pytest.mark.slow
def test_a_diverged_member_is_frozen_and_resume_is_exact(tmp_path, caplog):
    """Member 1's penalty is infinite from the first step: it keeps its initial parameters and the others
    train. A run stopped after one epoch and resumed equals the run made in one go, frozen member included."""
    overrides = {'l2': (0.0, 1e38, 0.0)}
    whole = smoke_config(population=3, member_overrides=overrides, num_epochs=2)
    with caplog.at_level(logging.WARNING):
        summary = train.train_and_evaluate(whole, tmp_path / 'whole')
    assert [m['frozen_at_step'] for m in summary['members']] == [None, 1, None]
    assert 'member 1: training loss inf at step 1: frozen' in caplog.text
    initial = train.fresh_state(whole, population.hparams(whole, np.zeros(1))).params
    jax.tree.map(np.testing.assert_array_equal, params_of(tmp_path / 'whole', 1), population.take(initial, 1))
    for member in (0, 2):
        assert tensor_error(params_of(tmp_path / 'whole', member), population.take(initial, member)) > 1e-4

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        train.train_and_evaluate(smoke_config(population=3, member_overrides=overrides), tmp_path / 'resumed')
        train.train_and_evaluate(whole, tmp_path / 'resumed')
    assert caplog.text.count('member 1: training loss') == 1  # reported once, not again on resume
    for member in range(3):
        jax.tree.map(
            np.testing.assert_array_equal,
            params_of(tmp_path / 'resumed', member),
            params_of(tmp_path / 'whole', member),
        )


@pytest.mark.slow
def test_the_run_stops_when_every_member_has_diverged(tmp_path):
    config = smoke_config(population=2, member_overrides={'l2': (1e38, 1e38)})
    with pytest.raises(FloatingPointError, match='every member has diverged'):
        train.train_and_evaluate(config, tmp_path / 'run')


@pytest.mark.parametrize(
    'overrides, message',
    [
        ({'model.filters': ((8, 16), (8, 16))}, "cannot set 'model.filters': it changes the architecture"),
        ({'batch_size': (4, 8)}, "cannot set 'batch_size': it changes the architecture or the shapes"),
        ({'seed': (0, 1)}, "cannot set 'seed': it is shared by all members"),
        ({'learning_rate': (1e-3,)}, r'must list one value per member \(2\), found \(0.001,\)'),
        ({'model.dropout': (0.1, 1.0)}, r'dropout rates must be in \[0, 1\), found 1.0'),
        ({'class_weights': ('auto', (1.0,))}, "each value must be 'auto' or a pair"),
    ],
)
def test_member_overrides_that_cannot_be_are_refused(overrides, message):
    config = one_layer.get_config('smoke')
    config.population = 2
    config.member_overrides = overrides
    with pytest.raises(config_lib.ConfigError, match=message):
        config_lib.check(config)


def test_a_shape_changing_override_is_refused_in_one_line_and_writes_nothing(tmp_path):
    workdir = tmp_path / 'run'
    command = [
        sys.executable,
        '-m',
        'convlstm_jax.main',
        '--config',
        'configs/one_layer.py:smoke',
        '--workdir',
        str(workdir),
        '--config.population=2',
        "--config.member_overrides={'model.kernel_size': (3, 5)}",
    ]
    run = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot set 'model.kernel_size'" in lines[0], run.stderr
    assert not workdir.exists()


@pytest.mark.parametrize('x_batched, kernel_batched', [(True, False), (False, True), (True, True)])
@pytest.mark.parametrize('padding', ['same', 'valid'])
def test_the_members_convolutions_equal_one_member_at_a_time(x_batched, kernel_batched, padding):
    """conv.py's batching rule (shared input: kernels side by side; shared kernel: members folded into the
    batch; both per member: member by member) against each member's own convolution."""
    from convlstm_jax import conv

    members = 3
    rng = np.random.default_rng(0)
    x = rng.normal(size=(members, 2, 6, 7, 3)).astype(np.float32)
    kernel = rng.normal(size=(members, 3, 3, 3, 8)).astype(np.float32)
    xs, kernels = (x if x_batched else x[0]), (kernel if kernel_batched else kernel[0])

    def convolve(inputs, weights):
        return conv._xla_conv(inputs, weights, padding)  # noqa: SLF001

    in_axes = (0 if x_batched else None, 0 if kernel_batched else None)
    found = jax.jit(jax.vmap(convolve, in_axes=in_axes, axis_size=members))(xs, kernels)
    expected = [
        convolve(x[i if x_batched else 0], kernel[i if kernel_batched else 0]) for i in range(members)
    ]
    np.testing.assert_allclose(found, np.stack(expected), rtol=1e-5, atol=1e-5)
