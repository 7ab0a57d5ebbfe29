"""tf_keras (Keras 2) twins of this project's layer and classifier, with this project's weights copied in.

Shared by the model, training and benchmark tests: `keras_classifier(model_config, input_shape)` is the
2021 model definition for a `config.model`; `set_classifier_weights` / `set_convlstm_weights` copy flax
variables in; `classifier_batch_stats` reads the moving statistics back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from convlstm_jax.tf_cpu import import_tensorflow


def tf_keras() -> Any:
    """The tf_keras module (Keras 2), imported after TensorFlow has been told to leave GPUs alone."""
    import_tensorflow()
    import tf_keras as module

    return module


def keras_convlstm(input_shape: tuple[int, ...], **layer_kwargs: Any) -> Any:
    """A tf_keras model holding one ConvLSTM2D over input (T, H, W, C)."""
    keras = tf_keras()
    inputs = keras.Input(shape=input_shape)
    outputs = keras.layers.ConvLSTM2D(**{'kernel_size': 3, **layer_kwargs})(inputs)
    return keras.Model(inputs, outputs)


def set_convlstm_weights(keras_layer: Any, params: Mapping[str, Any]) -> None:
    """Copies a flax ConvLSTM2D's params (kernel, recurrent_kernel[, bias]) into a tf_keras ConvLSTM2D."""
    names = ['kernel', 'recurrent_kernel'] + (['bias'] if 'bias' in params else [])
    keras_layer.set_weights([np.asarray(params[name]) for name in names])


def keras_classifier(
    model_config: Mapping[str, Any], input_shape: tuple[int, ...], logits: bool = True
) -> Any:
    """The 2021 Keras definition of the classifier `model_config` describes.

    With `logits` the last Dense(1) has no sigmoid, to compare with this project's logits.
    """
    keras = tf_keras()
    filters = tuple(model_config['filters'])
    inputs = keras.Input(shape=input_shape)
    x = inputs
    for index, units in enumerate(filters):
        last = index == len(filters) - 1
        x = keras.layers.ConvLSTM2D(
            units,
            model_config['kernel_size'],
            padding=model_config['padding'],
            activation=model_config['activation'],
            recurrent_activation=model_config['recurrent_activation'],
            use_bias=model_config['use_bias'],
            return_sequences=not last,
            name=f'convlstm_{index}',
        )(x)
        if not last:
            x = keras.layers.TimeDistributed(keras.layers.MaxPooling2D((2, 2), padding='valid'))(x)
            x = keras.layers.TimeDistributed(keras.layers.BatchNormalization(center=False, scale=False))(x)
        elif model_config['batchnorm_last']:
            x = keras.layers.BatchNormalization(center=False, scale=False)(x)
    x = keras.layers.GlobalMaxPooling2D()(x)
    outputs = keras.layers.Dense(1, activation=None if logits else 'sigmoid', name='dense')(x)
    return keras.Model(inputs, outputs)


def _batchnorm_layers(keras_model: Any) -> list[Any]:
    keras = tf_keras()
    found = []
    for layer in keras_model.layers:
        inner = layer.layer if isinstance(layer, keras.layers.TimeDistributed) else layer
        if isinstance(inner, keras.layers.BatchNormalization):
            found.append(inner)
    return found


def set_classifier_weights(keras_model: Any, variables: Mapping[str, Any]) -> None:
    """Copies flax Classifier variables ({'params', 'batch_stats'}) into `keras_classifier`'s model."""
    params = variables['params']
    index = 0
    while f'convlstm_{index}' in params:
        set_convlstm_weights(keras_model.get_layer(f'convlstm_{index}'), params[f'convlstm_{index}'])
        index += 1
    dense = params['dense']
    keras_model.get_layer('dense').set_weights([np.asarray(dense['kernel']), np.asarray(dense['bias'])])
    stats = variables.get('batch_stats', {})
    for index, layer in enumerate(_batchnorm_layers(keras_model)):
        layer.set_weights([np.asarray(stats[f'batchnorm_{index}'][k]) for k in ('mean', 'var')])


def classifier_batch_stats(keras_model: Any) -> dict[str, dict[str, np.ndarray]]:
    """The Keras model's BatchNorm moving statistics in this project's batch_stats layout."""
    return {
        f'batchnorm_{index}': {'mean': layer.moving_mean.numpy(), 'var': layer.moving_variance.numpy()}
        for index, layer in enumerate(_batchnorm_layers(keras_model))
    }
