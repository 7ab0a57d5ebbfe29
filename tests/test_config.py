"""The one config loader (config.py) and the shared command-line pieces (cli.py): overrides, variants, a
workdir's config with overrides, the architecture refusal, one-line errors, and the CPU device split."""

from __future__ import annotations

import json
import pathlib
import sys

import pytest
from absl import flags

from convlstm_jax import cli
from convlstm_jax import config as config_lib

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
TWO_LAYER = str(REPO_ROOT / 'configs' / 'two_layer.py')


def parse(monkeypatch, *args: str, from_workdir: bool = False):
    """Fresh flags, parsed as a command would (config_flags finds the overrides in sys.argv)."""
    argv = ['command', *args]
    monkeypatch.setattr(sys, 'argv', argv)  # before the definition: an inline config is parsed there
    values = flags.FlagValues()
    holder = config_lib.define_config_flag(from_workdir=from_workdir, flag_values=values)
    cli.flags_parser('doc', values)(argv)
    return holder


def test_file_variant_and_overrides(monkeypatch):
    holder = parse(
        monkeypatch, '--config', f'{TWO_LAYER}:smoke', '--config.batch_size=8', '--config.data.height=24'
    )
    config = config_lib.config_from_flag(holder)
    assert (config.batch_size, config.data.height) == (8, 24)
    assert config.data.time_steps == 4 and config.model.filters == (16, 32)  # the smoke variant, 2 layers
    assert config_lib.config_file_argument(holder) == f'{TWO_LAYER}:smoke'


def test_variants_and_default_workdirs(monkeypatch):
    quick = config_lib.config_from_flag(parse(monkeypatch, '--config', f'{TWO_LAYER}:quick'))
    plain = config_lib.config_from_flag(parse(monkeypatch, '--config', TWO_LAYER))
    assert (quick.data.height, plain.data.height) == (36, 120)
    assert config_lib.default_workdir('configs/two_layer.py') == pathlib.Path('runs/two_layer')
    assert config_lib.default_workdir('configs/two_layer.py:quick') == pathlib.Path('runs/two_layer_quick')


@pytest.mark.parametrize(
    'args, message',
    [
        (['--config.bach_size=8'], 'no such config field in --config.bach_size=8: bach_size; Did you mean'),
        (['--config.batch_size=abc'], 'flag --config.batch_size=abc: invalid literal for int()'),
    ],
)
def test_bad_overrides_are_one_line(monkeypatch, args, message):
    with pytest.raises(SystemExit) as exit_info:
        parse(monkeypatch, '--config', f'{TWO_LAYER}:smoke', *args)
    text = str(exit_info.value.code)
    assert text.startswith('error: ') and message in text and '\n' not in text, text


def test_broken_config_files_are_one_line(monkeypatch, tmp_path):
    broken = tmp_path / 'broken.py'
    broken.write_text('def get_config(:\n')
    with pytest.raises(SystemExit, match=r'^error: cannot load the config file .*broken.py: SyntaxError'):
        parse(monkeypatch, '--config', str(broken))
    with pytest.raises(SystemExit, match="unknown config variant 'nope': expected one of quick, smoke$"):
        parse(monkeypatch, '--config', f'{TWO_LAYER}:nope')
    holder = parse(monkeypatch, '--config', str(tmp_path / 'missing.py'))
    with pytest.raises(config_lib.ConfigError, match='cannot load the config file .*missing.py: .*No such'):
        config_lib.config_from_flag(holder)


@pytest.mark.parametrize(
    'override, message',
    [
        ('--config.batch_size=0', 'batch_size must be at least 1, found 0'),
        ('--config.data.pipeline=torch', "data.pipeline must be one of tfdata, numpy, device, found 'torch'"),
        ('--config.steps_per_epoch=0', 'steps_per_epoch must be -1'),
        ('--config.class_weights=(1, 2, 3)', "class_weights must be 'auto' or a pair"),
    ],
)
def test_values_no_run_can_start_with(monkeypatch, override, message):
    holder = parse(monkeypatch, '--config', f'{TWO_LAYER}:smoke', override)
    with pytest.raises(config_lib.ConfigError, match=message.replace('(', r'\(')):
        config_lib.config_from_flag(holder)


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> pathlib.Path:
    """A workdir's config.json as training writes it: the :smoke config with a changed seed."""
    config = config_lib.config_from_flag(parse(monkeypatch, '--config', f'{TWO_LAYER}:smoke'))
    config.seed = 7
    (tmp_path / 'run' / 'checkpoints' / '3').mkdir(parents=True)
    (tmp_path / 'run' / 'config.json').write_text(json.dumps(json.loads(config.to_json())))
    return tmp_path / 'run'


def test_workdir_config_with_data_overrides(monkeypatch, workdir):
    holder = parse(
        monkeypatch, '--config.data.source=video', '--config.data.path=tank.mp4', from_workdir=True
    )
    for path in (workdir, workdir / 'checkpoints' / '3'):  # the workdir, or a checkpoint step in it
        config = config_lib.config_from_workdir(path, holder)
        assert (config.data.source, config.data.path) == ('video', 'tank.mp4')
        assert (config.seed, config.data.height, config.model.filters) == (7, 16, (16, 32))
        assert config.class_weights == (0.133, 0.866)  # JSON lists back to tuples
    assert config_lib.config_from_workdir(workdir).data.source == 'synthetic'


def test_workdir_override_naming_no_field_is_one_line(monkeypatch):
    monkeypatch.setattr(config_lib, 'definition_errors', [])
    with pytest.raises(SystemExit) as exit_info:
        parse(monkeypatch, '--config.data.heigth=3', from_workdir=True)
    assert exit_info.value.code == (
        'error: no such config field in --config.data.heigth=3: heigth; Did you mean "height" instead of '
        '"heigth"?'
    )


@pytest.mark.parametrize('override', ['--config.model.filters=(8,)', '--config.data.height=24'])
def test_workdir_config_refuses_architecture_overrides(monkeypatch, workdir, override):
    holder = parse(monkeypatch, override, from_workdir=True)
    field = override.split('=')[0].removeprefix('--config.')
    with pytest.raises(config_lib.ConfigError, match=f'--config.{field} would change the architecture'):
        config_lib.config_from_workdir(workdir, holder)


def test_workdir_without_config(tmp_path, workdir):
    with pytest.raises(config_lib.ConfigError, match='no config.json in .* is it a training workdir'):
        config_lib.config_from_workdir(tmp_path / 'elsewhere')
    spec = {'model': {'filters': [8]}, 'input': {'height': 20, 'width': 30, 'pixel_scale': 1 / 255}}
    config = config_lib.config_from_workdir(tmp_path / 'elsewhere', spec=spec)
    assert (config.model.filters, config.data.height, config.data.width) == ((8,), 20, 30)
    (workdir / 'config.json').write_text('{"bach_size": 4}')
    with pytest.raises(config_lib.ConfigError, match="unknown config field 'bach_size'"):
        config_lib.config_from_workdir(workdir)


# ---------------------------------------------------------------------------------------------------------
# The CPU device split


def no_accelerator(env):
    return None


@pytest.mark.parametrize(
    'batch_sizes, cores, expected',
    [((4, 8), 2, 2), ((4, 16), 16, 4), ((6, 16), 3, 2), ((8, 16), 1, 1), ((3, 5), 8, 1)],
)
def test_automatic_cpu_devices_divide_both_batches(batch_sizes, cores, expected):
    count = cli.automatic_cpu_devices(
        batch_sizes, multi_process=False, environ={}, cores=cores, accelerator=no_accelerator
    )
    assert count == expected


@pytest.mark.parametrize(
    'environ, multi_process, accelerator',
    [
        ({}, True, None),  # part of a multi-process run
        ({'CONVLSTM_CPU_DEVICES': '1'}, False, None),  # asked for explicitly
        ({'XLA_FLAGS': '--xla_force_host_platform_device_count=3'}, False, None),
        ({}, False, 'gpu'),
    ],
)
def test_automatic_cpu_devices_only_when_nothing_else_decides(environ, multi_process, accelerator):
    count = cli.automatic_cpu_devices(
        (4, 8), multi_process=multi_process, environ=environ, cores=4, accelerator=lambda env: accelerator
    )
    assert count == 1


def test_accelerator_platform(monkeypatch):
    monkeypatch.setattr(cli, '_jax_plugin_names', lambda: [])
    assert cli.accelerator_platform({'JAX_PLATFORMS': 'cpu'}) is None
    assert cli.accelerator_platform({'JAX_PLATFORMS': 'cuda,cpu'}) == 'gpu'
    assert cli.accelerator_platform({'JAX_PLATFORMS': 'tpu'}) == 'tpu'
    assert cli.accelerator_platform({'CUDA_VISIBLE_DEVICES': '0'}) is None  # no CUDA plugin installed
    monkeypatch.setattr(cli, '_jax_plugin_names', lambda: ['xla_cuda12 jax_cuda12_plugin'])
    assert cli.accelerator_platform({'CUDA_VISIBLE_DEVICES': '0,1'}) == 'gpu'
    assert cli.accelerator_platform({'CUDA_VISIBLE_DEVICES': ''}) is None  # every GPU hidden: the CPU
    assert cli.accelerator_platform({'CUDA_VISIBLE_DEVICES': '-1'}) is None


def test_help_lists_every_option_with_defaults():
    values = flags.FlagValues()
    config_lib.define_config_flag(flag_values=values)
    flags.DEFINE_integer('steps', 3, 'How many.', flag_values=values, module_name=sys.argv[0])
    text = cli.help_text('The command.', values)
    assert text.startswith('The command.\n') and '--steps: How many.' in text and "(default: '3')" in text
    assert '--config: Config file' in text and '--print_config lists' in text


def test_cpu_devices_set_xla_flags_keeping_the_others():
    env = {'XLA_FLAGS': '--xla_dump_to=/tmp/x --xla_force_host_platform_device_count=8'}
    cli.use_cpu_devices(2, env)
    assert env['XLA_FLAGS'] == '--xla_dump_to=/tmp/x --xla_force_host_platform_device_count=2'
    fresh: dict[str, str] = {}
    cli.use_cpu_devices(3, fresh)
    assert fresh['XLA_FLAGS'] == '--xla_force_host_platform_device_count=3'
    with pytest.raises(ValueError, match='positive number of devices, got 0'):
        cli.use_cpu_devices(0, {})
