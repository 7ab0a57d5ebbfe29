"""The one Keras definition of the 2021 models, for the benchmark's Keras rows and the parity tests.

`keras_classifier(model_config, input_shape)` builds the classifier a `config.model` describes, in tf_keras
(Keras 2, the default) or in Keras 3 on any backend; `set_classifier_weights` / `set_convlstm_weights` copy
this project's flax variables in, `classifier_batch_stats` reads the moving statistics back, and
`compile_keras_model` is the 2021 compile. TensorFlow is imported only when a tf_keras model is asked for.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def tf_keras() -> Any:
    """The tf_keras module (Keras 2), imported after TensorFlow has been told to leave GPUs alone."""
    from convlstm_jax.tf_cpu import import_tensorflow

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
    """Copies a flax ConvLSTM2D's params (kernel, recurrent_kernel[, bias]) into a Keras ConvLSTM2D."""
    names = ['kernel', 'recurrent_kernel'] + (['bias'] if 'bias' in params else [])
    keras_layer.set_weights([np.asarray(params[name]) for name in names])


def _recurrent_activation(keras: Any, name: Any) -> Any:
    """The 2021 (Keras 2) hard_sigmoid clip(0.2x + 0.5, 0, 1) in any Keras; Keras 3's is relu6(x + 3) / 6."""
    if name != 'hard_sigmoid' or not keras.__version__.startswith('3'):
        return name

    def hard_sigmoid(x: Any) -> Any:
        return keras.ops.clip(0.2 * x + 0.5, 0.0, 1.0)

    return hard_sigmoid


def keras_classifier(
    model_config: Mapping[str, Any], input_shape: tuple[int, ...], logits: bool = True, keras: Any = None
) -> Any:
    """The 2021 Keras definition of the classifier `model_config` (a config.model or its dict) describes.

    ConvLSTM2D layers with a TimeDistributed 2×2 max-pool and BatchNorm between them, BatchNorm after the last
    where configured, GlobalMaxPool2D, Dense(1). With `logits` the Dense has no sigmoid, to compare with this
    project's logits. `keras`: the Keras module to build in (tf_keras when None).
    """
    keras = keras or tf_keras()
    layers = keras.layers
    filters = tuple(model_config['filters'])
    kernel_size = model_config['kernel_size']
    inputs = keras.Input(shape=tuple(input_shape))
    x = inputs
    for index, units in enumerate(filters):
        last = index == len(filters) - 1
        x = layers.ConvLSTM2D(
            units,
            tuple(kernel_size) if not isinstance(kernel_size, int) else kernel_size,
            padding=model_config['padding'],
            activation=model_config['activation'],
            recurrent_activation=_recurrent_activation(keras, model_config['recurrent_activation']),
            use_bias=model_config['use_bias'],
            dropout=model_config.get('dropout', 0.0),
            recurrent_dropout=model_config.get('recurrent_dropout', 0.0),
            return_sequences=not last,
            name=f'convlstm_{index}',
        )(x)
        if not last:
            x = layers.TimeDistributed(layers.MaxPooling2D((2, 2), padding='valid'))(x)
            x = layers.TimeDistributed(layers.BatchNormalization(center=False, scale=False))(x)
        elif model_config['batchnorm_last']:
            x = layers.BatchNormalization(center=False, scale=False)(x)
    x = layers.GlobalMaxPooling2D()(x)
    outputs = layers.Dense(1, activation=None if logits else 'sigmoid', name='dense')(x)
    return keras.Model(inputs, outputs)


def compile_keras_model(keras: Any, model: Any, config: Any) -> None:
    """The 2021 compile: Adam, binary cross-entropy on probabilities, BCE and ROC-AUC metrics."""
    optimizer = keras.optimizers.Adam(
        learning_rate=config.learning_rate,
        beta_1=config.adam_b1,
        beta_2=config.adam_b2,
        epsilon=config.adam_eps,
    )
    metrics = [keras.metrics.BinaryCrossentropy(), keras.metrics.AUC(num_thresholds=200)]
    model.compile(optimizer=optimizer, loss=keras.losses.BinaryCrossentropy(), metrics=metrics)


def _batchnorm_layers(keras_model: Any) -> list[Any]:
    found = []
    for layer in keras_model.layers:
        inner = getattr(layer, 'layer', layer)  # unwraps TimeDistributed
        if type(inner).__name__ == 'BatchNormalization':
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
        f'batchnorm_{index}': {
            'mean': np.asarray(layer.moving_mean.numpy()),
            'var': np.asarray(layer.moving_variance.numpy()),
        }
        for index, layer in enumerate(_batchnorm_layers(keras_model))
    }
