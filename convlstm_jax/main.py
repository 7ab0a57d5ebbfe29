"""Trains a classifier.

    python -m convlstm_jax.main --config configs/two_layer.py[:quick|:smoke] --workdir DIR

Any config field can be overridden (`--config.batch_size=8 --config.model.dropout=0.1`). A workdir that holds
a checkpoint resumes from it. SIGTERM or SIGINT stops after the current step with a checkpoint saved; the
process then exits with status 128 + the signal number, like a process the signal ended, so that schedulers
and scripts see an unfinished run.
"""

from __future__ import annotations

import json
import pathlib
import signal
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from convlstm_jax import distributed, tf_cpu

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file, e.g. configs/two_layer.py:quick.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and the resolved config.')
flags.mark_flags_as_required(['config', 'workdir'])
distributed.define_flags()  # --coordinator_address, --num_processes, …; a single process needs none


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
    if not flags.FLAGS['verbosity'].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    config = _load_config()
    if _needs_tensorflow(config):  # before JAX touches a device: tf.data must never take GPU memory
        _import_tensorflow(config)
    distributed.initialize_from_flags()  # None, jax.distributed untouched, for a single-process run

    import jax

    from convlstm_jax import io, train

    workdir = pathlib.Path(_WORKDIR.value).absolute()
    if jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
        io.write_json(workdir / 'config.json', json.loads(config.to_json()), sort_keys=True)
    logging.info('config:\n%s', config)
    try:
        summary = train.train_and_evaluate(config, workdir)
    except (ValueError, FileNotFoundError, FloatingPointError) as e:
        if jax.process_count() > 1:
            raise  # distributed.py's hook makes every process exit instead of waiting in a collective
        logging.info('error details', exc_info=True)
        sys.exit(f'error: {e}')
    if jax.process_index() == 0:
        print(format_summary(summary), flush=True)
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
    if summary.get('best_auc'):
        last = summary['last_validation']
        baselines = ', '.join(
            f'{key.split("/", 1)[1]} {value:.4f}'
            for key, value in last.items()
            if key.startswith('baseline_auc/')
        )
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


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with config overrides that name no field reported in one line, not a traceback."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        sys.exit(f'FATAL Flags parsing error: {e}\nPass --helpshort or --helpfull to see help on flags.')
    except (AttributeError, KeyError) as e:
        overrides = ' '.join(arg for arg in argv if arg.startswith('--config.'))
        reason = e.args[0] if e.args else e
        while isinstance(reason, Exception) and reason.args:  # config_dict wraps its KeyError
            reason = reason.args[0]
        reason = str(reason).replace("'", '')
        sys.exit(f'error: no such config field in {overrides}: {reason}')
    except (TypeError, ValueError) as e:
        sys.exit(f'error: bad --config value: {e}')


def _load_config():
    """The config (loaded lazily by config_flags), or a one-line error for a missing or broken file."""
    config = _CONFIG.value
    try:
        config.keys()  # a config file that failed to load raises on first use
    except OSError as e:
        reason = str(e).strip().splitlines()[-1].strip()
        sys.exit(f'error: cannot load the config file {flags.FLAGS["config"].config_filename}: {reason}')
    return config


if __name__ == '__main__':
    app.run(main, flags_parser=parse_flags)
