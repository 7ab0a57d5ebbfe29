"""The command line, `python -m convlstm_jax.benchmark [flags]`, and the hidden `--worker` of each row."""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import sys
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


def _choices(valid: Sequence[str], *, special: Sequence[str] = ()) -> Callable[[str], list[str]]:
    """An argparse type: a comma list of `valid` names, or one of the `special` words alone (as a 1-list)."""

    def parse(text: str) -> list[str]:
        if text in special:
            return [text]
        values = [v.strip() for v in text.split(',') if v.strip()]
        if not values or any(v not in valid for v in values):
            words = ''.join(f' or {w}' for w in special)
            raise argparse.ArgumentTypeError(
                f'expected a comma list of {", ".join(valid)}{words}; got {text!r}'
            )
        return values

    return parse


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(d) for d in text.split(','))
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f'expected T,H,W,C positive integers; got {text!r}')
    return shape


def _positive_ints(example: str) -> Callable[[str], list[int]]:
    """An argparse type: a comma list of positive integers, e.g. `example`."""

    def parse(text: str) -> list[int]:
        try:
            values = [int(v) for v in text.split(',')]
        except ValueError:
            values = []
        if not values or min(values) < 1:
            raise argparse.ArgumentTypeError(f'expected positive integers like {example}; got {text!r}')
        return values

    return parse


def _remat(text: str) -> list[bool]:
    return [v == 'on' for v in _choices(('off', 'on'))(text)]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog='python -m convlstm_jax.benchmark',
        description='Training and inference throughput of the ConvLSTM classifiers against Keras and '
        'PyTorch, on one machine.',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        '--models', default='one_layer,two_layer', help='config names in configs/ or .py paths'
    )
    parser.add_argument(
        '--frameworks',
        default='all',
        type=_choices(FRAMEWORKS, special=('all',)),
        help=f'comma list of {", ".join(FRAMEWORKS)}; all: those installed here',
    )
    parser.add_argument('--modes', default='train,infer', type=_choices(MODES), help='train, infer or both')
    parser.add_argument(
        '--dtypes',
        default='float32,bfloat16',
        type=_choices(DTYPES),
        help='compute dtypes of the convlstm_jax rows (parameters, BatchNorm and loss stay float32)',
    )
    parser.add_argument(
        '--remat', default='on', type=_remat, help='convlstm_jax training rows: off, on or off,on'
    )
    parser.add_argument(
        '--devices',
        default='1',
        type=_positive_ints('1,2'),
        help='convlstm_jax rows: devices the step is pmapped over, e.g. 1,2; on a CPU each row splits the '
        'CPU into that many devices (--cpu_devices of the training job)',
    )
    parser.add_argument('--unroll', type=int, default=None, help="scan unrolling (None: the config's)")
    parser.add_argument(
        '--pipeline',
        default='auto',
        type=_choices(PIPELINE_BACKENDS, special=('auto', 'none')),
        help='input pipeline backends of the end-to-end rows (device: clips cut in the step); auto: tfdata '
        'where TensorFlow is installed, else numpy, and device',
    )
    parser.add_argument('--shape', default=DEFAULT_SHAPE, type=_shape, help='clip shape T,H,W,C')
    parser.add_argument(
        '--batch', default='4', type=_positive_ints('4,16,64'), help='global batch sizes, e.g. 4 or 4,16,64'
    )
    parser.add_argument(
        '--memory-analysis',
        action='store_true',
        help="compile this project's training steps and report XLA's memory analysis per device instead of "
        'running them (for batches that do not fit in memory); other frameworks and modes are left out',
    )
    parser.add_argument('--steps', type=int, default=10, help='timed steps per row')
    parser.add_argument('--warmup', type=int, default=2, help='untimed steps first (the first one compiles)')
    parser.add_argument(
        '--time-budget-s',
        type=float,
        default=300.0,
        help='per row, warm-up and timed steps each stop early after this long (one step at least)',
    )
    parser.add_argument('--row-timeout-s', type=float, default=3600.0, help='a row running longer is killed')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--json', type=pathlib.Path, default=None, help='write the rows to this JSON file')
    parser.add_argument('--worker', nargs=2, metavar=('SPEC', 'RESULT'), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error(f'expected --steps ≥ 1, --warmup ≥ 0; got {args.steps}, {args.warmup}')
    for batch in args.batch:
        uneven = [count for count in args.devices if batch % count]
        if uneven:
            parser.error(f'--batch {batch} does not split evenly over {uneven} devices')
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
    args = parse_args(argv)
    if args.worker:
        worker_main(*args.worker)
        return []
    models = [m.strip() for m in args.models.split(',') if m.strip()]
    for model in models:
        load_config(model)  # unknown names fail here, before any row runs
    specs = plan_rows(
        models=models,
        frameworks=resolve_frameworks(args.frameworks),
        modes=args.modes,
        dtypes=args.dtypes,
        remat=args.remat,
        pipelines=resolve_pipelines(args.pipeline),
        devices=args.devices,
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
