"""A Keras checkpoint as a model directory's (spec, variables): architecture, input contract, weights."""

from __future__ import annotations

import pathlib
from typing import Any

import ml_collections

from convlstm_jax import checkpoints, models
from convlstm_jax.keras_io.architecture import infer_architecture
from convlstm_jax.keras_io.kerasfile import KerasFile
from convlstm_jax.keras_io.read import read_keras
from convlstm_jax.keras_io.weights import expected_shapes, keras_variables, match_variables


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
