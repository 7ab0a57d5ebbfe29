"""The benchmark: FLOP count, row planning, the Keras model, and tiny end-to-end runs (no timing)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from convlstm_jax import benchmark
from convlstm_jax.benchmark import cli, keras_models, peers

TINY = ['--shape', '4,16,20,4', '--batch', '2', '--steps', '2', '--warmup', '1']
ROW_FIELDS = {
    'framework': str,
    'model': str,
    'mode': str,
    'dtype': str,
    'batch': int,
    'shape': list,
    'clips_per_s': float,
    'step_s_median': float,
    'step_s_iqr': float,
    'compile_s': float,
    'peak_mem_bytes': int,
    'peak_mem_delta_bytes': int,
    'gflop_per_clip': float,
    'gflop_per_s': float,
}


def test_flops_match_the_design_numbers():
    two_layer = benchmark.flops_per_clip(benchmark.load_config('two_layer').model, benchmark.DEFAULT_SHAPE)
    one_layer = benchmark.flops_per_clip(benchmark.load_config('one_layer').model, benchmark.DEFAULT_SHAPE)
    assert two_layer['forward'] / 1e9 == pytest.approx(27.45, abs=0.005)
    assert two_layer['train'] / 1e9 == pytest.approx(79.77, abs=0.01)  # design.md: ≈ 80
    assert one_layer['forward'] / 1e9 == pytest.approx(12.887, abs=0.001)


def test_flops_reject_a_clip_too_small_for_the_model():
    with pytest.raises(ValueError, match='too small'):
        benchmark.flops_per_clip(benchmark.load_config('two_layer').model, (4, 5, 5, 4))


def test_unknown_model_names_the_known_ones():
    with pytest.raises(ValueError, match='one_layer'):
        benchmark.load_config('three_layer')


def test_plan_rows_vary_dtype_and_remat_for_this_project_only():
    rows = benchmark.plan_rows(
        models=['one_layer'],
        frameworks=['convlstm_jax', 'tf_keras'],
        modes=['train', 'infer'],
        dtypes=['float32', 'bfloat16'],
        remat=[False, True],
        pipelines=['numpy'],
    )
    labels = [row.label() for row in rows]
    assert labels.count('tf_keras one_layer train float32') == 1
    assert labels.count('tf_keras one_layer infer float32') == 1
    assert (
        sum(row.framework == 'convlstm_jax' and row.mode == 'train' and row.input == 'memory' for row in rows)
        == 4
    )
    assert not any(row.remat for row in rows if row.mode == 'infer' or row.framework != 'convlstm_jax')
    assert [row.dtype for row in rows if row.input == 'pipeline-numpy'] == ['float32', 'bfloat16']


def test_plan_rows_vary_devices_for_this_project_only():
    rows = benchmark.plan_rows(
        models=['two_layer'],
        frameworks=['convlstm_jax', 'tf_keras'],
        modes=['train'],
        dtypes=['float32'],
        remat=[True],
        pipelines=['numpy'],
        devices=[1, 2],
    )
    assert [(row.framework, row.input, row.devices) for row in rows] == [
        ('convlstm_jax', 'memory', 1),
        ('convlstm_jax', 'memory', 2),
        ('tf_keras', 'memory', 1),
        ('convlstm_jax', 'pipeline-numpy', 1),
        ('convlstm_jax', 'pipeline-numpy', 2),
    ]
    assert rows[1].label() == 'convlstm_jax two_layer train float32 remat 2 devices'


def test_the_default_end_to_end_rows_include_clips_cut_on_the_device():
    host = 'tfdata' if importlib.util.find_spec('tensorflow') is not None else 'numpy'
    assert cli.resolve_pipelines(['auto']) == [host, 'device']
    assert cli.resolve_pipelines(['none']) == []
    rows = benchmark.plan_rows(
        models=['one_layer'],
        frameworks=['convlstm_jax'],
        modes=['train'],
        dtypes=['float32'],
        remat=[False],
        pipelines=cli.resolve_pipelines(['auto']),
    )
    assert [row.input for row in rows] == ['memory', f'pipeline-{host}', 'device']
    assert rows[-1].label() == 'convlstm_jax one_layer train float32 device'


@pytest.mark.slow
def test_a_device_input_row_runs_at_a_tiny_shape():
    from convlstm_jax.benchmark import jax_rows

    tiny = dict(shape=(4, 16, 20, 4), batch=2, steps=2, warmup=1)
    row = jax_rows.run_convlstm_jax(
        benchmark.RowSpec('convlstm_jax', 'one_layer', 'train', input='device', **tiny)
    )
    assert row['steps_measured'] == 2 and row['clips_per_s'] > 0 and row['peak_mem_bytes'] > 0
    infer = benchmark.RowSpec('convlstm_jax', 'one_layer', 'infer', input='device', **tiny)
    with pytest.raises(ValueError, match="input 'device' feeds training steps only"):
        jax_rows.run_convlstm_jax(infer)


def test_bad_flags_say_what_was_expected(capsys):
    for flags in (
        ['--modes', 'fit'],
        ['--frameworks', 'caffe'],
        ['--shape', '30,120,160'],
        ['--devices', '0'],
        ['--batch', '4,0'],
    ):
        with pytest.raises(SystemExit) as exit_info:
            benchmark.main(flags)
        message = str(exit_info.value.code)  # exit status 1, the message on stderr
        assert message.startswith(f'error: {flags[0]}') and 'expected' in message and '\n' not in message
    with pytest.raises(SystemExit) as exit_info:
        benchmark.main(['--batch', '3', '--devices', '1,2'])
    assert exit_info.value.code == 'error: --batch 3 does not split evenly over [2] devices'
    with pytest.raises(SystemExit, match="^error: --models: unknown model 'three_layer'"):
        benchmark.main(['--models', 'three_layer'])


@pytest.mark.slow
def test_end_to_end_on_the_cpu_split_into_two_devices(tmp_path):
    """Each worker gets its own device count; the pmapped steps need both devices, or the row fails."""
    path = tmp_path / 'bench.json'
    args = ['--models', 'one_layer', '--frameworks', 'convlstm_jax', '--dtypes', 'float32', '--devices', '2']
    benchmark.main([*args, '--pipeline', 'numpy,device', *TINY, '--json', str(path)])
    rows = json.loads(path.read_text())
    assert [(r['mode'], r['input'], r['devices']) for r in rows] == [
        ('train', 'memory', 2),
        ('infer', 'memory', 2),
        ('train', 'pipeline-numpy', 2),
        ('train', 'device', 2),
    ]
    for row in rows:
        assert 'error' not in row, row['error']
        _check_fields(row)


def test_more_devices_than_exist_is_a_clear_error():
    import jax

    count = jax.local_device_count() + 1
    spec = benchmark.RowSpec('convlstm_jax', 'one_layer', 'infer', batch=count, devices=count)
    with pytest.raises(ValueError, match=f'{count} devices requested, {count - 1} found'):
        benchmark.step_devices(spec)


def test_module_imports_no_tensorflow():
    code = 'import sys, convlstm_jax.benchmark; print(sorted(m for m in sys.modules if "tensorflow" in m))'
    result = subprocess.run(
        [sys.executable, '-c', code], capture_output=True, text=True, check=True, cwd=benchmark.REPO_ROOT
    )
    assert result.stdout.strip() == '[]'


KERAS_2021_LAYERS = {
    'one_layer': ['InputLayer', 'ConvLSTM2D', 'BatchNormalization', 'GlobalMaxPooling2D', 'Dense'],
    'two_layer': [
        'InputLayer', 'ConvLSTM2D', 'TimeDistributed', 'TimeDistributed', 'ConvLSTM2D', 'GlobalMaxPooling2D',
        'Dense',
    ],
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize('model, parameters', [('one_layer', 11_537), ('two_layer', 66_849)])
def test_keras_model_is_the_2021_definition(model, parameters):
    keras = keras_models.tf_keras()
    model_config = benchmark.load_config(model).model
    built = keras_models.keras_classifier(model_config, (30, 120, 160, 4), logits=False, keras=keras)
    assert built.count_params() - _batchnorm_statistics(built) == parameters
    assert [type(layer).__name__ for layer in built.layers] == KERAS_2021_LAYERS[model]
    assert built.layers[-1].get_config()['activation'] == 'sigmoid'


def _batchnorm_statistics(keras_model) -> int:
    return sum(int(w.shape.num_elements()) for w in keras_model.non_trainable_weights)


@pytest.mark.slow
def test_end_to_end_rows_for_this_project_and_tf_keras(tmp_path, capsys):
    path = tmp_path / 'bench.json'
    args = ['--models', 'one_layer', '--frameworks', 'convlstm_jax,tf_keras', '--dtypes', 'bfloat16']
    benchmark.main([*args, '--remat', 'on', '--pipeline', 'numpy', *TINY, '--json', str(path)])
    rows = json.loads(path.read_text())
    assert [(r['framework'], r['mode'], r['input']) for r in rows] == [
        ('tf_keras', 'train', 'memory'),
        ('convlstm_jax', 'train', 'memory'),
        ('tf_keras', 'infer', 'memory'),
        ('convlstm_jax', 'infer', 'memory'),
        ('convlstm_jax', 'train', 'pipeline-numpy'),
    ]
    for row in rows:
        assert 'error' not in row, row['error']
        _check_fields(row)
        assert row['shape'] == [4, 16, 20, 4] and row['batch'] == 2 and row['steps_measured'] == 2
        assert row['speedup_vs_tf_keras'] > 0
    assert rows[1]['dtype'] == 'bfloat16' and rows[1]['remat'] is True
    table = capsys.readouterr().out
    assert '| one_layer | train | tf_keras |' in table and 'GFLOP forward' in table


@pytest.mark.slow
def test_end_to_end_keras3_on_tensorflow_two_layer(tmp_path):
    path = tmp_path / 'bench.json'
    args = ['--models', 'two_layer', '--frameworks', 'keras3-tensorflow', '--modes', 'train']
    benchmark.main([*args, *TINY, '--json', str(path)])
    (row,) = json.loads(path.read_text())
    assert 'error' not in row, row['error']
    assert row['framework'] == 'keras3-tensorflow' and row['model'] == 'two_layer'
    _check_fields(row)


@pytest.mark.slow
def test_a_failing_worker_becomes_a_row_with_its_error(tmp_path):
    spec = benchmark.RowSpec(
        'keras3-tensorflow', 'one_layer', 'train', dtype='bfloat16', shape=(4, 16, 20, 4)
    )
    row = benchmark.run_in_subprocess(spec, tmp_path, 0, timeout_s=600)
    assert 'float32' in row['error']
    assert 'failed' in benchmark.markdown_table([row])


def _check_fields(row: dict) -> None:
    for name, kind in ROW_FIELDS.items():
        assert isinstance(row[name], kind), (name, row.get(name))
    assert row['framework'] in benchmark.FRAMEWORKS and row['mode'] in benchmark.MODES
    assert row['clips_per_s'] > 0 and row['peak_mem_bytes'] > 0


def test_plan_rows_run_torch_once_per_model_and_mode_in_float32():
    rows = benchmark.plan_rows(
        models=['one_layer'],
        frameworks=['torch', 'torch-compile', 'convlstm_jax'],
        modes=['train', 'infer'],
        dtypes=['bfloat16'],
        remat=[True],
        pipelines=[],
    )
    assert [row.label() for row in rows if row.framework != 'convlstm_jax'] == [
        'torch one_layer train float32',
        'torch-compile one_layer train float32',
        'torch one_layer infer float32',
        'torch-compile one_layer infer float32',
    ]


def test_frameworks_without_their_packages_are_skipped_with_the_reason(monkeypatch, capsys):
    monkeypatch.setattr(cli, 'available_frameworks', lambda: ['tf_keras', 'convlstm_jax'])
    assert cli.resolve_frameworks(['all']) == ['tf_keras', 'convlstm_jax']
    err = capsys.readouterr().err
    assert 'skipping the torch rows: they need torch' in err
    assert 'skipping the keras3-torch rows: they need keras ≥ 3, torch' in err
    with pytest.raises(SystemExit, match='torch-compile needs torch'):
        cli.resolve_frameworks(['torch-compile'])


def test_torch_rows_are_planned_by_default_wherever_torch_is_installed():
    installed = importlib.util.find_spec('torch') is not None
    assert ('torch' in peers.available_frameworks()) == installed
    assert ('torch-compile' in peers.available_frameworks()) == installed


@pytest.mark.slow
def test_end_to_end_torch_rows(tmp_path):
    pytest.importorskip('torch', reason='torch is not installed (the optional `peers` extra)')
    path = tmp_path / 'bench.json'
    args = ['--models', 'two_layer', '--frameworks', 'torch,torch-compile,keras3-torch,tf_keras']
    benchmark.main([*args, *TINY, '--json', str(path)])
    rows = json.loads(path.read_text())
    assert [(r['framework'], r['mode']) for r in rows] == [
        (framework, mode)
        for mode in ('train', 'infer')
        for framework in ('tf_keras', 'keras3-torch', 'torch', 'torch-compile')
    ]
    for row in rows:
        assert 'error' not in row, row['error']
        _check_fields(row)
        assert row['gflop_per_clip'] == next(r for r in rows if r['mode'] == row['mode'])['gflop_per_clip']
        assert 'torch' in row['versions'] or row['framework'] == 'tf_keras'


def test_plan_rows_for_compiled_memory_are_this_projects_training_steps_per_batch():
    rows = benchmark.plan_rows(
        models=['two_layer'],
        frameworks=['tf_keras', 'convlstm_jax'],
        modes=['train', 'infer'],
        dtypes=['float32'],
        remat=[False, True],
        pipelines=['numpy'],
        batches=[4, 64],
        measure='compile',
    )
    assert [row.label() for row in rows] == [
        'convlstm_jax two_layer train float32 compiled memory',
        'convlstm_jax two_layer train float32 remat compiled memory',
        'convlstm_jax two_layer train float32 batch 64 compiled memory',
        'convlstm_jax two_layer train float32 remat batch 64 compiled memory',
    ]


@pytest.mark.slow
def test_memory_analysis_at_tiny_size(tmp_path, capsys):
    path = tmp_path / 'bench.json'
    args = ['--models', 'two_layer', '--memory-analysis', '--remat', 'off,on', '--dtypes', 'float32']
    benchmark.main([*args, '--shape', '4,16,20,4', '--batch', '2,8', '--json', str(path)])
    rows = json.loads(path.read_text())
    assert [(r['batch'], r['remat']) for r in rows] == [(2, False), (2, True), (8, False), (8, True)]
    for row in rows:
        assert 'error' not in row, row['error']
        parts = row['compiled_argument_bytes'] + row['compiled_output_bytes'] - row['compiled_alias_bytes']
        assert row['compiled_peak_bytes'] == parts + row['compiled_temp_bytes'] > 0
    assert rows[2]['compiled_temp_bytes'] > rows[0]['compiled_temp_bytes']  # activations grow with the batch
    table = capsys.readouterr().out
    assert '| two_layer | float32 | off | 1 | 8 |' in table
