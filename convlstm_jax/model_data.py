"""The data a saved model is run on (evaluate, visualize): the training workdir's data config where there is
one, else the defaults with the model directory's input contract; then the command line's data overrides.

`apply_data_overrides` is the one place that reads `--config.data.FIELD=VALUE` by hand; it goes when every
command moves onto the shared config loader.
"""

from __future__ import annotations

import ast
import os
import pathlib
from collections.abc import Sequence
from typing import Any

from convlstm_jax import io

SPLIT_NAMES = ('train', 'validation', 'test')
WORKDIR_CONFIG = 'config.json'
# config.data fields that must agree with the model directory's input contract.
INPUT_FIELDS = ('height', 'width', 'time_steps', 'frames_per_step')
OVERRIDE_PREFIX = '--config.data.'


def check_split_name(split: str) -> None:
    if split not in SPLIT_NAMES:
        raise ValueError(f'unknown split {split!r}: expected one of {", ".join(SPLIT_NAMES)}')


def workdir_data_config(checkpoint: pathlib.Path) -> dict | None:
    """The `data` section of the training config beside a workdir (or a step directory in one), if any."""
    for folder in (checkpoint, checkpoint.parent.parent):
        path = folder / WORKDIR_CONFIG
        if path.is_file():
            data = io.read_json(path).get('data')
            if not isinstance(data, dict):
                raise ValueError(f'{path} has no "data" section')
            return data
    return None


def _merge(config: Any, values: dict, where: str) -> None:
    """Sets `values` (nested dicts from JSON) into a ConfigDict, lists back to tuples where defaults are."""
    for key, value in values.items():
        if key not in config:
            raise ValueError(f'{where}: unknown data config field {key!r}')
        if isinstance(value, dict):
            _merge(config[key], value, f'{where}.{key}')
        else:
            config[key] = tuple(value) if isinstance(value, list) else value


def parse_override(text: str) -> tuple[list[str], object]:
    """'--config.data.a.b=VALUE' → (['a', 'b'], VALUE as a Python literal, or the raw string)."""
    name, sep, raw = text.partition('=')
    if not sep or not name.startswith(OVERRIDE_PREFIX):
        raise ValueError(f'expected an override {OVERRIDE_PREFIX}FIELD=VALUE, found {text!r}')
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return name.removeprefix(OVERRIDE_PREFIX).split('.'), value


def apply_data_overrides(data_config: Any, overrides: Sequence[str]) -> None:
    """Sets each '--config.data.FIELD=VALUE' into `data_config`; unknown fields are refused."""
    for override in overrides:
        path, value = parse_override(override)
        target = data_config
        for depth, key in enumerate(path):
            if not hasattr(target, 'keys') or key not in target:
                raise ValueError(f'unknown data config field {".".join(path[: depth + 1])!r} in {override!r}')
            if depth < len(path) - 1:
                target = target[key]
        target[path[-1]] = value


def resolve_data_config(checkpoint: str | os.PathLike, spec: dict, overrides: Sequence[str] = ()) -> Any:
    """config.data for running `checkpoint` on its data: the workdir's training data config where there is
    one, else the defaults with the model directory's input contract; then the command-line overrides.
    Refused when the result does not fit the model's input contract."""
    from convlstm_jax.config import base_config

    data_config = base_config().data
    saved = workdir_data_config(pathlib.Path(checkpoint))
    if saved is not None:
        _merge(data_config, saved, 'workdir config.json data')
    else:
        for field in (*INPUT_FIELDS, 'horizon', 'resize'):
            if field in spec['input']:
                data_config[field] = type(data_config[field])(spec['input'][field])
    apply_data_overrides(data_config, overrides)
    mismatched = {
        field: (data_config[field], spec['input'][field])
        for field in INPUT_FIELDS
        if field in spec['input'] and data_config[field] != spec['input'][field]
    }
    if mismatched:
        details = ', '.join(f'{k}: data {d} vs model {m}' for k, (d, m) in mismatched.items())
        raise ValueError(f"the data config does not fit the model's input contract ({details})")
    return data_config
