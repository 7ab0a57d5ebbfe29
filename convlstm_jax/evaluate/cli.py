"""The command line of `python -m convlstm_jax.evaluate` (see the package docstring).

`parse_args` is the one function that reads the command line, including the hand-parsed
`--config.data.FIELD=VALUE` overrides it passes on to convlstm_jax/model_data.py.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Sequence

from convlstm_jax import distributed
from convlstm_jax.evaluate.core import BootstrapOptions
from convlstm_jax.evaluate.report import model_report, reference_report


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """(the options, the --config.data.FIELD=VALUE overrides): the one reader of the command line."""
    parser = argparse.ArgumentParser(
        prog='python -m convlstm_jax.evaluate',
        description='Evaluate a model (or the shipped 2021 predictions) beside the ỹ baselines; '
        'thresholds are chosen on validation and applied to the scored split.',
        epilog='Model mode also takes data overrides: --config.data.FIELD=VALUE, e.g. --config.data.path=DIR',
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--checkpoint', help='model directory, training workdir or step directory')
    source.add_argument('--reference', help='the 2021 artifacts folder (e.g. ../shared/reference/fish2021)')
    parser.add_argument(
        '--select', default='best_auc', help='step of a workdir: best_auc | best_loss | latest'
    )
    parser.add_argument('--split', default='test', help='split to score (model mode)')
    parser.add_argument('--out', required=True, help='folder for report.md, metrics.json and the plots')
    parser.add_argument('--batch_size', type=int, default=16, help='clips per prediction batch (model mode)')
    distributed.add_cpu_devices_argument(parser)
    parser.add_argument(
        '--num_resamples', type=int, default=1000, help='bootstrap resamples for AUC intervals'
    )
    parser.add_argument('--block_length', type=int, default=240, help='bootstrap block length in samples')
    parser.add_argument('--seed', type=int, default=0, help='bootstrap seed')
    parser.add_argument(
        '--window',
        type=int,
        default=600,
        help='frames per window of the timeline plot (it shows the windows with the most positives)',
    )
    args, rest = parser.parse_known_args(argv)
    overrides = [arg for arg in rest if arg.startswith('--config.')]
    unknown = [arg for arg in rest if not arg.startswith('--config.')]
    if unknown:
        parser.error(f'unrecognized arguments: {" ".join(unknown)}')
    if overrides and args.reference:
        parser.error('--config.* overrides apply to --checkpoint only')
    for name in ('batch_size', 'num_resamples', 'block_length', 'window'):
        if getattr(args, name) < 1:
            parser.error(f'--{name} must be at least 1, found {getattr(args, name)}')
    return args, overrides


def main(argv: Sequence[str] | None = None) -> int:
    args, overrides = parse_args(argv)
    if args.cpu_devices:
        distributed.use_cpu_devices(args.cpu_devices)
    bootstrap = BootstrapOptions(args.block_length, args.num_resamples, args.seed)
    try:
        if args.reference:
            report = reference_report(args.reference, args.out, bootstrap, window=args.window)
        else:
            report = model_report(
                args.checkpoint,
                args.out,
                select=args.select,
                split=args.split,
                overrides=overrides,
                batch_size=args.batch_size,
                bootstrap=bootstrap,
                window=args.window,
            )
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    print(f'wrote {pathlib.Path(args.out) / "report.md"}')
    for name, result in report['predictors'].items():
        rule = result['youden']
        print(
            f'  {name:24s} AUC {result["auc"]:.3f}  Youden thr {rule["threshold"]:.4g} '
            f'(chosen on {rule["chosen_on"]}): TPR {rule["tpr"]:.3f} FPR {rule["fpr"]:.3f}'
        )
    return 0
