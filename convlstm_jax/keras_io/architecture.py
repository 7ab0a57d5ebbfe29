"""The architecture of a Keras model: recognised as one this project builds, as config.model fields."""

from __future__ import annotations

from typing import Any

import numpy as np

from convlstm_jax import models
from convlstm_jax.keras_io.kerasfile import KerasFile, KerasLayer

# Keras activation names that mean the same function in both Keras versions.
SAME_ACTIVATIONS = ('tanh', 'sigmoid', 'relu', 'linear')
BATCHNORM_EPSILON = 1e-3  # what models.KerasBatchNorm uses
SUPPORTED = (
    'ConvLSTM2D -> (MaxPooling2D 2x2 per step -> BatchNormalization -> ConvLSTM2D)* -> [BatchNormalization] '
    '-> GlobalMaxPooling2D -> Dense(1, sigmoid)'
)


def infer_architecture(kfile: KerasFile) -> dict[str, Any]:
    """config.model fields (architecture only) from a Keras model, or ValueError naming every problem."""
    layers = [layer for layer in kfile.layers if layer.class_name != 'InputLayer']
    kinds = ''.join(_kind(layer) for layer in layers)
    num_convs = kinds.count('C')
    batchnorm_last = kinds.endswith('BGD')
    expected = 'C' + 'PBC' * (num_convs - 1) + 'B' * batchnorm_last + 'GD'
    if num_convs == 0 or kinds != expected:
        found = ', '.join(f'{layer.name} ({layer.class_name})' for layer in layers)
        raise ValueError(f'{kfile.path}: unsupported architecture. Supported: {SUPPORTED}. Found: {found}')
    problems: list[str] = []
    convs = [layer for layer in layers if layer.class_name == 'ConvLSTM2D']
    for i, layer in enumerate(convs):
        problems += _check_conv(layer, return_sequences=i < len(convs) - 1)
    for layer in layers:
        problems += _check_other(layer)
    shared = {}
    per_layer = ('filters', 'batchnorm_last')  # set per layer, or not a ConvLSTM2D setting at all
    for field in (f for f in models.ARCHITECTURE_FIELDS if f not in per_layer):
        values = [_conv_field(layer.config, field, kfile.keras_major) for layer in convs]
        if any(v != values[0] for v in values):
            problems.append(
                f'{field} differs between the ConvLSTM2D layers ({values}); one value is supported'
            )
        shared[field] = values[0]
    if problems:
        raise ValueError(f'{kfile.path}: unsupported layer settings:\n  ' + '\n  '.join(problems))
    return {
        'filters': [int(layer.config['filters']) for layer in convs],
        **shared,
        'batchnorm_last': batchnorm_last,
    }


def _kind(layer: KerasLayer) -> str:
    return {
        'ConvLSTM2D': 'C',
        'MaxPooling2D': 'P',
        'MaxPooling3D': 'P',
        'BatchNormalization': 'B',
        'GlobalMaxPooling2D': 'G',
        'Dense': 'D',
    }.get(layer.class_name, '?')


def _conv_field(config: dict[str, Any], field: str, keras_major: int) -> Any:
    value = config[field]
    if field == 'kernel_size':
        sizes = tuple(value) if isinstance(value, list | tuple) else (value, value)
        return sizes[0] if sizes[0] == sizes[1] else sizes
    if field in ('activation', 'recurrent_activation'):
        return activation_name(value, keras_major)
    if field in ('dropout', 'recurrent_dropout'):
        return float(value)
    return value


def activation_name(keras_name: Any, keras_major: int) -> str:
    """This project's name for a Keras activation; `hard_sigmoid` depends on the Keras version."""
    if isinstance(keras_name, dict):  # A serialized activation object.
        keras_name = keras_name.get('config', {}).get('name', keras_name.get('class_name'))
    if keras_name == 'hard_sigmoid':
        return 'hard_sigmoid' if keras_major < 3 else 'hard_sigmoid_keras3'
    if keras_name in SAME_ACTIVATIONS or keras_name == 'hard_sigmoid_keras3':
        return keras_name
    raise ValueError(
        f'unsupported Keras activation {keras_name!r}: expected hard_sigmoid or one of {SAME_ACTIVATIONS}'
    )


def _check_conv(layer: KerasLayer, return_sequences: bool) -> list[str]:
    c = layer.config
    problems = []
    requirements = {
        'strides': (1, 1),
        'dilation_rate': (1, 1),
        'data_format': 'channels_last',
        'go_backwards': False,
        'return_state': False,
        'stateful': False,
        'return_sequences': return_sequences,
    }
    for key, wanted in requirements.items():
        value = c.get(key, wanted)
        value = tuple(value) if isinstance(value, list) else value
        if key in ('strides', 'dilation_rate') and isinstance(value, int):
            value = (value, value)
        if value != wanted:
            problems.append(f'{layer.name}: {key}={value!r}, supported: {wanted!r}')
    if c.get('padding') not in ('valid', 'same'):
        problems.append(f'{layer.name}: padding={c.get("padding")!r}, supported: valid, same')
    return problems


def _check_other(layer: KerasLayer) -> list[str]:
    c = layer.config or {}
    if layer.class_name in ('MaxPooling2D', 'MaxPooling3D'):
        size = (1, 2, 2) if layer.class_name == 'MaxPooling3D' else (2, 2)
        pool, strides = tuple(c.get('pool_size', ())), tuple(c.get('strides') or c.get('pool_size', ()))
        if pool != size or strides != size or c.get('padding') != 'valid':
            return [
                f'{layer.name}: pool {pool} strides {strides} {c.get("padding")}, supported: {size} valid'
            ]
    if layer.class_name == 'BatchNormalization':
        axis = c.get('axis', -1)
        axis = axis[0] if isinstance(axis, list | tuple) and len(axis) == 1 else axis
        problems = []
        if c.get('center', True) or c.get('scale', True):
            problems.append(
                f'{layer.name}: BatchNormalization with center/scale; supported: center=False, scale=False'
            )
        if not np.isclose(c.get('epsilon', 1e-3), BATCHNORM_EPSILON):
            problems.append(f'{layer.name}: epsilon {c.get("epsilon")}, supported: {BATCHNORM_EPSILON}')
        if axis not in (-1, 3, 4):
            problems.append(f'{layer.name}: BatchNormalization over axis {axis}, supported: the channel axis')
        return problems
    if layer.class_name == 'Dense':
        if c.get('units') != 1 or c.get('activation') != 'sigmoid' or not c.get('use_bias', True):
            return [
                f'{layer.name}: Dense(units={c.get("units")}, activation={c.get("activation")!r}, '
                f'use_bias={c.get("use_bias")}), supported: Dense(1, sigmoid) with bias'
            ]
    if layer.class_name == 'GlobalMaxPooling2D' and c.get('keepdims', False):
        return [f'{layer.name}: keepdims=True is not supported']
    return []
