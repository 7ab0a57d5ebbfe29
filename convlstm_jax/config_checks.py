"""What a config may hold: the checks every loaded config passes (`check`), refusing in one line (ConfigError)
values no run can start with, a population's member_overrides included, before anything is written."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

# Overrides a trained checkpoint cannot take: the model's fields and the input shape it was built for.
ARCHITECTURE_FIELDS = ('model', 'data.height', 'data.width', 'data.time_steps', 'data.frames_per_step')

# The fields a population member may set for itself (config.member_overrides): none of them changes a shape.
PER_MEMBER_FIELDS = ('learning_rate', 'l1', 'l2', 'class_weights', 'model.dropout', 'model.recurrent_dropout')
# Overrides that reach the model as traced rates (the others reach the optimizer and the loss).
DROPOUT_FIELDS = {'model.dropout': 'dropout', 'model.recurrent_dropout': 'recurrent_dropout'}


class ConfigError(ValueError):
    """A config that cannot be used, said in one line."""


def is_architecture(name: str) -> bool:
    return any(name == field or name.startswith(field + '.') for field in ARCHITECTURE_FIELDS)


# Values a run cannot start with; the type of each field is already enforced by ConfigDict.
_POSITIVE = (
    'batch_size',
    'eval_batch_size',
    'num_epochs',
    'log_every_steps',
    'keep_checkpoints',
    'data.height',
    'data.width',
    'data.time_steps',
    'data.frames_per_step',
    'data.horizon',
)
_CHOICES = {
    'data.pipeline': ('tfdata', 'numpy', 'device'),
    'data.resize': ('nearest', 'area'),
    'model.padding': ('valid', 'same'),
    'model.compute_dtype': ('float32', 'bfloat16'),
    'lr_schedule': ('constant', 'cosine'),
}


def check(config: ml_collections.ConfigDict) -> None:
    """Refuses, in one line, values no run can start with (before anything is written)."""
    for name in _POSITIVE:
        value = _get(config, name)
        if value is not None and value < 1:
            raise ConfigError(f'{name} must be at least 1, found {value}')
    for name, choices in _CHOICES.items():
        value = _get(config, name)
        if value is not None and value not in choices:
            raise ConfigError(f'{name} must be one of {", ".join(choices)}, found {value!r}')
    steps = _get(config, 'steps_per_epoch')
    if steps is not None and steps != -1 and steps < 1:
        raise ConfigError(f'steps_per_epoch must be -1 (one pass over the data) or at least 1, found {steps}')
    filters = _get(config, 'model.filters')
    if filters is not None and (not filters or any(int(f) < 1 for f in filters)):
        raise ConfigError(f'model.filters must list at least one positive filter count, found {filters}')
    learning_rate = _get(config, 'learning_rate')
    if learning_rate is not None and not learning_rate > 0:
        raise ConfigError(f'learning_rate must be positive, found {learning_rate}')
    for name in ('warmup_steps', 'clip_global_norm'):
        value = _get(config, name)
        if value is not None and value < 0:
            raise ConfigError(f'{name} must be 0 (off) or more, found {value}')
    fraction = _get(config, 'final_learning_rate_fraction')
    if fraction is not None and not 0 <= fraction <= 1:
        raise ConfigError(f'final_learning_rate_fraction must be in [0, 1], found {fraction}')
    weights = _get(config, 'class_weights')
    if weights is not None and weights != 'auto':
        if isinstance(weights, str) or len(weights) != 2:
            raise ConfigError(f"class_weights must be 'auto' or a pair (w0, w1), found {weights!r}")
    if _get(config, 'population') is not None:
        check_population(config)


def _get(config: ml_collections.ConfigDict, name: str) -> Any:
    """The value at a dotted name, or None where this config has no such field."""
    target: Any = config
    for part in name.split('.'):
        if not hasattr(target, 'keys') or part not in target:
            return None
        target = target[part]
    return target


# ---------------------------------------------------------------------------------------------------------
# A population (population.py)


def check_population(config: ml_collections.ConfigDict) -> None:
    """Refuses, in one line, a population or member_overrides no run can start with."""
    count = int(config.population)
    if count < 1:
        raise ConfigError(f'population must be at least 1, found {count}')
    if int(config.init_seed) < -1:
        raise ConfigError(f'init_seed must be -1 (config.seed) or a seed ≥ 0, found {config.init_seed}')
    overrides = config.member_overrides
    if not isinstance(overrides, (Mapping, ml_collections.ConfigDict)):
        raise ConfigError(
            f"member_overrides must be a mapping {{field: {count} values}}, e.g. {{'learning_rate': "
            f'(1e-3, 3e-4)}}, found {overrides!r}'
        )
    for field, values in overrides.items():
        if field not in PER_MEMBER_FIELDS:
            reason = (
                'it changes the architecture or the shapes, which all members share'
                if _changes_shapes(field)
                else 'it is shared by all members'
            )
            raise ConfigError(
                f'member_overrides cannot set {field!r}: {reason}; a member may differ in '
                f'{", ".join(PER_MEMBER_FIELDS)}'
            )
        if isinstance(values, str) or not isinstance(values, Sequence) or len(values) != count:
            raise ConfigError(
                f'member_overrides[{field!r}] must list one value per member ({count}), found {values!r}'
            )
        for value in values:
            _check_value(field, value)


def _changes_shapes(field: str) -> bool:
    return is_architecture(field) or field in ('batch_size', 'eval_batch_size', 'population')


def _check_value(field: str, value: Any) -> None:
    where = f'member_overrides[{field!r}]'
    if field == 'class_weights':
        if value == 'auto':
            return
        if isinstance(value, str) or not isinstance(value, Sequence) or len(value) != 2:
            raise ConfigError(f"{where}: each value must be 'auto' or a pair (w0, w1), found {value!r}")
        value_list = list(value)
    else:
        value_list = [value]
    for number in value_list:
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
            raise ConfigError(f'{where}: each value must be a finite number, found {value!r}')
    if field == 'learning_rate' and not value >= 0:
        raise ConfigError(f'{where}: learning rates must be ≥ 0, found {value!r}')
    if field in ('l1', 'l2') and value < 0:
        raise ConfigError(f'{where}: penalties must be ≥ 0, found {value!r}')
    if field == 'class_weights' and min(value_list) < 0:
        raise ConfigError(f'{where}: class weights must be ≥ 0, found {value!r}')
    if field in DROPOUT_FIELDS and not 0 <= value < 1:
        raise ConfigError(f'{where}: dropout rates must be in [0, 1), found {value!r}')
