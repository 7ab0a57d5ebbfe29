"""Every command line the same way: `--help` exits 0 and lists each option with its help; the commands that
read a trained model take its workdir's config through the one loader and answer `--config.FIELD=VALUE`
overrides alike (an architecture override refused in one line, a data override reaching the data, an unknown
field one line with status 1); a corrupt checkpoint is one line and status 2; nothing is written on errors;
and every documented command of these modules parses."""

from __future__ import annotations

import importlib
import json
import os
import pathlib
import shlex
import subprocess
import sys

import numpy as np
import pytest
from absl import flags

from convlstm_jax import cli

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

# The commands on cli.run: module → its options are defined by module.define_flags.
IN_PROCESS = {
    'convlstm_jax.evaluate': 'convlstm_jax.evaluate.cli',
    'convlstm_jax.predict': 'convlstm_jax.predict',
    'convlstm_jax.visualize': 'convlstm_jax.visualize',
    'convlstm_jax.keras_io': 'convlstm_jax.keras_io.cli',
    'convlstm_jax.data.prepare': 'convlstm_jax.data.prepare',
    'convlstm_jax.data.pipeline': 'convlstm_jax.data.pipeline',
    'convlstm_jax.data.tank_video': 'convlstm_jax.data.tank_video',
    'convlstm_jax.benchmark': 'convlstm_jax.benchmark.cli',
}


def _options(module) -> dict[str, flags.Flag]:
    """The command's options (not the --config.FIELD overrides config_flags adds per field)."""
    values = flags.FlagValues()
    module.define_flags(values, ['command'])
    return {name: values[name] for name in values if not name.startswith('config.')}


@pytest.mark.parametrize('command', sorted(IN_PROCESS))
def test_help_exits_0_and_lists_every_option_with_its_help(command, capsys):
    module = importlib.import_module(IN_PROCESS[command])
    with pytest.raises(SystemExit) as exit_info:
        module.main(['--help'])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    options = _options(module)
    assert options
    for name, flag in options.items():
        shown = f'--[no]{name}:' if flag.boolean else f'--{name}:'
        assert shown in text, (shown, text)
        assert flag.help and ' '.join(flag.help.split()[:3]) in ' '.join(text.split()), (name, text)
        if flag.default is not None and name != 'config':
            assert f'(default: {flag.default_as_str})' in ' '.join(text.split()), (name, text)


@pytest.mark.parametrize('command', ['convlstm_jax.main'])
def test_help_of_main_on_absl_global_flags(command):
    result = subprocess.run(
        [sys.executable, '-m', command, '--help'],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, 'JAX_PLATFORMS': 'cpu'},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for option in ('--config:', '--workdir:', '--cpu_devices:', '--[no]print_config:'):
        assert option in result.stdout, option


# ---------------------------------------------------------------------------------------------------------
# A trained model: a workdir with config.json, model.json and a checkpoint step


def _tiny_config():
    from convlstm_jax import config as config_lib

    config = config_lib.apply_variant(config_lib.base_config(), 'smoke')
    config.model.filters = (2,)
    config.data.pipeline = 'numpy'
    return config


@pytest.fixture(scope='module')
def trained_workdir(tmp_path_factory) -> pathlib.Path:
    import jax
    import orbax.checkpoint as ocp

    from convlstm_jax import models, workdir

    config = _tiny_config()
    data = config.data
    model = models.build_model(config.model)
    shape = (1, data.time_steps, data.height, data.width, data.frames_per_step)
    init = jax.jit(model.init)  # one compile, not op by op
    variables = jax.tree.map(np.asarray, dict(init(jax.random.PRNGKey(0), np.zeros(shape, np.uint8))))
    path = tmp_path_factory.mktemp('commands') / 'run'
    manager = ocp.CheckpointManager(path / 'checkpoints', item_names=('variables',))
    manager.save(2, args=ocp.args.Composite(variables=ocp.args.StandardSave(variables)))
    manager.wait_until_finished()
    manager.close()
    workdir.write_config(path, config)
    (path / 'model.json').write_text(json.dumps(workdir.model_spec(config)))
    return path


def _arguments(command: str, checkpoint: pathlib.Path, out: pathlib.Path) -> list[str]:
    common = ['--checkpoint', str(checkpoint), '--cpu_devices', '1']
    return {
        'evaluate': [*common, '--select', 'latest', '--out', str(out)],
        'predict': [*common, '--select', 'latest', '--video', 'tank.mp4', '--out', str(out)],
        'visualize': [*common, '--select', 'latest', '--t', '30', '--out', str(out)],
    }[command]


def _command(command: str):
    return importlib.import_module(
        {'evaluate': 'convlstm_jax.evaluate.cli', 'predict': 'convlstm_jax.predict'}.get(
            command, f'convlstm_jax.{command}'
        )
    )


WORKDIR_COMMANDS = ('evaluate', 'predict', 'visualize')


def _exit_message(command, arguments) -> str:
    with pytest.raises(SystemExit) as exit_info:
        _command(command).main(arguments)
    assert isinstance(exit_info.value.code, str), exit_info.value.code  # Python exits 1 with a message
    return exit_info.value.code


def test_every_workdir_command_refuses_an_architecture_override_in_the_same_line(trained_workdir, tmp_path):
    out = tmp_path / 'out'
    messages = {
        command: _exit_message(
            command, [*_arguments(command, trained_workdir, out), '--config.data.height=24']
        )
        for command in WORKDIR_COMMANDS
    }
    assert len(set(messages.values())) == 1, messages
    message = messages['evaluate']
    expected = (
        f'error: --config.data.height would change the architecture of the checkpoint in {trained_workdir}'
    )
    assert message.startswith(expected) and '\n' not in message
    assert not out.exists()
    arguments = [*_arguments('evaluate', trained_workdir, out), '--config.model.filters=(3,)']
    assert 'model.filters would change the architecture' in _exit_message('evaluate', arguments)


def test_every_workdir_command_refuses_an_unknown_field_in_the_same_line(trained_workdir, tmp_path):
    out = tmp_path / 'out'
    for override in ('--config.data.colour=1', '--config.data.height=abc'):
        messages = {
            command: _exit_message(command, [*_arguments(command, trained_workdir, out), override])
            for command in WORKDIR_COMMANDS
        }
        assert len(set(messages.values())) == 1, messages
        assert messages['evaluate'].startswith('error: ') and '\n' not in messages['evaluate']
    assert messages['evaluate'].startswith('error: flag --config.data.height=abc')
    assert not out.exists()


class _Reached(ValueError):
    """Raised where the data would be read: the command then reports it (status 2) and stops."""


def test_a_data_override_reaches_the_data_of_every_workdir_command(trained_workdir, tmp_path, monkeypatch):
    from convlstm_jax import predict
    from convlstm_jax.data import dataset

    reached = {}

    def load_splits(data_config, **kwargs):
        reached['data'] = data_config
        raise _Reached('reached the data')

    def predict_recording_file(checkpoint, **kwargs):
        reached['resize'] = kwargs['resize']
        raise _Reached('reached the data')

    monkeypatch.setattr(dataset, 'load_splits', load_splits)
    monkeypatch.setattr(predict, 'predict_recording_file', predict_recording_file)
    out = tmp_path / 'out'
    for command in ('evaluate', 'visualize'):
        reached.clear()
        overrides = ['--config.data.path=elsewhere', '--config.data.label_file=labels.csv']
        assert _command(command).main([*_arguments(command, trained_workdir, out), *overrides]) == 2
        assert (reached['data'].path, reached['data'].label_file) == ('elsewhere', 'labels.csv'), command
        assert reached['data'].height == 16  # the rest from the workdir's config.json
    reached.clear()
    assert predict.main([*_arguments('predict', trained_workdir, out), '--config.data.resize=area']) == 2
    assert reached == {'resize': 'area'}
    assert not out.exists()


def test_print_config_shows_the_workdir_config_with_the_overrides(trained_workdir, tmp_path, capsys):
    for command in WORKDIR_COMMANDS:
        arguments = [*_arguments(command, trained_workdir, tmp_path / 'out'), '--print_config']
        with pytest.raises(SystemExit) as exit_info:
            _command(command).main([*arguments, '--config.data.path=elsewhere'])
        assert exit_info.value.code == 0
        config = json.loads(capsys.readouterr().out)
        assert config['data']['path'] == 'elsewhere' and config['model']['filters'] == [2], command


def test_reference_mode_takes_no_config(tmp_path):
    from convlstm_jax.evaluate import cli as evaluate_cli

    for extra in ('--config.data.path=x', '--print_config'):
        with pytest.raises(SystemExit) as exit_info:
            evaluate_cli.main(['--reference', str(tmp_path), '--out', str(tmp_path / 'out'), extra])
        assert (
            exit_info.value.code
            == 'error: --config.* overrides and --print_config apply to --checkpoint only'
        )
    assert not (tmp_path / 'out').exists()


def _truncate_metadata(variables: pathlib.Path) -> str:
    path = variables / '_METADATA'
    path.write_bytes(path.read_bytes()[:20])
    return 'variables/_METADATA is unreadable (not valid JSON'


def _empty_manifest(variables: pathlib.Path) -> str:
    (variables / 'manifest.ocdbt').write_bytes(b'')
    return 'variables/manifest.ocdbt is unreadable (empty file)'


@pytest.mark.parametrize('corrupt', [_truncate_metadata, _empty_manifest], ids=['metadata', 'manifest'])
@pytest.mark.parametrize('command', WORKDIR_COMMANDS)
def test_a_corrupt_checkpoint_is_one_line_and_status_2(trained_workdir, tmp_path, capsys, command, corrupt):
    import shutil

    workdir = tmp_path / 'run'
    shutil.copytree(trained_workdir, workdir)
    unreadable = corrupt(workdir / 'checkpoints' / '2' / 'variables')
    np.save(tmp_path / 'clips.npy', np.zeros((1, 4, 16, 20, 4), np.uint8))
    out = tmp_path / 'out'
    arguments = _arguments(command, workdir, out)
    if command == 'predict':
        arguments[arguments.index('--video') : arguments.index('--video') + 2] = [
            '--clips',
            str(tmp_path / 'clips.npy'),
        ]
    assert _command(command).main(arguments) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f'error: checkpoint step 2 in {workdir}: {unreadable}'), captured.err
    assert captured.err.count('\n') == 1 and 'Traceback' not in captured.err
    assert not out.exists()


# ---------------------------------------------------------------------------------------------------------
# The documented commands parse


def _documented(module: str) -> list[tuple[str, list[str]]]:
    from test_docs import doc_commands

    return [
        (str(command), shlex.split(command.arguments.replace('\\\n', ' ').replace('…', 'x')))
        for command in doc_commands()
        if command.module == module
    ]


@pytest.mark.parametrize('command', sorted(IN_PROCESS))
def test_every_documented_command_parses(command, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)  # config files are named relative to the repository
    module = importlib.import_module(IN_PROCESS[command])
    for where, arguments in _documented(command):
        values = flags.FlagValues()
        argv = ['command', *arguments]
        module.define_flags(values, argv)
        try:
            cli.flags_parser('', values)(argv)
        except SystemExit as e:
            pytest.fail(f'{where}: {e.code}')


@pytest.mark.slow
def test_predict_splits_the_cpu_and_says_so_first(trained_workdir, tmp_path):
    """No --cpu_devices and no CONVLSTM_CPU_DEVICES: one device per core, said on the first line; the same
    probabilities with --cpu_devices=1, which says nothing."""
    np.save(tmp_path / 'clips.npy', np.random.default_rng(0).integers(0, 256, (5, 4, 16, 20, 4), np.uint8))
    outputs = {}
    for name, extra in (('auto', []), ('one', ['--cpu_devices=1'])):
        out = tmp_path / f'{name}.npy'
        result = subprocess.run(
            [sys.executable, '-m', 'convlstm_jax.predict', '--checkpoint', str(trained_workdir), '--select']
            + ['latest', '--clips', str(tmp_path / 'clips.npy'), '--out', str(out), *extra],
            cwd=REPO_ROOT,
            env={**os.environ, 'JAX_PLATFORMS': 'cpu', 'CONVLSTM_CPU_DEVICES': ''},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        outputs[name] = (result.stdout.splitlines()[0], np.load(out))
    count = cli.automatic_cpu_devices((8,), multi_process=False, environ={})
    if count > 1:
        assert (
            outputs['auto'][0] == f'predicting with {trained_workdir} on {count} CPU devices (one per core)'
        )
    assert outputs['one'][0].startswith('wrote ')
    np.testing.assert_allclose(outputs['auto'][1], outputs['one'][1], atol=1e-6)
