"""--select and --member in evaluate, predict and visualize: one definition (cli.py), one member of a
population's workdir per command, bad members refused in one line with nothing written."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from absl import flags

from convlstm_jax import checkpoints, cli, predict, visualize
from convlstm_jax.evaluate import cli as evaluate_cli
from convlstm_jax.models import build_model

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
COMMANDS = {'evaluate': evaluate_cli, 'predict': predict, 'visualize': visualize}
SMOKE_CLIP = (4, 16, 20, 4)  # configs/two_layer.py:smoke: (T, H, W, C)


def test_the_selections_of_the_command_line_are_those_of_checkpoints():
    assert cli.SELECTIONS == checkpoints.SELECTIONS


@pytest.mark.parametrize('command', sorted(COMMANDS))
def test_select_and_member_come_from_one_definition(command):
    flag_values = flags.FlagValues()
    COMMANDS[command].define_flags(flag_values, [command])
    defined_in_cli = {flag.name for flag in flag_values.flags_by_module_dict()['convlstm_jax.cli']}
    assert {'select', 'member'} <= defined_in_cli
    assert flag_values['member'].default == 'best'
    assert flag_values['select'].default == 'best_auc'


@pytest.fixture(scope='module')
def solo_model_dir(tmp_path_factory) -> pathlib.Path:
    """A one-model directory (random weights, positive variances) at the smoke clip shape."""
    model = {'filters': [3], 'use_bias': True, 'batchnorm_last': True}
    time_steps, height, width, channels = SMOKE_CLIP
    contract = {'height': height, 'width': width, 'time_steps': time_steps, 'frames_per_step': channels}
    contract.update({'pixel_scale': 1 / 255, 'resize': 'nearest', 'horizon': 6})
    clips = np.zeros((1, *SMOKE_CLIP), np.uint8)
    # Shapes only (running the init costs seconds), then random weights.
    shapes = jax.eval_shape(lambda: build_model(model).init(jax.random.PRNGKey(0), clips, train=False))
    rng = np.random.default_rng(0)
    variables = jax.tree.map(lambda s: rng.normal(0, 0.3, s.shape).astype(s.dtype), shapes)
    variables['batch_stats']['batchnorm_0']['var'] = np.full(3, 0.05, np.float32)
    path = tmp_path_factory.mktemp('member') / 'solo'
    checkpoints.save_model_dir(path, {'model': model, 'input': contract, 'source': {'test': True}}, variables)
    return path


@pytest.fixture(scope='module')
def clips_file(tmp_path_factory) -> pathlib.Path:
    path = tmp_path_factory.mktemp('member') / 'clips.npy'
    np.save(path, np.random.default_rng(0).integers(0, 256, (6, *SMOKE_CLIP), dtype=np.uint8))
    return path


def _predict(checkpoint, clips_file, out, *extra) -> int:
    arguments = ['--checkpoint', str(checkpoint), '--clips', str(clips_file), '--out', str(out)]
    return predict.main([*arguments, *extra])


def _one_line_error(capsys, expected: str) -> None:
    captured = capsys.readouterr()
    error = captured.err.strip()
    assert error.startswith('error: ') and expected in error, error
    assert '\n' not in error and 'Traceback' not in captured.err + captured.out


def test_a_solo_model_takes_member_best_and_0_and_refuses_others(
    solo_model_dir, clips_file, tmp_path, capsys
):
    outputs = {}
    for member in ('best', '0'):
        assert _predict(solo_model_dir, clips_file, tmp_path / f'{member}.npy', '--member', member) == 0
        outputs[member] = np.load(tmp_path / f'{member}.npy')
    np.testing.assert_array_equal(outputs['best'], outputs['0'])
    capsys.readouterr()
    for member in ('1', 'x'):
        out = tmp_path / f'bad-{member}.npy'
        assert _predict(solo_model_dir, clips_file, out, '--member', member) == 2
        _one_line_error(capsys, f'--member {member}: {solo_model_dir} holds one model, not a population')
        assert not out.exists()


@pytest.mark.parametrize('option', [['--member', '1'], ['--select', 'latest']])
def test_evaluate_of_the_2021_reference_takes_no_member(tmp_path, option):
    with pytest.raises(SystemExit) as exit_info:
        evaluate_cli.main(['--reference', str(tmp_path), *option, '--out', str(tmp_path / 'out')])
    assert exit_info.value.code == 'error: --select and --member apply to --checkpoint only'


# ---------------------------------------------------------------------------------------------------------
# A population of 2, trained once for the module


@pytest.fixture(scope='module')
def population_workdir(tmp_path_factory) -> pathlib.Path:
    """`python -m convlstm_jax.main --config configs/two_layer.py:smoke --config.population=2` (~40 s)."""
    workdir = tmp_path_factory.mktemp('member') / 'population'
    command = [sys.executable, '-m', 'convlstm_jax.main', '--config', 'configs/two_layer.py:smoke']
    command += ['--workdir', str(workdir), '--config.population=2']
    env = {**os.environ, 'PYTHONPATH': str(REPO_ROOT), 'JAX_PLATFORMS': 'cpu'}
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def _best_member(workdir: pathlib.Path) -> int:
    return int(json.loads((workdir / 'summary.json').read_text())['best_auc']['member'])


@pytest.mark.slow
def test_predict_runs_the_member_asked_for(population_workdir, clips_file, tmp_path):
    probabilities = {}
    for member in ('0', '1', 'best'):
        out = tmp_path / f'{member}.npy'
        assert _predict(population_workdir, clips_file, out, '--member', member) == 0
        probabilities[member] = np.load(out)
    assert not np.allclose(probabilities['0'], probabilities['1'])
    np.testing.assert_array_equal(probabilities['best'], probabilities[str(_best_member(population_workdir))])
    default = tmp_path / 'default.npy'
    assert _predict(population_workdir, clips_file, default) == 0
    np.testing.assert_array_equal(np.load(default), probabilities['best'])


@pytest.mark.slow
def test_evaluate_reports_the_member(population_workdir, tmp_path, capsys):
    best = _best_member(population_workdir)
    reports = {}
    for member in ('best', str(best), str(1 - best)):
        out = tmp_path / member
        arguments = ['--checkpoint', str(population_workdir), '--member', member, '--out', str(out)]
        assert evaluate_cli.main([*arguments, '--split', 'validation', '--num_resamples', '20']) == 0
        reports[member] = json.loads((out / 'metrics.json').read_text())
        assert reports[member]['source']['member_asked'] == member
        named = f'population member {reports[member]["source"]["member"]} (--member {member})'
        assert named in (out / 'report.md').read_text()
    assert reports['best']['source']['member'] == reports[str(best)]['source']['member'] == best
    assert reports[str(1 - best)]['source']['member'] == 1 - best
    assert reports['best']['predictors'] == reports[str(best)]['predictors']
    assert f'(member {best})' in capsys.readouterr().out
    # docs/reproduction.md scores each member on the test split of a tank with another seed.
    fresh = tmp_path / 'fresh'
    arguments = ['--checkpoint', str(population_workdir), '--member=1', '--out', str(fresh), '--split=test']
    assert evaluate_cli.main([*arguments, '--config.data.synthetic.seed=1000', '--num_resamples=20']) == 0
    report = json.loads((fresh / 'metrics.json').read_text())
    assert report['source']['data']['synthetic']['seed'] == 1000
    assert (report['source']['member'], report['frames']['split']) == (1, 'test')


@pytest.mark.slow
def test_visualize_draws_the_member_asked_for(population_workdir, tmp_path, capsys):
    out = tmp_path / 'clip.png'
    arguments = ['--checkpoint', str(population_workdir), '--member', '1', '--t', '30', '--out', str(out)]
    assert visualize.main(arguments) == 0
    assert out.stat().st_size > 0 and f'wrote {out}' in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize(
    ('member', 'select', 'expected'),
    [
        ('2', 'best_auc', 'holds members 0..1'),
        ('-1', 'best_auc', 'holds members 0..1'),
        ('x', 'best_auc', "--member must be 'best' or a member index 0..1, found 'x'"),
        ('best', 'latest', '--select latest needs --member 0..1'),
    ],
)
def test_bad_members_of_a_population_are_one_line_errors(
    population_workdir, clips_file, tmp_path, capsys, member, select, expected
):
    selection = ['--member', member, '--select', select]
    base = ['--checkpoint', str(population_workdir), *selection]
    runs = {
        'evaluate': (evaluate_cli.main, ['--out', str(tmp_path / 'evaluation')]),
        'predict': (predict.main, ['--clips', str(clips_file), '--out', str(tmp_path / 'p.npy')]),
        'visualize': (visualize.main, ['--t', '30', '--out', str(tmp_path / 'v.png')]),
    }
    for command, (main, rest) in runs.items():
        assert main([*base, *rest]) == 2, command
        _one_line_error(capsys, expected)
    assert not list(tmp_path.iterdir())  # nothing written
