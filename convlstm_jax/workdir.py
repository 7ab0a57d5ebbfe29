"""The training workdir, in one place: what a run writes under WORKDIR, and what a resumed run shares.

config.json          the resolved config (train.train_and_evaluate writes it once its checks pass)
model.json           architecture and input contract (checkpoints.MODEL_FORMAT): what commands read
checkpoints/<step>/  orbax steps: variables/, train_state/, metrics/ (checkpoints.py)
checkpoints-broken/  unreadable steps moved aside on resume, never deleted
metrics.jsonl        one JSON object per logged step or evaluation (metric_writer.py)
tensorboard/         TensorBoard event files (`tensorboard --logdir WORKDIR/tensorboard`)
summary.json         the device count from the start; at the end best steps, last validation, speed
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import numpy as np

from convlstm_jax import checkpoints, io, models

CONFIG_JSON = checkpoints.WORKDIR_CONFIG
MODEL_JSON = checkpoints.MODEL_JSON
CHECKPOINTS_DIR = checkpoints.CHECKPOINTS_DIR
BROKEN_DIR = checkpoints.BROKEN_DIR
METRICS_JSONL = 'metrics.jsonl'
TENSORBOARD_DIR = 'tensorboard'
SUMMARY_JSON = 'summary.json'

# Config fields a resumed run may change: they lengthen the run, pace it, or say where things are, and the
# batches and updates of the steps both runs make stay the same. steps_per_epoch is not among them: it sets
# the epoch boundaries, and with them which shuffle (a function of seed and epoch) each later step draws from.
# model.remat and model.unroll change how the same model is computed (speed and memory), not what.
RUN_LENGTH_AND_PACE_FIELDS = (
    'num_epochs',
    'eval_every_steps',
    'log_every_steps',
    'checkpoint_every_steps',
    'checkpoint_every_minutes',
    'keep_checkpoints',
    'data.pipeline',  # the backends give identical batches (tests/test_pipeline.py)
    'data.data_dir',  # where the prepared dataset is cached
    'data.write_tfds',  # whether the cache also holds a TFDS copy
    'model.remat',
    'model.unroll',
)


def model_spec(config) -> dict[str, Any]:
    """The workdir's model.json: what every command needs to rebuild the model and feed it."""
    source = {'trained_by': 'convlstm_jax.train', 'data_source': config.data.source}
    if config.init_from:
        source['init_from'] = str(config.init_from)
    spec = {
        'format': checkpoints.MODEL_FORMAT,
        'model': checkpoints.model_fields(config.model),
        'input': checkpoints.input_contract(config.data),
        'source': source,
    }
    if config.population > 1:  # each step holds the members on a leading axis (checkpoints.load_model)
        spec['population'] = int(config.population)
    return spec


def check_same_architecture(
    found: dict, expected: dict, where: str, remedy: str = 'another --workdir'
) -> None:
    """Parameters of `found` (a model.json) fit the model `expected` (from the config), or a clear error."""

    def describe(spec):
        fields = {key: spec['model'].get(key) for key in models.PARAMETER_FIELDS}
        fields['filters'] = [int(f) for f in np.atleast_1d(fields['filters'])]
        fields['kernel_size'] = list(np.broadcast_to(fields['kernel_size'], (2,)).tolist())  # 3 ≡ [3, 3]
        fields['frames_per_step'] = spec['input'].get('frames_per_step')
        return fields

    if describe(found) != describe(expected):
        raise ValueError(
            f'{where} holds a checkpoint of another architecture: {_fmt(describe(found))}; the config asks '
            f'for {_fmt(describe(expected))}. Use {remedy}, or a config that matches.'
        )


def config_dict(config) -> dict[str, Any]:
    """The config as config.json holds it (tuples become lists)."""
    return json.loads(config.to_json())


def read_config(workdir: str | pathlib.Path) -> dict[str, Any] | None:
    """The workdir's config.json, or None where there is none."""
    path = pathlib.Path(workdir) / CONFIG_JSON
    if not path.is_file():
        return None
    try:
        saved = io.read_json(path)
    except ValueError as e:
        raise ValueError(f'{path} is not valid JSON: {e}') from None
    if not isinstance(saved, dict):
        raise ValueError(f'{path} holds no config (a JSON object)')
    return saved


def training_config(path: str | pathlib.Path) -> dict[str, Any] | None:
    """The training config beside a workdir or a step directory in one (WORKDIR/checkpoints/<step>), if any:
    what evaluate, predict and visualize read to feed a trained model its data."""
    path = pathlib.Path(path)
    for folder in (path, path.parent.parent):
        saved = read_config(folder)
        if saved is not None:
            return saved
    return None


def write_config(workdir: pathlib.Path, config) -> None:
    io.write_json(workdir / CONFIG_JSON, config_dict(config), sort_keys=True)


def config_differences(saved: dict[str, Any], config) -> dict[str, tuple[Any, Any]]:
    """{dotted field: (saved value, new value)} for the fields a resumed run may not change.

    Fields only one side has (a config.json of an older version) are not compared.
    """
    old, new = _flatten(saved), _flatten(config_dict(config))
    free = set(RUN_LENGTH_AND_PACE_FIELDS)
    if config.lr_schedule == 'cosine':  # the decay spans the run: its length sets every step's learning rate
        free.discard('num_epochs')
    return {
        key: (old[key], new[key])
        for key in sorted(old.keys() & new.keys())
        if old[key] != new[key] and key not in free
    }


def check_same_run(where: str, saved: dict[str, Any], config) -> None:
    """A workdir continues the run it was started with: other values are refused in one line."""
    differences = config_differences(saved, config)
    if differences:
        was = ', '.join(f'{key}={_value(old)}' for key, (old, _) in differences.items())
        now = ', '.join(f'{key}={_value(new)}' for key, (_, new) in differences.items())
        raise ValueError(
            f'workdir {where} was started with {was}; this run asks for {now}: use another --workdir, or the '
            'same values'
        )


def recorded_device_count(workdir: pathlib.Path) -> int | None:
    """The device count the workdir's last run trained on (summary.json), if recorded."""
    path = workdir / SUMMARY_JSON
    try:
        count = io.read_json(path).get('device_count')
    except (OSError, ValueError, AttributeError):
        return None
    return count if isinstance(count, int) else None


def write_summary(workdir: pathlib.Path, summary: dict[str, Any]) -> None:
    io.write_json(workdir / SUMMARY_JSON, summary, sort_keys=True)


def _flatten(tree: dict[str, Any], prefix: str = '') -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f'{prefix}{key}.'))
        else:
            flat[f'{prefix}{key}'] = value
    return flat


def _value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else str(value)


def _fmt(fields: dict) -> str:
    return ', '.join(f'{key}={value}' for key, value in fields.items())
