"""What every command line shares: `--cpu_devices`, `--print_config`, and for the commands that read a
trained model `--select` and `--member` (each defined once, here), the automatic one-device-per-core split of
a CPU-only machine, a `--help` that exits 0 and lists every option, flag parsing whose errors are one line,
and the config of a trained model (its workdir's config.json, with overrides).

main.py runs on absl's global flags:

    _CONFIG = config_lib.define_config_flag()
    cli.define_common_flags()
    def main(argv):
        config = cli.load_config_or_exit(_CONFIG)
        cli.print_config_and_exit_if_asked(config)
        note = cli.set_up_cpu_devices((config.batch_size, config.eval_batch_size), multi_process=False)
        ...                                            # only now import JAX's computations
    if __name__ == '__main__':
        app.run(main, flags_parser=cli.flags_parser(__doc__))

The other commands define their options in a fresh FlagValues per run (`cli.run`), so that commands imported
side by side (the tests, evaluate beside predict) never define the same flag twice:

    def define_flags(flag_values, argv):               # evaluate, predict, visualize (a workdir's config)
        config_lib.define_config_flag(from_workdir=True, flag_values=flag_values, argv=argv)
        cli.define_common_flags(flag_values)
        cli.define_checkpoint_flags(flag_values)         # --select, --member
        flags.DEFINE_string('checkpoint', None, 'Model directory, …', flag_values=flag_values)
    def run(flag_values) -> int:
        config = cli.saved_model_start(flag_values, BATCH, 'evaluating')  # config, --print_config, devices
        ...
    def main(argv=None) -> int:                        # argv without the program name, as tests pass it
        return cli.run(run, __doc__, define_flags, argv)
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import math
import os
import pathlib
import re
import sys
import textwrap
from collections.abc import Callable, Mapping, Sequence

from absl import flags

from convlstm_jax import config as config_lib
from convlstm_jax import process_group

CPU_DEVICES_ENV = 'CONVLSTM_CPU_DEVICES'
_SECTION_TITLES = {'convlstm_jax.cli': 'common options', 'convlstm_jax.config': 'config'}
_HELP_FLAGS = ('-h', '--help', '-help', '--helpshort', '-helpshort', '--helpfull', '-helpfull', '-?')

_CPU_DEVICES_HELP = (
    'Split the CPU into this many JAX devices and each batch over them (one per core is fastest on a '
    f'CPU-only machine). Default: ${CPU_DEVICES_ENV}, else one device per core on a CPU-only single-process '
    'run (the largest count that divides the batch sizes); 1 turns the split off. No effect on a GPU.'
)
_PRINT_CONFIG_HELP = (
    'Print the resolved config (every field, defaults with the --config.FIELD=VALUE overrides applied) '
    'and exit.'
)
_CPU_DEVICE_FLAG = '--xla_force_host_platform_device_count'
# checkpoints.SELECTIONS, repeated so that the command line is read before orbax and JAX are imported
# (tests/test_member_commands.py checks that the two agree).
SELECTIONS = ('best_auc', 'best_loss', 'latest')
_MEMBER_HELP = (
    'Population member: an index, or best (the member with the best validation AUC); a solo run has one '
    'model.'
)


def define_common_flags(
    flag_values: flags.FlagValues = flags.FLAGS, *, cpu_devices: bool = True, print_config: bool = True
) -> None:
    """`--cpu_devices` and `--print_config`, the one definition of each, for the commands that take them."""
    if cpu_devices:
        flags.DEFINE_integer('cpu_devices', None, _CPU_DEVICES_HELP, lower_bound=1, flag_values=flag_values)
    if print_config:
        flags.DEFINE_bool('print_config', False, _PRINT_CONFIG_HELP, flag_values=flag_values)


def define_checkpoint_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """`--select` and `--member`, the one definition of each, for the commands that read a trained model
    (evaluate, predict, visualize). --member stays text: `checkpoints.load_model` checks it against the
    workdir (a population's size, a solo run), and the command reports a bad one in one line."""
    flags.DEFINE_enum(
        'select', 'best_auc', SELECTIONS, 'Checkpoint step of a training workdir.', flag_values=flag_values
    )
    flags.DEFINE_string('member', 'best', _MEMBER_HELP, flag_values=flag_values)


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
    if 'cuda' in plugins and process_group.visible_gpu_count(env) > 0:
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


def use_cpu_devices(count: int, env: dict[str, str] | None = None) -> None:
    """Makes XLA's CPU platform expose `count` devices, through XLA_FLAGS in `env` (default: this process's,
    which must not have started JAX's backends yet). GPUs are unaffected: they stay the default platform.

    XLA:CPU leaves much of a core idle inside one device's program (small fusions run one after the
    other); with one device per core the cores run their shards of the pmapped step side by side.
    """
    if count < 1:
        raise ValueError(f'cpu_devices must be a positive number of devices, got {count}')
    if env is None:
        from jax._src import xla_bridge

        if xla_bridge.backends_are_initialized():
            raise RuntimeError('use_cpu_devices must run before JAX creates its devices')
        env = os.environ
    others = re.sub(rf'{_CPU_DEVICE_FLAG}=\S*', '', env.get('XLA_FLAGS', '')).split()
    env['XLA_FLAGS'] = ' '.join([*others, f'{_CPU_DEVICE_FLAG}={count}'])


def _jax_started() -> bool:
    if 'jax' not in sys.modules:
        return False
    from jax._src import xla_bridge

    return xla_bridge.backends_are_initialized()


def set_up_cpu_devices(
    batch_sizes: Sequence[int], *, multi_process: bool, flag_values: flags.FlagValues = flags.FLAGS
) -> str | None:
    """Applies --cpu_devices, else $CONVLSTM_CPU_DEVICES, else the automatic split (before JAX starts its
    backends). Returns the note for the run's first line when the split was automatic, else None."""
    requested = flag_values['cpu_devices'].value
    if requested is None and os.environ.get(CPU_DEVICES_ENV):
        text = os.environ[CPU_DEVICES_ENV]
        if not text.isdigit() or int(text) < 1:
            raise config_lib.ConfigError(
                f'{CPU_DEVICES_ENV} must be a positive number of devices, found {text!r}'
            )
        requested = int(text)
    if _jax_started():  # a command called in a process that already uses JAX (tests, a notebook)
        import jax

        if requested is not None and requested != jax.local_device_count('cpu'):
            raise config_lib.ConfigError(
                f'{requested} CPU devices asked for, but JAX already started here with '
                f'{jax.local_device_count("cpu")}: set the count before anything uses JAX'
            )
        return None
    if requested is not None:
        use_cpu_devices(requested)
        return None
    count = automatic_cpu_devices(batch_sizes, multi_process=multi_process)
    if count == 1:
        return None
    use_cpu_devices(count)
    return f'{count} CPU devices (one per core)'


# ---------------------------------------------------------------------------------------------------------
# Config, help and flag parsing


def load_config_or_exit(holder: flags.FlagHolder):
    """The config of a `--config FILE[:variant]` flag, overrides applied and checked, or exit in one line."""
    try:
        return config_lib.config_from_flag(holder)
    except config_lib.ConfigError as e:
        sys.exit(f'error: {e}')


def config_holder(flag_values: flags.FlagValues, name: str = 'config') -> flags.FlagHolder:
    """The holder of a command's config flag (what the loader takes), from the command's FlagValues."""
    return flags.FlagHolder(flag_values, flag_values[name])


def model_config(checkpoint: str | os.PathLike, holder: flags.FlagHolder | None = None):
    """The config a trained model runs with (evaluate, predict, visualize): its training workdir's
    config.json, or, for a model directory without one (an imported Keras model), the defaults with the
    model and input contract of its model.json; then the `--config.FIELD=VALUE` overrides, of which those
    that would change the architecture are refused (config_lib.ConfigError). FileNotFoundError or
    ValueError where `checkpoint` is no model at all."""
    from convlstm_jax import checkpoints  # orbax: only once the command line is read

    path = pathlib.Path(checkpoint)
    spec = None
    if config_lib.find_workdir_config(path) is None:
        found = [
            f / checkpoints.MODEL_JSON
            for f in (path, path.parent.parent)
            if (f / checkpoints.MODEL_JSON).is_file()
        ]
        if not path.is_dir():
            raise FileNotFoundError(f'checkpoint {path} does not exist or is not a directory')
        if not found:
            raise ValueError(
                f'{path} is not a model directory (model.json + variables/), a training workdir '
                f'(config.json, model.json + checkpoints/) or a step directory of one'
            )
        spec = checkpoints.read_spec(found[0])
    return config_lib.config_from_workdir(path, holder, spec=spec)


def model_config_or_exit(checkpoint: str | os.PathLike, holder: flags.FlagHolder | None = None):
    """`model_config`, or exit in one line (status 1) on a bad override or config.json; no model at
    `checkpoint` stays an exception (FileNotFoundError, ValueError) that the command reports as it reports
    its other bad inputs."""
    try:
        return model_config(checkpoint, holder)
    except config_lib.ConfigError as e:
        sys.exit(f'error: {e}')


def saved_model_start(flag_values: flags.FlagValues, batch_size: int, doing: str):
    """How evaluate, predict and visualize start: the model's config with the overrides (or one line and
    exit), `--print_config`, then the CPU split for `batch_size`, said in one line ('evaluating DIR on 2 CPU
    devices (one per core)'). Returns the config."""
    config = model_config_or_exit(flag_values.checkpoint, config_holder(flag_values))
    print_config_and_exit_if_asked(config, flag_values)
    note = set_up_cpu_devices((batch_size,), multi_process=False, flag_values=flag_values)
    if note:
        print(f'{doing} {flag_values.checkpoint} on {note}', flush=True)
    return config


def print_config_and_exit_if_asked(config, flag_values: flags.FlagValues = flags.FLAGS) -> None:
    if flag_values['print_config'].value:
        print(config.to_json_best_effort(indent=2, sort_keys=True), flush=True)
        sys.exit(0)


def help_text(
    doc: str,
    flag_values: flags.FlagValues = flags.FLAGS,
    *,
    full: bool = False,
    command: str | None = None,
) -> str:
    """The command's docstring, then its options (those of module `command`, default the main program's)
    and those of convlstm_jax's modules, with defaults."""
    main_module = command or sys.argv[0]
    sections = []
    for module in sorted(flag_values.flags_by_module_dict(), key=lambda m: (m != main_module, m)):
        ours = module == main_module or module.startswith(('convlstm_jax', 'ml_collections'))
        if not (ours or full):
            continue
        lines = flag_values.module_help(module).splitlines()
        body = '\n'.join(line for line in lines if line.strip() and line.strip() != f'{module}:')
        title = 'options' if module == main_module else _SECTION_TITLES.get(module, f'options of {module}')
        sections.append(f'{title}:\n{body}')
    footer = (
        'Every config field is an option too: --config.FIELD=VALUE (e.g. --config.batch_size=8); '
        '--print_config lists them all with their values.'
        if 'config' in flag_values
        else ''
    )
    if not full and flag_values is flags.FLAGS:
        footer += ' --helpfull adds the options of the libraries (absl, JAX).'
    return '\n\n'.join([textwrap.dedent(doc).strip(), *sections, textwrap.fill(footer, 100)]) + '\n'


def flags_parser(
    doc: str, flag_values: flags.FlagValues = flags.FLAGS, *, command: str | None = None
) -> Callable[[list[str]], list[str]]:
    """absl's parsing for `app.run(main, flags_parser=...)`: --help exits 0; errors are one line."""

    def parse(argv: list[str]) -> list[str]:
        args = argv[1 : argv.index('--')] if '--' in argv else argv[1:]
        asked = [arg for arg in args if arg in _HELP_FLAGS]
        if asked:
            full = any('helpfull' in arg for arg in asked)
            print(help_text(doc, flag_values, full=full, command=command), end='')
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


def run(
    main: Callable[..., int | None],
    doc: str,
    define: Callable[[flags.FlagValues, list[str]], None],
    argv: Sequence[str] | None = None,
    *,
    positional: Sequence[str] = (),
) -> int:
    """Runs a command: `define(flag_values, argv)` defines its options in a fresh FlagValues, `argv` (the
    arguments without the program name; default sys.argv[1:]) is parsed as `flags_parser` parses (--help
    exits 0, errors exit in one line), and `main(flag_values, *arguments)` runs, with one argument per name
    in `positional` ('[NAME]': optional, None when absent). Returns main's exit status (None: 0).

    absl's global FLAGS would hold every command's options at once, and evaluate, predict and visualize
    share option names (--checkpoint, --out), so two commands in one process (the tests) would collide.
    """
    full = [sys.argv[0], *(sys.argv[1:] if argv is None else argv)]
    flag_values = flags.FlagValues()
    config_lib.definition_errors.clear()
    define(flag_values, full)
    command = define.__module__ if define.__module__ != '__main__' else sys.argv[0]
    arguments = flags_parser(doc, flag_values, command=command)(full)[1:]
    required = [name for name in positional if not name.startswith('[')]  # '[ENTRY]': optional
    if not len(required) <= len(arguments) <= len(positional):
        expected = ' '.join(positional) or 'no arguments besides the options'
        found = ' '.join(arguments) or 'none'
        sys.exit(f'error: expected {expected}, found {found} (see --help)')
    arguments += [None] * (len(positional) - len(arguments))
    if not flags.FLAGS.is_parsed():  # absl logging (orbax logs through it) asks whether flags are parsed
        flags.FLAGS.mark_as_parsed()
    return int(main(flag_values, *arguments) or 0)


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
