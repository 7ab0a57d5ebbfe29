"""Trains a classifier.

    python -m convlstm_jax.main --config configs/two_layer.py[:quick|:smoke] [--workdir DIR]

Without --workdir the run goes to runs/<config file stem>[_<variant>] (runs/two_layer, runs/two_layer_quick).
Any config field can be overridden (--config.batch_size=8 --config.model.dropout=0.1); --print_config lists
every field with its value. A workdir that holds a checkpoint resumes from it. On a CPU-only machine the CPU
is split into one JAX device per core (--cpu_devices=1 turns that off). SIGTERM or SIGINT stops after the
current step with a checkpoint saved; the process then exits with status 128 + the signal number, like a
process the signal ended, so that schedulers and scripts see an unfinished run.
"""

from __future__ import annotations

import pathlib
import signal
import sys

from absl import app, flags, logging

from convlstm_jax import cli, distributed, process_group, tf_cpu
from convlstm_jax import config as config_lib

_CONFIG = config_lib.define_config_flag()
_WORKDIR = flags.DEFINE_string(
    'workdir',
    None,
    'Directory for checkpoints, metrics and the resolved config. Default: runs/<config file stem>, with '
    '_<variant> after a colon variant (runs/two_layer, runs/two_layer_quick).',
)
flags.mark_flags_as_required(['config'])
cli.define_common_flags()  # --cpu_devices, --print_config
distributed.define_flags()  # --coordinator_address, --num_processes, …; a single process needs none


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
    if not flags.FLAGS['verbosity'].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    config = cli.load_config_or_exit(_CONFIG)
    cli.print_config_and_exit_if_asked(config)
    workdir = pathlib.Path(
        _WORKDIR.value or config_lib.default_workdir(config_lib.config_file_argument(_CONFIG))
    )
    try:
        group = distributed.group_from_flags()
        devices_note = cli.set_up_cpu_devices(
            (config.batch_size, config.eval_batch_size), multi_process=group is not None
        )
    except (process_group.DistributedSetupError, config_lib.ConfigError) as e:
        sys.exit(f'error: {e}')
    if _needs_tensorflow(config):  # before JAX touches a device: tf.data must never take GPU memory
        _import_tensorflow(config)
    distributed.initialize_from_flags(group=group)  # jax.distributed untouched for a single process

    import jax

    from convlstm_jax import checkpoints, train

    logging.info('config:\n%s', config)
    try:  # train_and_evaluate checks everything before it writes the workdir
        summary = train.train_and_evaluate(config, workdir, devices_note=devices_note)
    except checkpoints.CheckpointError as e:  # a corrupt checkpoint: the one line names the step and the file
        if jax.process_count() > 1:
            raise
        print(f'error: {e}', file=sys.stderr, flush=True)
        sys.exit(2)
    except (ValueError, FileNotFoundError, FloatingPointError) as e:
        if jax.process_count() > 1:
            raise  # distributed.py's hook makes every process exit instead of waiting in a collective
        logging.info('error details', exc_info=True)
        sys.exit(f'error: {e}')
    if jax.process_index() == 0:
        # The workdir as given, like the first line.
        print(format_summary({**summary, 'workdir': str(workdir)}), flush=True)
    if summary['stopped_by']:
        sys.exit(128 + _signal_number(summary['stopped_by']))


def _needs_tensorflow(config) -> bool:
    return config.data.pipeline == 'tfdata' or config.data.source == 'tfds'


def _import_tensorflow(config) -> None:
    try:
        tf_cpu.import_tensorflow()
    except ModuleNotFoundError as e:
        if e.name != 'tensorflow':
            raise
        sys.exit(
            f'error: data.pipeline={config.data.pipeline!r} with data.source={config.data.source!r} needs '
            'TensorFlow, which is not installed here; pass --config.data.pipeline=numpy'
        )


def _signal_number(name: str) -> int:
    try:
        return int(signal.Signals[name])
    except KeyError:  # stopped because another process was signalled
        return int(signal.SIGTERM)


def format_summary(summary: dict) -> str:
    lines = [
        f'workdir {summary["workdir"]}: {summary["steps"]} steps, {summary["wall_seconds"]:.0f} s, '
        f'{summary["train_clips_per_s"]:.1f} training clips/s'
    ]
    if summary.get('members'):
        lines[0] += f' per member, {len(summary["members"])} members'
        lines += _members_table(summary)
    elif summary.get('best_auc'):
        last = summary['last_validation']
        baselines = _baselines(last)
        lines.append(
            f'best validation AUC {summary["best_auc"]["auc"]:.4f} at step {summary["best_auc"]["step"]}; '
            f'best validation loss {summary["best_loss"]["loss"]:.4f} at step {summary["best_loss"]["step"]}'
        )
        lines.append(
            f'last validation: AUC {last["auc"]:.4f}, loss {last["loss"]:.4f}; ỹ baselines: {baselines}'
        )
    if summary['stopped_by']:
        lines.append(
            f'stopped by {summary["stopped_by"]} with a checkpoint at step {summary["steps"]}; '
            'run the same command again to resume'
        )
    return '\n'.join(lines)


def _baselines(validation: dict) -> str:
    """'-y_tilde[t-1] 0.6087, all-negative 0.5000': the ỹ baselines' AUC of a validation record."""
    return ', '.join(
        f'{key.split("/", 1)[1]} {value:.4f}'
        for key, value in validation.items()
        if key.startswith('baseline_auc/')
    )


def _members_table(summary: dict) -> list[str]:
    """A population's members: what sets each apart, its best validation AUC and loss, and the best member."""
    members = summary['members']
    fixed = ('member', 'init_seed', 'frozen_at_step', 'best_auc', 'best_loss', 'last_validation')
    overrides = [key for key in members[0] if key not in fixed]
    header = ''.join(f'{key:>14s}' for key in overrides)
    lines = [f'member  init seed  {header}  best AUC (step)  best loss (step)']
    for m in members:
        auc = f'{m["best_auc"]["auc"]:.4f} ({m["best_auc"]["step"]})' if 'best_auc' in m else '-'
        loss = f'{m["best_loss"]["loss"]:.4f} ({m["best_loss"]["step"]})' if 'best_loss' in m else '-'
        values = ''.join(f'{m[key]!s:>14s}' for key in overrides)
        frozen = f'  frozen at step {m["frozen_at_step"]}' if m.get('frozen_at_step') is not None else ''
        lines.append(f'{m["member"]:6d}  {m["init_seed"]:9d}  {values}  {auc:>15s}  {loss:>16s}{frozen}')
    if summary.get('best_auc'):
        best = summary['best_auc']
        last = members[best['member']].get('last_validation', {})
        baselines = _baselines(last)
        lines.append(
            f'best: member {best["member"]}, validation AUC {best["auc"]:.4f} at step {best["step"]} (what '
            'evaluate, predict and visualize take by default; --member i for another)'
        )
        lines.append(f'ỹ baselines: {baselines}')
    return lines


if __name__ == '__main__':
    app.run(main, flags_parser=cli.flags_parser(__doc__))
