"""Keras weights under this project's variable names, checked against the shapes the model has."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from convlstm_jax import models
from convlstm_jax.keras_io.kerasfile import KerasFile


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
