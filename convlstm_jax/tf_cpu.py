"""TensorFlow for the CPU only: tf.data and TFDS must never take GPU memory that JAX needs; and quiet.

TensorFlow's C++ start-up lines are written before its logging reads TF_CPP_MIN_LOG_LEVEL ("All log
messages before absl::InitializeLog() …", oneDNN, "Could not find cuda drivers"), and listing devices on a
CPU-only machine logs "failed call to cuInit" as an error. None of them is something a user can act on, so
they are filtered out of the process's stderr (file descriptor 2, where C++ writes) while TensorFlow starts;
every other line written then is passed on.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from types import ModuleType

_NOISE = re.compile(
    r'All log messages before absl::InitializeLog\(\) is called|oneDNN custom operations are on|'
    r'Could not find cuda drivers on your machine|failed call to cuInit|Unable to register cu(DNN|FFT|BLAS) '
    r'factory|computation placer already registered|TF-TRT Warning: Could not find TensorRT|'
    r'This TensorFlow binary is optimized to use available CPU instructions|'
    r'To enable the following instructions: .* in other operations, rebuild TensorFlow'
)


def import_tensorflow() -> ModuleType:
    """Imports TensorFlow with every GPU hidden from it, and quiet logging."""
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
    with _without_startup_noise():
        import tensorflow as tf

        try:
            tf.config.set_visible_devices([], 'GPU')
        except RuntimeError:  # Already initialized, by an earlier call: GPUs were hidden then.
            pass
    return tf


@contextlib.contextmanager
def _without_startup_noise() -> Iterator[None]:
    """Collects what is written to fd 2 meanwhile and writes back the lines that are not start-up noise."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (e.g. an embedding host): nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [
                line
                for line in captured.read().decode(errors='replace').splitlines(keepends=True)
                if not _NOISE.search(line)
            ]
            if kept:
                sys.stderr.write(''.join(kept))
                sys.stderr.flush()
