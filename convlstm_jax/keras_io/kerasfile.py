"""KerasFile: what a Keras checkpoint holds, whatever its format, and the config helpers its readers share."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import numpy as np


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


def model_layer_configs(config: dict[str, Any], path: Any) -> list[dict[str, Any]]:
    """The layer configs of a Sequential or Functional model's config, else a ValueError."""
    layers = config.get('config', {}).get('layers') if isinstance(config.get('config'), dict) else None
    if config.get('class_name') not in ('Functional', 'Model', 'Sequential') or not isinstance(layers, list):
        raise ValueError(
            f'{path}: expected a Sequential or Functional Keras model, found {config.get("class_name")!r}'
        )
    return layers


def layer_from_config(layer_config: dict[str, Any], weights: dict[str, np.ndarray]) -> KerasLayer:
    inner = unwrapped(layer_config)
    return KerasLayer(layer_config['config']['name'], inner['class_name'], inner['config'], weights)


def unwrapped(layer_config: dict[str, Any]) -> dict[str, Any]:
    """The layer a TimeDistributed wraps (per-step pooling and BatchNorm), else the layer itself."""
    if layer_config['class_name'] == 'TimeDistributed':
        return layer_config['config']['layer']
    return layer_config


def input_shape(layer_configs: list[dict[str, Any]]) -> tuple[int | None, ...] | None:
    """(T, H, W, C) from the InputLayer (or the first layer's batch_input_shape in a Keras 2 Sequential)."""
    for c in layer_configs[:2]:
        config = c['config']
        shape = config.get('batch_input_shape') or config.get('batch_shape')
        if shape is not None:
            return tuple(shape[1:])
    return None


def weight_name(name: str) -> str:
    """'convLSTM_1/kernel:0' -> 'kernel'."""
    return name.split('/')[-1].split(':')[0]


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def natural_key(text: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r'(\d+)', text))
