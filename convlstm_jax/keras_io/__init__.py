"""Keras checkpoints into model directories (see checkpoints.py), the format every command reads.

    python -m convlstm_jax.keras_io SRC --out DIR [--config configs/one_layer.py[:variant]] [--config.FIELD=V]

The package: `kerasfile` (KerasFile: what a checkpoint holds, whatever its format), the readers `savedmodel`
(tf.keras 2 SavedModels, the one format that needs TensorFlow), `keras2` (.h5) and `keras3` (.keras,
.weights.h5), `read` (read_keras: the reader a path needs), `architecture` (the layers recognised as a model
this project builds), `weights` (the Keras weights under this project's names, checked against the model),
`convert` (import_keras: spec and variables of a model directory) and `cli` (the command line).
"""
