"""The benchmark's --population rows: K members in one vmapped step, for convlstm_jax only, clips/s counted
per member."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from convlstm_jax import benchmark
from convlstm_jax.benchmark import cli, jax_rows
from convlstm_jax.benchmark.harness import row_config

TINY = ['--shape', '4,16,20,4', '--batch', '2', '--steps', '2', '--warmup', '1']


def test_plan_rows_vary_the_population_for_this_project_only():
    rows = benchmark.plan_rows(
        models=['two_layer'],
        frameworks=['convlstm_jax', 'tf_keras'],
        modes=['train', 'infer'],
        dtypes=['float32'],
        remat=[True],
        pipelines=['numpy'],
        devices=[2],
        populations=[1, 4],
        batches=[2],
    )
    assert [(row.framework, row.mode, row.input, row.population) for row in rows] == [
        ('convlstm_jax', 'train', 'memory', 1),
        ('convlstm_jax', 'train', 'memory', 4),
        ('tf_keras', 'train', 'memory', 1),
        ('convlstm_jax', 'infer', 'memory', 1),
        ('convlstm_jax', 'infer', 'memory', 4),
        ('tf_keras', 'infer', 'memory', 1),
        ('convlstm_jax', 'train', 'pipeline-numpy', 1),
        ('convlstm_jax', 'train', 'pipeline-numpy', 4),
    ]
    assert rows[1].label() == 'convlstm_jax two_layer train float32 remat 2 devices population 4 batch 2'
    assert row_config(rows[1]).population == 4


def test_bad_population_flags_say_what_was_expected():
    for value in ('0', 'x', '1,,4', '-2'):
        with pytest.raises(SystemExit) as exit_info:
            benchmark.main(['--population', value])
        assert (
            exit_info.value.code
            == f'error: --population: expected positive integers like 1,4,8; got {value!r}'
        )


def test_other_frameworks_asked_for_a_population_are_told_they_run_one_model(monkeypatch, capsys):
    planned = []

    def run_no_rows(specs, **kwargs):
        planned.extend(specs)
        return []

    monkeypatch.setattr(cli, 'available_frameworks', lambda: ['tf_keras', 'convlstm_jax'])
    monkeypatch.setattr(cli, 'run_rows', run_no_rows)
    benchmark.main(['--models', 'one_layer', '--frameworks', 'tf_keras,convlstm_jax', '--population', '1,3'])
    err = capsys.readouterr().err
    assert '--population: only the convlstm_jax rows train populations; tf_keras run one model' in err
    assert {row.population for row in planned if row.framework == 'tf_keras'} == {1}
    assert {row.population for row in planned if row.framework == 'convlstm_jax'} == {1, 3}


@pytest.mark.slow  # tests/test_population.py proves member i = solo init seed i in the fast lane
def test_member_i_of_a_row_starts_as_the_solo_row_with_seed_plus_i():
    spec = benchmark.RowSpec(
        'convlstm_jax', 'one_layer', 'train', shape=(4, 16, 20, 4), batch=2, population=3
    )
    config = row_config(spec)
    members = jax_rows.initial_state(config, seed=5)
    config.population = 1
    for i in range(3):
        solo = jax_rows.initial_state(config, seed=5 + i)
        for stacked, alone in zip(jax.tree.leaves(members.params), jax.tree.leaves(solo.params), strict=True):
            np.testing.assert_array_equal(stacked[i], alone)
    assert members.frozen.shape == (3,) and not members.frozen.any()
    assert members.hparams['learning_rate'].shape == (3,)


@pytest.mark.slow
def test_end_to_end_population_rows_count_clips_per_member(tmp_path, capsys):
    path = tmp_path / 'bench.json'
    args = ['--models', 'one_layer', '--frameworks', 'convlstm_jax', '--dtypes', 'float32', '--remat', 'off']
    benchmark.main([*args, '--population', '2', '--pipeline', 'none', *TINY, '--json', str(path)])
    rows = json.loads(path.read_text())
    assert [(row['mode'], row['population']) for row in rows] == [('train', 2), ('infer', 2)]
    for row in rows:
        assert 'error' not in row, row['error']
        assert row['clips_per_s'] == pytest.approx(2 * row['batch'] / row['step_s_median'])
        assert row['clips_counted'].startswith('per member')
    table = capsys.readouterr().out
    assert "clips/s counts every member's clips" in table
    assert '| one_layer | train | convlstm_jax | float32 | off | 1 | memory | 2 | 2 |' in table
