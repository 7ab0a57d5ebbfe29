"""The tf.keras 2 SavedModel reader: the one format that needs TensorFlow, imported only to read one."""

from __future__ import annotations

import pathlib

from convlstm_jax.keras_io.kerasfile import KerasFile, input_shape, layer_from_config, weight_name


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
    weights = {layer.name: {weight_name(w.name): w.numpy() for w in layer.weights} for layer in model.layers}
    layers = [layer_from_config(c, weights.get(c['config']['name'], {})) for c in layer_configs]
    return KerasFile(
        path=str(path),
        format='savedmodel',
        keras_version=f'2 (tf.keras SavedModel, read with tf_keras {tf_keras.__version__})',
        layers=layers,
        has_architecture=True,
        input_shape=input_shape(layer_configs),
    )
