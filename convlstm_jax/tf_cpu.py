"""TensorFlow for the CPU only: tf.data and TFDS must never take GPU memory that JAX needs."""

from __future__ import annotations

import os
from types import ModuleType


def import_tensorflow() -> ModuleType:
    """Imports TensorFlow with every GPU hidden from it, and quiet logging."""
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], 'GPU')
    except RuntimeError:  # Already initialized, by an earlier call: GPUs were hidden then.
        pass
    return tf
