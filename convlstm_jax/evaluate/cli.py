"""The command line of `python -m convlstm_jax.evaluate` (see the package docstring).

    python -m convlstm_jax.evaluate --reference ../shared/reference/fish2021 --out DIR
    python -m convlstm_jax.evaluate --checkpoint PATH [--select best_auc] [--member best] --out DIR

With --checkpoint the data comes from the training workdir's config.json (a model directory without one, such
as an imported Keras model, takes the defaults with its model.json's input contract); override data fields
with --config.data.FIELD=VALUE (e.g. --config.data.path=other.mp4); overrides that would change the
architecture are refused. On a CPU-only machine the CPU is split into one JAX device per core
(--cpu_devices=1 turns that off). --split (default test) chooses the split scored.
"""

from __future__ import annotations

import pathlib
import sys
from collections.abc import Sequence

from absl import flags

from convlstm_jax import cli
from convlstm_jax import config as config_lib
from convlstm_jax.evaluate.core import BootstrapOptions

_POSITIVE = ('batch_size', 'num_resamples', 'block_length', 'window')


def define_flags(flag_values: flags.FlagValues, argv: Sequence[str]) -> None:
    """The options of evaluate, in `flag_values` (see cli.run)."""
    config_lib.define_config_flag(from_workdir=True, flag_values=flag_values, argv=argv)
    cli.define_common_flags(flag_values)
    cli.define_checkpoint_flags(flag_values)

    def define(kind, name, default, help_text, **kwargs):
        getattr(flags, f'DEFINE_{kind}')(name, default, help_text, flag_values=flag_values, **kwargs)

    define('string', 'checkpoint', None, 'Model directory, training workdir or step directory to evaluate.')
    define('string', 'reference', None, 'The 2021 artifacts folder (e.g. ../shared/reference/fish2021).')
    define('string', 'split', 'test', 'Split to score (with --checkpoint): train | validation | test.')
    define('string', 'out', None, 'Folder for report.md, metrics.json and the plots.')
    define('integer', 'batch_size', 16, 'Clips per prediction batch (with --checkpoint).')
    define('integer', 'num_resamples', 1000, 'Bootstrap resamples for AUC intervals.')
    define('integer', 'block_length', 240, 'Bootstrap block length in samples.')
    define('integer', 'seed', 0, 'Bootstrap seed.')
    define(
        'integer', 'window', 600, 'Frames per window of the timeline plot (those with the most positives).'
    )
    flags.mark_flag_as_required('out', flag_values=flag_values)
    flags.mark_flags_as_mutual_exclusive(['checkpoint', 'reference'], required=True, flag_values=flag_values)


def run(f: flags.FlagValues) -> int:
    from convlstm_jax.evaluate.report import model_report, reference_report

    holder = cli.config_holder(f)
    for name in _POSITIVE:
        if f[name].value < 1:
            sys.exit(f'error: --{name} must be at least 1, found {f[name].value}')
    bootstrap = BootstrapOptions(f.block_length, f.num_resamples, f.seed)
    try:
        if f.reference:
            if config_lib.overrides_given(holder) or f.print_config:
                sys.exit('error: --config.* overrides and --print_config apply to --checkpoint only')
            if f['select'].present or f['member'].present:
                sys.exit('error: --select and --member apply to --checkpoint only')
            report = reference_report(f.reference, f.out, bootstrap, window=f.window)
        else:
            config = cli.saved_model_start(f, f.batch_size, 'evaluating')
            report = model_report(
                f.checkpoint,
                f.out,
                data_config=config.data,
                select=f.select,
                member=f.member,
                split=f.split,
                batch_size=f.batch_size,
                bootstrap=bootstrap,
                window=f.window,
            )
    except (ValueError, FileNotFoundError, KeyError) as e:  # a corrupt checkpoint too (CheckpointError)
        print(f'error: {e}', file=sys.stderr)
        return 2
    member = report['source'].get('member')  # a population's member; the reference has none
    print(f'wrote {pathlib.Path(f.out) / "report.md"}' + ('' if member is None else f' (member {member})'))
    for name, result in report['predictors'].items():
        rule = result['youden']
        print(
            f'  {name:24s} AUC {result["auc"]:.3f}  Youden thr {rule["threshold"]:.4g} '
            f'(chosen on {rule["chosen_on"]}): TPR {rule["tpr"]:.3f} FPR {rule["fpr"]:.3f}'
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The command with `argv` (the arguments, without the program name; default sys.argv[1:])."""
    return cli.run(run, __doc__, define_flags, argv)
