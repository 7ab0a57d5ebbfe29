"""The Keras 3 readers (.keras archives and .weights.h5), with zipfile and h5py: no TensorFlow."""

from __future__ import annotations

import io
import json
import pathlib
import re
import zipfile
from typing import Any

import h5py
import numpy as np

from convlstm_jax.keras_io.kerasfile import (
    KerasFile,
    KerasLayer,
    input_shape,
    layer_from_config,
    model_layer_configs,
    natural_key,
    unwrapped,
)


def read_archive(path: str | pathlib.Path) -> KerasFile:
    """A Keras 3 `.keras` zip: config.json, metadata.json and model.weights.h5."""
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        missing = {'config.json', 'model.weights.h5'} - names
        if missing:
            raise ValueError(f'{path}: not a Keras 3 archive, it lacks {sorted(missing)}')
        config = json.loads(archive.read('config.json'))
        metadata = json.loads(archive.read('metadata.json')) if 'metadata.json' in names else {}
        weights_bytes = archive.read('model.weights.h5')
    version = str(metadata.get('keras_version', '3'))
    layer_configs = model_layer_configs(config, path)
    with h5py.File(io.BytesIO(weights_bytes), 'r') as f:
        groups = f['layers'] if 'layers' in f else {}
        layers = []
        for c, group_name in zip(layer_configs, _keras3_group_names(layer_configs), strict=True):
            arrays = _keras3_vars(groups[group_name]) if group_name in groups else []
            layers.append(layer_from_config(c, _name_keras3_vars(unwrapped(c), arrays)))
    return KerasFile(
        path=str(path),
        format='keras',
        keras_version=version,
        layers=layers,
        has_architecture=True,
        input_shape=input_shape(layer_configs),
    )


def read_weights_h5(f: h5py.File, path: str) -> KerasFile:
    """A Keras 3 `.weights.h5`: variables by position, under layer groups named by class and number.

    Layers of one kind are matched in the order of their numbers; per-step (TimeDistributed) BatchNorms
    come before plain ones, as in the supported architectures where a plain one is usually the last.
    """
    layers = []
    for name in sorted(f['layers'], key=lambda n: (not n.startswith('time_distributed'), natural_key(n))):
        arrays = _keras3_vars(f['layers'][name])
        if arrays:
            class_name = _guess_class_from_shapes([a.shape for a in arrays])
            layers.append(KerasLayer(name, class_name, None, _name_keras3_vars(None, arrays, class_name)))
    return KerasFile(path, 'weights.h5', '3', layers, False, None)


def _keras3_group_names(layer_configs: list[dict[str, Any]]) -> list[str]:
    """Keras 3 stores a model's layers under their snake_case class names, numbered in order (conv_lstm2d,
    conv_lstm2d_1, …), not under the layers' own names."""
    used: dict[str, int] = {}
    names = []
    for c in layer_configs:
        name = _snake_case(c['class_name'])
        used[name] = used.get(name, -1) + 1
        names.append(f'{name}_{used[name]}' if used[name] else name)
    return names


def _snake_case(name: str) -> str:
    """keras.src.utils.naming.to_snake_case."""
    name = re.sub(r'\W+', '', name)
    name = re.sub('(.)([A-Z][a-z]+)', r'\1_\2', name)
    return re.sub('([a-z])([A-Z])', r'\1_\2', name).lower()


def _keras3_vars(group: h5py.Group) -> list[np.ndarray]:
    """Variables under a Keras 3 layer group, in creation order: `vars/0, vars/1, …` of each sub-object."""
    found: list[tuple[tuple, np.ndarray]] = []

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            found.append((natural_key(name), np.asarray(obj)))

    group.visititems(visit)
    return [array for _, array in sorted(found, key=lambda item: item[0])]


def _name_keras3_vars(
    layer_config: dict[str, Any] | None, arrays: list[np.ndarray], class_name: str | None = None
) -> dict[str, np.ndarray]:
    """Keras 3 stores variables by position; their names follow from the layer class (and its config)."""
    class_name = class_name or (layer_config or {}).get('class_name')
    config = (layer_config or {}).get('config', {})
    if class_name == 'ConvLSTM2D':
        names = ['kernel', 'recurrent_kernel', 'bias']
    elif class_name == 'Dense':
        names = ['kernel', 'bias']
    elif class_name == 'BatchNormalization':
        if layer_config is not None:
            affine = ['gamma'] * bool(config.get('scale', True)) + ['beta'] * bool(config.get('center', True))
        else:
            affine = ['gamma', 'beta'][: max(len(arrays) - 2, 0)]  # Either one is unsupported anyway.
        names = affine + ['moving_mean', 'moving_variance']
    else:
        names = []
    names += [f'vars_{i}' for i in range(len(names), len(arrays))]
    return dict(zip(names, arrays, strict=False))


def _guess_class_from_shapes(shapes: list[tuple[int, ...]]) -> str:
    if len(shapes[0]) == 4:
        return 'ConvLSTM2D'
    if len(shapes[0]) == 2:
        return 'Dense'
    if all(len(s) == 1 for s in shapes):
        return 'BatchNormalization'
    return 'Unknown'
