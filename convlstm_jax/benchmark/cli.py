"""The command line, `python -m convlstm_jax.benchmark [flags]`, and the `--worker` of each row.

Training and inference throughput of the ConvLSTM classifiers against Keras and PyTorch, on one machine
(docs/benchmark.md). Each --models config is loaded by the loader every --config goes through
(config.load_config_file), and checked.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import sys
import types
from collections.abc import Callable, Sequence
from typing import Any

from convlstm_jax import io
from convlstm_jax.benchmark.harness import (
    DEFAULT_SHAPE,
    DTYPES,
    FRAMEWORK_PACKAGES,
    FRAMEWORKS,
    MODES,
    RowSpec,
    load_config,
)
from convlstm_jax.benchmark.jax_rows import PIPELINE_BACKENDS
from convlstm_jax.benchmark.peers import available_frameworks
from convlstm_jax.benchmark.runner import plan_rows, run_row, run_rows
from convlstm_jax.benchmark.table import compiled_memory_table, header_lines, markdown_table


class _BadFlag(ValueError):
    """A flag value that is not what the flag expects (reported in one line)."""


def _choices(valid: Sequence[str], *, special: Sequence[str] = ()) -> Callable[[str], list[str]]:
    """A comma list of `valid` names, or one of the `special` words alone (as a 1-list)."""

    def parse(text: str) -> list[str]:
        if text in special:
            return [text]
        values = [v.strip() for v in text.split(',') if v.strip()]
        if not values or any(v not in valid for v in values):
            words = ''.join(f' or {w}' for w in special)
            raise _BadFlag(f'expected a comma list of {", ".join(valid)}{words}; got {text!r}')
        return values

    return parse


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(d) for d in text.split(','))
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) < 1:
        raise _BadFlag(f'expected T,H,W,C positive integers; got {text!r}')
    return shape


def _positive_ints(example: str) -> Callable[[str], list[int]]:
    """A comma list of positive integers, e.g. `example`."""

    def parse(text: str) -> list[int]:
        try:
            values = [int(v) for v in text.split(',')]
        except ValueError:
            values = []
        if not values or min(values) < 1:
            raise _BadFlag(f'expected positive integers like {example}; got {text!r}')
        return values

    return parse


def _remat(text: str) -> list[bool]:
    return [v == 'on' for v in _choices(('off', 'on'))(text)]


# name, default, help, parser of the text (None: the value as absl parsed it)
_LIST_FLAGS: tuple[tuple[str, str, str, Callable[[str], Any]], ...] = (
    ('models', 'one_layer,two_layer', 'Config names in configs/ or .py paths.', lambda text: text),
    (
        'frameworks',
        'all',
        f'Comma list of {", ".join(FRAMEWORKS)}; all: those installed here.',
        _choices(FRAMEWORKS, special=('all',)),
    ),
    ('modes', 'train,infer', 'train, infer or both.', _choices(MODES)),
    (
        'dtypes',
        'float32,bfloat16',
        'Compute dtypes of the convlstm_jax rows (parameters, BatchNorm and loss stay float32).',
        _choices(DTYPES),
    ),
    ('remat', 'on', 'convlstm_jax training rows: off, on or off,on.', _remat),
    (
        'devices',
        '1',
        'convlstm_jax rows: devices the step is pmapped over, e.g. 1,2; on a CPU each row splits the CPU '
        'into that many devices (--cpu_devices of the training job).',
        _positive_ints('1,2'),
    ),
    (
        'pipeline',
        'auto',
        'Input pipeline backends of the end-to-end rows (device: clips cut in the step); auto: tfdata '
        'where TensorFlow is installed, else numpy, and device.',
        _choices(PIPELINE_BACKENDS, special=('auto', 'none')),
    ),
    (
        'population',
        '1',
        'convlstm_jax rows: population sizes K, e.g. 1,4,8: K models trained (or run) in one step vmapped '
        "over them, as --config.population=K trains; clips/s then counts every member's clips (K × batch "
        'per step). The other frameworks run one model.',
        _positive_ints('1,4,8'),
    ),
    ('shape', ','.join(map(str, DEFAULT_SHAPE)), 'Clip shape T,H,W,C.', _shape),
    ('batch', '4', 'Global batch sizes, e.g. 4 or 4,16,64.', _positive_ints('4,16,64')),
)


def define_flags(flag_values: Any, argv: Sequence[str]) -> None:
    """The options of the benchmark, in `flag_values` (see convlstm_jax/cli.py's run)."""
    from absl import flags

    f = flag_values
    for name, default, help_text, _ in _LIST_FLAGS:
        flags.DEFINE_string(name, default, help_text, flag_values=f)
    flags.DEFINE_integer('unroll', None, "Scan unrolling (default: the config's).", flag_values=f)
    flags.DEFINE_bool(
        'memory-analysis',
        False,
        "Compile this project's training steps and report XLA's memory analysis per device instead of "
        'running them (for batches that do not fit in memory); other frameworks and modes are left out.',
        flag_values=f,
    )
    flags.DEFINE_integer('steps', 10, 'Timed steps per row.', lower_bound=1, flag_values=f)
    flags.DEFINE_integer(
        'warmup', 2, 'Untimed steps first (the first one compiles).', lower_bound=0, flag_values=f
    )
    flags.DEFINE_float(
        'time-budget-s',
        300.0,
        'Per row, warm-up and timed steps each stop early after this long (one step at least).',
        flag_values=f,
    )
    flags.DEFINE_float('row-timeout-s', 3600.0, 'A row running longer is killed.', flag_values=f)
    flags.DEFINE_integer('seed', 0, 'Seed of the weights and data.', flag_values=f)
    flags.DEFINE_string('json', None, 'Write the rows to this JSON file.', flag_values=f)
    flags.DEFINE_bool(
        'worker', False, 'Internal: run one row, `--worker SPEC RESULT` (the runner does).', flag_values=f
    )


def parse_args(flag_values: Any) -> types.SimpleNamespace:
    """The parsed options: comma lists as lists, checked; one-line SystemExit otherwise."""
    args = types.SimpleNamespace(
        unroll=flag_values.unroll,
        memory_analysis=flag_values['memory-analysis'].value,
        steps=flag_values.steps,
        warmup=flag_values.warmup,
        time_budget_s=flag_values['time-budget-s'].value,
        row_timeout_s=flag_values['row-timeout-s'].value,
        seed=flag_values.seed,
        json=pathlib.Path(flag_values.json) if flag_values.json else None,
    )
    for name, _, _, parse in _LIST_FLAGS:
        try:
            setattr(args, name, parse(flag_values[name].value))
        except _BadFlag as e:
            raise SystemExit(f'error: --{name}: {e}') from None
    for batch in args.batch:
        uneven = [count for count in args.devices if batch % count]
        if uneven:
            raise SystemExit(f'error: --batch {batch} does not split evenly over {uneven} devices')
    return args


def resolve_frameworks(requested: list[str]) -> list[str]:
    """The requested frameworks in table order; 'all' means those installed (the others are skipped, with
    the reason on stderr), any other name must be installed."""
    installed = available_frameworks()
    if requested == ['all']:
        for framework in FRAMEWORKS:
            if framework not in installed:
                needs = ', '.join(FRAMEWORK_PACKAGES[framework]).replace('keras', 'keras ≥ 3')
                print(f'skipping the {framework} rows: they need {needs}', file=sys.stderr)
        return [f for f in FRAMEWORKS if f in installed]
    missing = [f for f in requested if f not in installed]
    if missing:
        needs = '; '.join(f'{f} needs {", ".join(FRAMEWORK_PACKAGES[f])}' for f in missing)
        raise SystemExit(f'error: not installed here: {needs}')
    return [f for f in FRAMEWORKS if f in requested]


def resolve_pipelines(requested: list[str]) -> list[str]:
    if requested == ['none']:
        return []
    if requested == ['auto']:
        return ['tfdata' if importlib.util.find_spec('tensorflow') is not None else 'numpy', 'device']
    return requested


def worker_main(spec_path: str, result_path: str) -> None:
    fields = json.loads(pathlib.Path(spec_path).read_text())
    spec = RowSpec(**{**fields, 'shape': tuple(fields['shape'])})
    result = run_row(spec)
    io.write_json(result_path, result)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The command with `argv` (the arguments, without the program name; default sys.argv[1:]); returns the
    rows."""
    from convlstm_jax import cli  # lazily: importing the package loads no framework (cli imports JAX)

    rows: list[dict[str, Any]] = []

    def run(flag_values: Any, spec: str | None, result: str | None) -> None:
        if flag_values.worker or spec is not None:
            if not (flag_values.worker and result is not None):
                raise SystemExit('error: only --worker SPEC RESULT takes arguments')
            worker_main(spec, result)
            return
        rows.extend(benchmark(parse_args(flag_values)))

    cli.run(run, __doc__, define_flags, argv, positional=('[SPEC]', '[RESULT]'))
    return rows


def benchmark(args: types.SimpleNamespace) -> list[dict[str, Any]]:
    """Plans and runs the rows the options ask for, prints the table; returns the rows."""
    models = [m.strip() for m in args.models.split(',') if m.strip()]
    for model in models:
        try:
            load_config(model)  # unknown names and bad configs fail here, before any row runs
        except ValueError as e:
            raise SystemExit(f'error: --models: {e}') from None
    frameworks = resolve_frameworks(args.frameworks)
    others = [f for f in frameworks if f != 'convlstm_jax']
    if max(args.population) > 1 and others:
        print(
            f'--population: only the convlstm_jax rows train populations; {", ".join(others)} run one model',
            file=sys.stderr,
        )
    specs = plan_rows(
        models=models,
        frameworks=frameworks,
        modes=args.modes,
        dtypes=args.dtypes,
        remat=args.remat,
        pipelines=resolve_pipelines(args.pipeline),
        devices=args.devices,
        populations=args.population,
        batches=args.batch,
        measure='compile' if args.memory_analysis else 'time',
        shape=args.shape,
        warmup=args.warmup,
        steps=args.steps,
        time_budget_s=args.time_budget_s,
        seed=args.seed,
        unroll=args.unroll,
    )
    if not specs:
        raise SystemExit('error: no rows to run (check --frameworks and --modes)')
    rows = run_rows(
        specs,
        timeout_s=args.row_timeout_s,
        progress=lambda message: print(message, file=sys.stderr, flush=True),
        on_rows=(lambda rows: io.write_json(args.json, list(rows))) if args.json else (lambda rows: None),
    )
    table = compiled_memory_table(rows) if args.memory_analysis else markdown_table(rows)
    print('\n'.join(header_lines(rows, specs)) + '\n\n' + table)
    return rows
