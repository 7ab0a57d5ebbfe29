"""What every command line shares: `--cpu_devices` (defined once, here), the automatic one-device-per-core
split of a CPU-only machine, `--print_config`, a `--help` that exits 0 and lists every option, and flag
parsing whose errors are one line.

A command adopts it so (main.py is the example):

    from convlstm_jax import cli, config as config_lib
    _CONFIG = config_lib.define_config_flag()          # or define_config_flag(from_workdir=True)
    def main(argv):
        config = cli.load_config_or_exit(_CONFIG)      # or cli.config_from_workdir_or_exit(DIR, _CONFIG)
        cli.print_config_and_exit_if_asked(config)
        note = cli.set_up_cpu_devices((config.batch_size, config.eval_batch_size), multi_process=False)
        ...                                            # only now import JAX's computations
    if __name__ == '__main__':
        app.run(main, flags_parser=cli.flags_parser(__doc__))
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import math
import os
import re
import sys
import textwrap
from collections.abc import Callable, Mapping, Sequence

from absl import flags

from convlstm_jax import config as config_lib
from convlstm_jax import distributed

CPU_DEVICES_ENV = 'CONVLSTM_CPU_DEVICES'
_HELP_FLAGS = ('-h', '--help', '-help', '--helpshort', '-helpshort', '--helpfull', '-helpfull', '-?')

CPU_DEVICES = flags.DEFINE_integer(
    'cpu_devices',
    None,
    'Split the CPU into this many JAX devices and each batch over them (one per core is fastest on a '
    f'CPU-only machine). Default: ${CPU_DEVICES_ENV}, else one device per core on a CPU-only single-process '
    'run (the largest count that divides both batch sizes); 1 turns the split off. No effect on a GPU.',
    lower_bound=1,
)
PRINT_CONFIG = flags.DEFINE_bool(
    'print_config',
    False,
    'Print the resolved config (every field, defaults with the --config.FIELD=VALUE overrides applied) '
    'and exit.',
)


# ---------------------------------------------------------------------------------------------------------
# CPU devices


def accelerator_platform(environ: Mapping[str, str] | None = None) -> str | None:
    """'gpu' or 'tpu' when JAX would run on one here, None for the CPU; decided without starting JAX's
    backends, which must not exist before XLA_FLAGS sets the CPU device count."""
    env = os.environ if environ is None else environ
    platforms = env.get('JAX_PLATFORMS') or env.get('JAX_PLATFORM_NAME') or ''
    if platforms.strip():
        first = platforms.split(',')[0].strip().lower()
        return None if first == 'cpu' else ('tpu' if first == 'tpu' else 'gpu')
    plugins = ' '.join(_jax_plugin_names()).lower()
    if 'cuda' in plugins and distributed.visible_gpu_count(env) > 0:
        return 'gpu'
    if 'rocm' in plugins and os.path.exists('/dev/kfd'):
        return 'gpu'
    if importlib.util.find_spec('libtpu') is not None and _tpu_device_files():
        return 'tpu'
    return None


def _jax_plugin_names() -> list[str]:
    """Installed PJRT plugins: entry points (jax_cuda12_plugin, …) and the older jax_plugins namespace."""
    names = [f'{entry.name} {entry.value}' for entry in importlib.metadata.entry_points(group='jax_plugins')]
    if importlib.util.find_spec('jax_plugins') is not None:
        import jax_plugins

        for path in getattr(jax_plugins, '__path__', []):
            names += os.listdir(path)
    return [str(name) for name in names]


def _tpu_device_files() -> bool:
    try:
        return any(re.fullmatch(r'accel\d+|vfio', name) for name in os.listdir('/dev'))
    except OSError:
        return False


def available_cores() -> int:
    """Cores this process may run on (its affinity mask, which a scheduler or taskset may narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def automatic_cpu_devices(
    batch_sizes: Sequence[int],
    *,
    multi_process: bool,
    environ: Mapping[str, str] | None = None,
    cores: int | None = None,
    accelerator: Callable[[Mapping[str, str]], str | None] = accelerator_platform,
) -> int:
    """The device count of the one-device-per-core default: the largest count <= the cores that divides
    every batch size; 1 (no split) unless this is a single-process CPU run with no count asked for."""
    env = os.environ if environ is None else environ
    if multi_process or env.get(CPU_DEVICES_ENV) or accelerator(env) is not None:
        return 1
    if re.search(r'--xla_force_host_platform_device_count', env.get('XLA_FLAGS', '')):
        return 1
    common = math.gcd(*(int(size) for size in batch_sizes if int(size) > 0)) or 1
    cores = available_cores() if cores is None else cores
    return max(count for count in range(1, max(1, cores) + 1) if common % count == 0)


def set_up_cpu_devices(batch_sizes: Sequence[int], *, multi_process: bool) -> str | None:
    """Applies --cpu_devices, else $CONVLSTM_CPU_DEVICES, else the automatic split (before JAX starts its
    backends). Returns the note for the run's first line when the split was automatic, else None."""
    requested = CPU_DEVICES.value
    if requested is None and os.environ.get(CPU_DEVICES_ENV):
        text = os.environ[CPU_DEVICES_ENV]
        if not text.isdigit() or int(text) < 1:
            raise config_lib.ConfigError(
                f'{CPU_DEVICES_ENV} must be a positive number of devices, found {text!r}'
            )
        requested = int(text)
    if requested is not None:
        distributed.use_cpu_devices(requested)
        return None
    count = automatic_cpu_devices(batch_sizes, multi_process=multi_process)
    if count == 1:
        return None
    distributed.use_cpu_devices(count)
    return f'{count} CPU devices (one per core)'


# ---------------------------------------------------------------------------------------------------------
# Config, help and flag parsing


def load_config_or_exit(holder: flags.FlagHolder):
    """The config of a `--config FILE[:variant]` flag, overrides applied and checked, or exit in one line."""
    try:
        return config_lib.config_from_flag(holder)
    except config_lib.ConfigError as e:
        sys.exit(f'error: {e}')


def config_from_workdir_or_exit(path, holder: flags.FlagHolder, *, spec=None):
    """`config_lib.config_from_workdir` for a command: its config.json with the overrides, or exit in one
    line (an architecture override, an unreadable or missing config.json, a bad value)."""
    try:
        return config_lib.config_from_workdir(path, holder, spec=spec)
    except config_lib.ConfigError as e:
        sys.exit(f'error: {e}')


def print_config_and_exit_if_asked(config) -> None:
    if PRINT_CONFIG.value:
        print(config.to_json_best_effort(indent=2, sort_keys=True), flush=True)
        sys.exit(0)


def help_text(doc: str, flag_values: flags.FlagValues = flags.FLAGS, *, full: bool = False) -> str:
    """The command's docstring, then its options and those of convlstm_jax's modules, with defaults."""
    main_module = sys.argv[0]
    sections = []
    for module in sorted(flag_values.flags_by_module_dict(), key=lambda m: (m != main_module, m)):
        ours = module == main_module or module.startswith(('convlstm_jax', 'ml_collections'))
        if not (ours or full):
            continue
        lines = flag_values.module_help(module).splitlines()
        body = '\n'.join(line for line in lines if line.strip() and line.strip() != f'{module}:')
        title = 'options' if module == main_module else f'options of {module}'
        sections.append(f'{title}:\n{body}')
    footer = (
        'Every config field is an option too: --config.FIELD=VALUE (e.g. --config.batch_size=8); '
        '--print_config lists them all with their values.'
    )
    if not full:
        footer += ' --helpfull adds the options of the libraries (absl, JAX).'
    return '\n\n'.join([textwrap.dedent(doc).strip(), *sections, textwrap.fill(footer, 100)]) + '\n'


def flags_parser(doc: str, flag_values: flags.FlagValues = flags.FLAGS) -> Callable[[list[str]], list[str]]:
    """absl's parsing for `app.run(main, flags_parser=...)`: --help exits 0; errors are one line."""

    def parse(argv: list[str]) -> list[str]:
        args = argv[1 : argv.index('--')] if '--' in argv else argv[1:]
        asked = [arg for arg in args if arg in _HELP_FLAGS]
        if asked:
            print(help_text(doc, flag_values, full=any('helpfull' in arg for arg in asked)), end='')
            sys.exit(0)
        try:
            if config_lib.definition_errors:
                raise config_lib.definition_errors[0]
            return flag_values(argv)
        except flags.IllegalFlagValueError as e:
            if re.match(r'flag --config=', str(e)) and 'Traceback' in str(e):  # get_config() raised
                sys.exit(f'error: cannot load the config file {_config_argument(argv)}: {_last_line(e)}')
            sys.exit(f'error: {_last_line(e)} (see --help)')
        except flags.Error as e:
            sys.exit(f'error: {_last_line(e)} (see --help)')
        except (AttributeError, KeyError) as e:  # config_dict: an override that names no field
            overrides = ' '.join(arg for arg in argv if arg.startswith('--config.'))
            lines = _innermost(e).split('\n')  # config_dict adds 'Did you mean …' on a line of its own
            reason = '; '.join(line.strip() for line in lines if line.strip())
            sys.exit(f'error: no such config field in {overrides}: {reason}')
        except (TypeError, ValueError) as e:
            sys.exit(f'error: bad --config value: {_last_line(e)}')
        except Exception as e:  # a config file that does not run (SyntaxError, NameError, …)
            reason = f'{type(e).__name__}: {_last_line(e)}'
            sys.exit(f'error: cannot load the config file {_config_argument(argv)}: {reason}')

    return parse


def _config_argument(argv: Sequence[str]) -> str:
    """The value given to --config (as `--config=X` or `--config X`)."""
    for i, arg in enumerate(argv):
        if arg.startswith(('--config=', '-config=')):
            return arg.split('=', 1)[1]
        if arg in ('--config', '-config') and i + 1 < len(argv):
            return argv[i + 1]
    return '(none given)'


def _innermost(error: BaseException) -> str:
    reason: object = error.args[0] if error.args else error
    while isinstance(reason, Exception) and reason.args:  # config_dict wraps its KeyError
        reason = reason.args[0]
    return str(reason).replace("'", '')


def _last_line(error: BaseException) -> str:
    """The message's last line: config_flags embeds a whole traceback in the errors it re-raises."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    last = lines[-1] if lines else type(error).__name__
    return re.sub(r'^(ValueError|TypeError|IOError|OSError): ', '', last)
