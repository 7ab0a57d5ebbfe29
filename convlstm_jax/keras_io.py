"""Import a Keras checkpoint into a model directory (see checkpoints.py), the format every command reads.

    python -m convlstm_jax.keras_io SRC --out DIR [--config configs/one_layer.py[:variant]] [--config.FIELD=V]

SRC is one of
- a tf.keras 2 SavedModel directory (the two 2021 checkpoints), read with tf_keras;
- a Keras 2 `.h5` (a whole model, or weights only with --config), read with h5py;
- a Keras 3 `.keras` archive, read with zipfile + h5py;
- a Keras 3 `.weights.h5` (weights only: needs --config), read with h5py.
Only the SavedModel needs TensorFlow. The architecture comes from the file where the file holds it and must be
one this project builds: ConvLSTM2D → (2×2 max pooling per step → BatchNorm → ConvLSTM2D)* → [BatchNorm] →
GlobalMaxPooling2D → Dense(1, sigmoid), the ConvLSTM layers sharing one kernel size, padding and activations.
`hard_sigmoid` means clip(0.2x + 0.5, 0, 1) in Keras 2 files and relu6(x + 3) / 6 in Keras 3 files
('hard_sigmoid_keras3' here); with a Keras 3 file the --config's 'hard_sigmoid' is read the Keras 3 way too.
--config also sets the input contract (frame size, time steps, frames per step, resize, horizon) and the
compute options; without it the contract is the file's input shape with the 2021 conventions (pixels / 255,
nearest-neighbour resize, horizon 45).
"""

from __future__ import annotations

import dataclasses
import io
import json
import pathlib
import re
import sys
import zipfile
from typing import Any

import h5py
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from convlstm_jax import checkpoints, models

# Keras activation names that mean the same function in both Keras versions.
_SAME_ACTIVATIONS = ('tanh', 'sigmoid', 'relu', 'linear')
_BATCHNORM_EPSILON = 1e-3  # what models.KerasBatchNorm uses
_SUPPORTED = (
    'ConvLSTM2D -> (MaxPooling2D 2x2 per step -> BatchNormalization -> ConvLSTM2D)* -> [BatchNormalization] '
    '-> GlobalMaxPooling2D -> Dense(1, sigmoid)'
)


@dataclasses.dataclass
class KerasLayer:
    """One Keras layer: class and config (unwrapped from TimeDistributed), weights by their Keras names."""

    name: str
    class_name: str
    config: dict[str, Any] | None
    weights: dict[str, np.ndarray]


@dataclasses.dataclass
class KerasFile:
    """What a Keras checkpoint holds, whatever its format."""

    path: str
    format: str  # 'savedmodel' | 'h5' | 'keras' | 'weights.h5'
    keras_version: str
    layers: list[KerasLayer]
    has_architecture: bool
    input_shape: tuple[int | None, ...] | None  # (T, H, W, C), None where unknown

    @property
    def keras_major(self) -> int:
        return int(re.match(r'\d+', self.keras_version).group())


# ---------------------------------------------------------------------------------------------------------
# Readers


def read_keras(path: str | pathlib.Path) -> KerasFile:
    """Reads any supported Keras checkpoint."""
    path = pathlib.Path(path)
    if path.is_dir():
        if not (path / 'saved_model.pb').is_file():
            raise ValueError(f'{path} is a directory but not a SavedModel (no saved_model.pb)')
        return read_savedmodel(path)
    if not path.is_file():
        raise FileNotFoundError(f'Keras checkpoint {path} does not exist')
    if zipfile.is_zipfile(path):
        return read_keras_archive(path)
    if h5py.is_hdf5(path):
        with h5py.File(path, 'r') as f:
            if 'layers' in f and 'layer_names' not in f.attrs and 'model_weights' not in f:
                return _read_keras3_weights(f, str(path))
            return _read_legacy_h5(f, str(path))
    raise ValueError(
        f'{path}: not a SavedModel directory, a .keras archive or an HDF5 file (.h5 / .weights.h5)'
    )


def read_savedmodel(path: str | pathlib.Path) -> KerasFile:
    """A tf.keras 2 SavedModel, loaded with tf_keras (Keras 2) on the CPU."""
    from convlstm_jax.tf_cpu import import_tensorflow

    import_tensorflow()
    import tf_keras

    try:
        model = tf_keras.models.load_model(str(path), compile=False)
    except Exception as e:  # TensorFlow raises many types here; the message is what helps.
        raise ValueError(f'{path}: not loadable as a tf.keras 2 SavedModel ({type(e).__name__}: {e})') from e
    layer_configs = model.get_config()['layers']
    weights = {layer.name: {_weight_name(w.name): w.numpy() for w in layer.weights} for layer in model.layers}
    layers = [_layer_from_config(c, weights.get(c['config']['name'], {})) for c in layer_configs]
    return KerasFile(
        path=str(path),
        format='savedmodel',
        keras_version=f'2 (tf.keras SavedModel, read with tf_keras {tf_keras.__version__})',
        layers=layers,
        has_architecture=True,
        input_shape=_input_shape(layer_configs),
    )


def read_keras_archive(path: str | pathlib.Path) -> KerasFile:
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
    layer_configs = _model_layer_configs(config, path)
    with h5py.File(io.BytesIO(weights_bytes), 'r') as f:
        groups = f['layers'] if 'layers' in f else {}
        layers = []
        for c, group_name in zip(layer_configs, _keras3_group_names(layer_configs), strict=True):
            arrays = _keras3_vars(groups[group_name]) if group_name in groups else []
            layers.append(_layer_from_config(c, _name_keras3_vars(_unwrapped(c), arrays)))
    return KerasFile(
        path=str(path),
        format='keras',
        keras_version=version,
        layers=layers,
        has_architecture=True,
        input_shape=_input_shape(layer_configs),
    )


def _read_legacy_h5(f: h5py.File, path: str) -> KerasFile:
    """A Keras 2 style HDF5 file: a whole model (model_config + model_weights) or save_weights output."""
    version = _text(f.attrs.get('keras_version', '2'))
    group = f['model_weights'] if 'model_weights' in f else f
    if 'layer_names' not in group.attrs:
        raise ValueError(f'{path}: HDF5 file without Keras layer_names: not a Keras weights file')
    weights = {}
    for layer_name in map(_text, group.attrs['layer_names']):
        layer_group = group[layer_name]
        names = [_text(n) for n in layer_group.attrs.get('weight_names', [])]
        weights[layer_name] = {_weight_name(n): np.asarray(layer_group[n]) for n in names}
    if 'model_config' in f.attrs:
        layer_configs = _model_layer_configs(json.loads(_text(f.attrs['model_config'])), path)
        layers = [_layer_from_config(c, weights.get(c['config']['name'], {})) for c in layer_configs]
        return KerasFile(path, 'h5', version, layers, True, _input_shape(layer_configs))
    layers = [KerasLayer(name, _guess_class(w), None, w) for name, w in weights.items() if w]
    return KerasFile(path, 'h5', version, layers, False, None)


def _read_keras3_weights(f: h5py.File, path: str) -> KerasFile:
    """A Keras 3 `.weights.h5`: variables by position, under layer groups named by class and number.

    Layers of one kind are matched in the order of their numbers; per-step (TimeDistributed) BatchNorms
    come before plain ones, as in the supported architectures where a plain one is usually the last.
    """
    layers = []
    for name in sorted(f['layers'], key=lambda n: (not n.startswith('time_distributed'), _natural_key(n))):
        arrays = _keras3_vars(f['layers'][name])
        if arrays:
            class_name = _guess_class_from_shapes([a.shape for a in arrays])
            layers.append(KerasLayer(name, class_name, None, _name_keras3_vars(None, arrays, class_name)))
    return KerasFile(path, 'weights.h5', '3', layers, False, None)


def _model_layer_configs(config: dict[str, Any], path: Any) -> list[dict[str, Any]]:
    layers = config.get('config', {}).get('layers') if isinstance(config.get('config'), dict) else None
    if config.get('class_name') not in ('Functional', 'Model', 'Sequential') or not isinstance(layers, list):
        raise ValueError(
            f'{path}: expected a Sequential or Functional Keras model, found {config.get("class_name")!r}'
        )
    return layers


def _layer_from_config(layer_config: dict[str, Any], weights: dict[str, np.ndarray]) -> KerasLayer:
    inner = _unwrapped(layer_config)
    return KerasLayer(layer_config['config']['name'], inner['class_name'], inner['config'], weights)


def _unwrapped(layer_config: dict[str, Any]) -> dict[str, Any]:
    """The layer a TimeDistributed wraps (per-step pooling and BatchNorm), else the layer itself."""
    if layer_config['class_name'] == 'TimeDistributed':
        return layer_config['config']['layer']
    return layer_config


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
            found.append((_natural_key(name), np.asarray(obj)))

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


def _guess_class(weights: dict[str, np.ndarray]) -> str:
    if 'recurrent_kernel' in weights:
        return 'ConvLSTM2D'
    if 'moving_mean' in weights:
        return 'BatchNormalization'
    if 'kernel' in weights and weights['kernel'].ndim == 2:
        return 'Dense'
    return 'Unknown'


def _guess_class_from_shapes(shapes: list[tuple[int, ...]]) -> str:
    if len(shapes[0]) == 4:
        return 'ConvLSTM2D'
    if len(shapes[0]) == 2:
        return 'Dense'
    if all(len(s) == 1 for s in shapes):
        return 'BatchNormalization'
    return 'Unknown'


def _input_shape(layer_configs: list[dict[str, Any]]) -> tuple[int | None, ...] | None:
    """(T, H, W, C) from the InputLayer (or the first layer's batch_input_shape in a Keras 2 Sequential)."""
    for c in layer_configs[:2]:
        config = c['config']
        shape = config.get('batch_input_shape') or config.get('batch_shape')
        if shape is not None:
            return tuple(shape[1:])
    return None


def _weight_name(name: str) -> str:
    """'convLSTM_1/kernel:0' -> 'kernel'."""
    return name.split('/')[-1].split(':')[0]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _natural_key(text: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r'(\d+)', text))


# ---------------------------------------------------------------------------------------------------------
# Architecture


def infer_architecture(kfile: KerasFile) -> dict[str, Any]:
    """config.model fields (architecture only) from a Keras model, or ValueError naming every problem."""
    layers = [layer for layer in kfile.layers if layer.class_name != 'InputLayer']
    kinds = ''.join(_kind(layer) for layer in layers)
    num_convs = kinds.count('C')
    batchnorm_last = kinds.endswith('BGD')
    expected = 'C' + 'PBC' * (num_convs - 1) + 'B' * batchnorm_last + 'GD'
    if num_convs == 0 or kinds != expected:
        found = ', '.join(f'{layer.name} ({layer.class_name})' for layer in layers)
        raise ValueError(f'{kfile.path}: unsupported architecture. Supported: {_SUPPORTED}. Found: {found}')
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
    if keras_name in _SAME_ACTIVATIONS or keras_name == 'hard_sigmoid_keras3':
        return keras_name
    raise ValueError(
        f'unsupported Keras activation {keras_name!r}: expected hard_sigmoid or one of {_SAME_ACTIVATIONS}'
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
        if not np.isclose(c.get('epsilon', 1e-3), _BATCHNORM_EPSILON):
            problems.append(f'{layer.name}: epsilon {c.get("epsilon")}, supported: {_BATCHNORM_EPSILON}')
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


# ---------------------------------------------------------------------------------------------------------
# Weights


def keras_variables(kfile: KerasFile) -> dict[str, dict[str, np.ndarray]]:
    """Flat {'params/convlstm_0/kernel': array, 'batch_stats/batchnorm_0/mean': array, …} from the file.

    Weights of layers that have no counterpart here keep a 'keras/<layer>/<weight>' name, so that a mismatch
    names them.
    """
    flat: dict[str, np.ndarray] = {}
    counts = {'ConvLSTM2D': 0, 'BatchNormalization': 0, 'Dense': 0}
    for layer in kfile.layers:
        if not layer.weights:
            continue
        index = counts.get(layer.class_name)
        if index is None:
            flat.update({f'keras/{layer.name}/{k}': v for k, v in layer.weights.items()})
            continue
        counts[layer.class_name] += 1
        for weight, array in layer.weights.items():
            flat[_project_name(layer.class_name, index, weight) or f'keras/{layer.name}/{weight}'] = array
    return flat


def _project_name(class_name: str, index: int, weight: str) -> str | None:
    if class_name == 'ConvLSTM2D' and weight in ('kernel', 'recurrent_kernel', 'bias'):
        return f'params/convlstm_{index}/{weight}'
    if class_name == 'BatchNormalization' and weight in ('moving_mean', 'moving_variance'):
        return f'batch_stats/batchnorm_{index}/{"mean" if weight == "moving_mean" else "var"}'
    if class_name == 'Dense' and index == 0 and weight in ('kernel', 'bias'):
        return f'params/dense/{weight}'
    return None


def expected_shapes(model_fields: dict[str, Any], input_spec: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Flat name -> shape of the variables the model built from `model_fields` has (computed abstractly)."""
    model = models.build_model(ml_collections.ConfigDict(model_fields))
    clips = jax.ShapeDtypeStruct(
        (
            1,
            input_spec['time_steps'],
            input_spec['height'],
            input_spec['width'],
            input_spec['frames_per_step'],
        ),
        jnp.float32,
    )
    shapes = jax.eval_shape(lambda c: model.init(jax.random.PRNGKey(0), c, train=False), clips)
    return {name: tuple(leaf.shape) for name, leaf in _flatten(shapes).items()}


def match_variables(
    found: dict[str, np.ndarray], expected: dict[str, tuple[int, ...]], source: str
) -> dict[str, Any]:
    """The nested variables if `found` has exactly the expected names and shapes, else a ValueError listing
    the missing, unexpected and mis-shaped weights."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    misshaped = sorted(
        f'{name}: expected {expected[name]}, found {tuple(found[name].shape)}'
        for name in set(found) & set(expected)
        if tuple(found[name].shape) != expected[name]
    )
    if missing or unexpected or misshaped:
        lines = [f'{source}: the weights do not fit the architecture']
        for title, items in (('missing', missing), ('unexpected', unexpected), ('mis-shaped', misshaped)):
            if items:
                lines.append(f'  {title}:\n' + '\n'.join(f'    {item}' for item in items))
        raise ValueError('\n'.join(lines))
    variables: dict[str, Any] = {'params': {}, 'batch_stats': {}}
    for name, array in found.items():
        node = variables
        *parents, leaf = name.split('/')
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = np.asarray(array, dtype=np.float32)
    return variables


def _flatten(tree: Any, prefix: str = '') -> dict[str, Any]:
    if isinstance(tree, dict) or hasattr(tree, 'items'):
        flat = {}
        for key, value in tree.items():
            flat.update(_flatten(value, f'{prefix}{key}/'))
        return flat
    return {prefix.rstrip('/'): tree}


# ---------------------------------------------------------------------------------------------------------
# Import


def import_keras(
    src: str | pathlib.Path, config: ml_collections.ConfigDict | None = None
) -> tuple[dict, dict]:
    """(spec, variables) for a model directory, from a Keras checkpoint."""
    kfile = read_keras(src)
    if config is None and not kfile.has_architecture:
        raise ValueError(f'{src} holds weights only ({kfile.format}): pass --config to give the architecture')
    model_fields = _model_fields(kfile, config)
    input_spec = _input_spec(kfile, config)
    found = keras_variables(kfile)
    variables = match_variables(found, expected_shapes(model_fields, input_spec), str(src))
    spec = {
        'model': model_fields,
        'input': input_spec,
        'source': {
            'keras_file': str(pathlib.Path(src).resolve()),
            'keras_format': kfile.format,
            'keras_version': kfile.keras_version,
            'keras_layers': [f'{layer.name} ({layer.class_name})' for layer in kfile.layers],
        },
    }
    return spec, variables


def _model_fields(kfile: KerasFile, config: ml_collections.ConfigDict | None) -> dict[str, Any]:
    """Architecture from the file (checked against --config if given) or from --config; compute options from
    --config or the defaults."""
    from convlstm_jax.config import base_config

    fields = checkpoints.model_fields((config or base_config()).model)
    if config is not None:
        fields = _as_keras_version(fields, kfile.keras_major)
    if kfile.has_architecture:
        inferred = infer_architecture(kfile)
        if config is not None:
            differences = [
                f'{key}: file {inferred[key]!r}, config {fields.get(key)!r}'
                for key in models.ARCHITECTURE_FIELDS
                if _normalized(inferred[key]) != _normalized(fields.get(key))
            ]
            if differences:
                raise ValueError(
                    f"{kfile.path}: the file's architecture differs from --config:\n  "
                    + '\n  '.join(differences)
                )
        fields.update(inferred)
    return fields


def _as_keras_version(fields: dict[str, Any], keras_major: int) -> dict[str, Any]:
    """With a Keras 3 file, the config's 'hard_sigmoid' is the Keras 3 function that file was trained with."""
    if keras_major < 3:
        return fields
    return {
        k: (
            'hard_sigmoid_keras3'
            if k in ('activation', 'recurrent_activation') and v == 'hard_sigmoid'
            else v
        )
        for k, v in fields.items()
    }


def _normalized(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_normalized(v) for v in value)
    if isinstance(value, float):
        return round(value, 9)
    return value


def _input_spec(kfile: KerasFile, config: ml_collections.ConfigDict | None) -> dict[str, Any]:
    """The input contract: --config's data section, else the file's input shape with the 2021 conventions."""
    from convlstm_jax.config import base_config

    spec = checkpoints.input_contract((config or base_config()).data)
    keys = ('time_steps', 'height', 'width', 'frames_per_step')
    shape = kfile.input_shape or (None,) * 4
    if config is None:
        unknown = [key for key, size in zip(keys, shape, strict=True) if size is None]
        if unknown:
            raise ValueError(f'{kfile.path}: the input shape {shape} leaves {unknown} open; pass --config')
        spec.update({key: int(size) for key, size in zip(keys, shape, strict=True)})
        return spec
    conflicts = [
        f'{key}: file {size}, config {spec[key]}'
        for key, size in zip(keys, shape, strict=True)
        if size is not None and size != spec[key]
    ]
    if conflicts:
        raise ValueError(f'{kfile.path}: the input shape differs from --config: {"; ".join(conflicts)}')
    return spec


def define_flags(flag_values: Any, argv: list[str]) -> None:
    """The options of the command, in `flag_values` (see cli.run)."""
    from absl import flags

    from convlstm_jax import cli
    from convlstm_jax import config as config_lib

    config_lib.define_config_flag(flag_values=flag_values, argv=argv)
    cli.define_common_flags(flag_values, cpu_devices=False)
    flags.DEFINE_string(
        'out',
        None,
        'Model directory to write (replaced if it exists).',
        flag_values=flag_values,
        required=True,
    )


def run(f: Any, src: str) -> int:
    from convlstm_jax import cli

    config = cli.load_config_or_exit(cli.config_holder(f)) if f['config'].value is not None else None
    if config is not None:
        cli.print_config_and_exit_if_asked(config, f)
    elif f.print_config:
        sys.exit('error: --print_config needs --config')
    try:
        spec, variables = import_keras(src, config)
    except (ValueError, FileNotFoundError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    out = checkpoints.save_model_dir(f.out, spec, variables)
    count = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(variables['params']))
    print(f'wrote {out}: {spec["model"]["filters"]} filters, {count:,} parameters, input {spec["input"]}')
    return 0


def main(argv: list[str] | None = None) -> int:
    """The command with `argv` (SRC and the options, without the program name; default sys.argv[1:])."""
    from convlstm_jax import cli

    return cli.run(run, __doc__, define_flags, argv, positional=('SRC',))


if __name__ == '__main__':
    sys.exit(main())
