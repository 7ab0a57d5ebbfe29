"""The Keras 2 HDF5 reader (.h5: a whole model, or save_weights output), with h5py: no TensorFlow."""

from __future__ import annotations

import json

import h5py
import numpy as np

from convlstm_jax.keras_io.kerasfile import (
    KerasFile,
    KerasLayer,
    input_shape,
    layer_from_config,
    model_layer_configs,
    text,
    weight_name,
)


def read_h5(f: h5py.File, path: str) -> KerasFile:
    """A Keras 2 style HDF5 file: a whole model (model_config + model_weights) or save_weights output."""
    version = text(f.attrs.get('keras_version', '2'))
    group = f['model_weights'] if 'model_weights' in f else f
    if 'layer_names' not in group.attrs:
        raise ValueError(f'{path}: HDF5 file without Keras layer_names: not a Keras weights file')
    weights = {}
    for layer_name in map(text, group.attrs['layer_names']):
        layer_group = group[layer_name]
        names = [text(n) for n in layer_group.attrs.get('weight_names', [])]
        weights[layer_name] = {weight_name(n): np.asarray(layer_group[n]) for n in names}
    if 'model_config' in f.attrs:
        layer_configs = model_layer_configs(json.loads(text(f.attrs['model_config'])), path)
        layers = [layer_from_config(c, weights.get(c['config']['name'], {})) for c in layer_configs]
        return KerasFile(path, 'h5', version, layers, True, input_shape(layer_configs))
    layers = [KerasLayer(name, _guess_class(w), None, w) for name, w in weights.items() if w]
    return KerasFile(path, 'h5', version, layers, False, None)


def _guess_class(weights: dict[str, np.ndarray]) -> str:
    if 'recurrent_kernel' in weights:
        return 'ConvLSTM2D'
    if 'moving_mean' in weights:
        return 'BatchNormalization'
    if 'kernel' in weights and weights['kernel'].ndim == 2:
        return 'Dense'
    return 'Unknown'
