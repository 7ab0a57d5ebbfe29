"""The 'tfdata' backend: clips cut by TensorFlow ops inside tf.data, from frames held in a tf.Variable.

Each clip is one `tf.gather` of its n·c history frames from the variable (a ResourceGather: it reads only
those frames), reshaped to (n, c, H, W) and laid out (n, H, W, c) exactly as `clips.batch_time_channels` lays
it out, then flipped with `tf.reverse`. A parallel, order-preserving map cuts the clips of a step, a batch
groups them, and prefetch keeps `prefetch` steps ready; no Python runs per clip, so the work leaves the GIL to
TensorFlow's threads.

The layout change is the costly part: TensorFlow transposes a 4-wide uint8 axis one byte at a time. With 2 or
4 frames per step, the channels are instead packed into one uint16/uint32 per pixel (channel j in byte j: a
weighted sum over the channel axis), flipped as such, and bitcast back to bytes, which on a little-endian
machine is the same layout. Measured here: 2.4–2.9× the clips per CPU-second of the transpose, which stays
for other counts (docs/data.md).

The frames live in a non-trainable tf.Variable, not in the graph (graph constants are capped at 2 GB). It is
filled a chunk at a time, so a memory-mapped split is read from disk once into TensorFlow's memory: this
backend holds a second, resident copy of every split it serves (863 MB for the 2021 training split), where the
'numpy' backend reads the memory-mapped file in place. For splits larger than the host's memory, use 'numpy'.
The variables of the last few frame arrays are kept (keyed by the array, whose frames are taken as read-only),
so later epochs do not copy the frames again.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Iterator
from typing import Any

import numpy as np

from convlstm_jax.tf_cpu import import_tensorflow

_FILL_FRAMES = 1024  # frames copied into the variable at a time: bounds the extra memory of the copy
_KEPT_VARIABLES = 4  # the splits of one run (train, validation, test) and one spare
_variables: dict[int, tuple[Any, Any]] = {}  # id(frames) -> (weak reference to frames, tf.Variable)


def _tensorflow():
    try:
        return import_tensorflow()
    except ImportError as error:
        raise ImportError(f"the 'tfdata' pipeline needs TensorFlow ({error}); use backend='numpy'") from error


def frames_variable(frames: np.ndarray):
    """A tf.Variable holding a copy of `frames` (uint8 (T, H, W)), made once per frame array."""
    tf = _tensorflow()
    key = id(frames)
    kept = _variables.get(key)
    if kept is not None and kept[0]() is frames:
        return kept[1]
    for dead in [other for other, (array, _) in _variables.items() if array() is None]:
        del _variables[dead]  # its frames are gone: free the copy before making another
    with tf.device('/CPU:0'):
        variable = tf.Variable(tf.zeros(frames.shape, tf.uint8), trainable=False, name='frames')
        for start in range(0, frames.shape[0], _FILL_FRAMES):
            stop = min(start + _FILL_FRAMES, frames.shape[0])
            variable[start:stop].assign(np.asarray(frames[start:stop]))
    while len(_variables) >= _KEPT_VARIABLES:
        _variables.pop(next(iter(_variables)))
    _variables[key] = (weakref.ref(frames), variable)
    return variable


def steps(
    frames: np.ndarray,
    plan: dict[str, np.ndarray],
    time_steps: int,
    frames_per_step: int,
    prefetch: int,
    workers: int,
) -> Iterator[dict[str, np.ndarray]]:
    """Each step of the plan: its fields besides 'target' and 'flip', and 'clips' (B, n, H, W, c) uint8."""
    tf = _tensorflow()
    variable = frames_variable(frames)
    height, width = frames.shape[1:]
    length = time_steps * frames_per_step
    num_steps, per_step = plan['target'].shape

    # The word that holds a pixel's channels, byte j = channel j (little-endian only).
    packed = {2: tf.uint16, 4: tf.uint32}.get(frames_per_step) if sys.byteorder == 'little' else None
    if packed is not None:
        byte_weights = tf.constant([256**j for j in range(frames_per_step)], packed)[:, None, None]

    def cut(target, flip):
        history = tf.gather(variable, tf.range(target - (length - 1), target + 1))
        history = tf.reshape(history, (time_steps, frames_per_step, height, width))
        if frames_per_step == 1:  # (n, 1, H, W) and (n, H, W, 1) are the same bytes
            clip = tf.reshape(history, (time_steps, height, width))
        elif packed is not None:  # (n, H, W) words, channel j in byte j: Σ_j frame_j · 256^j
            clip = tf.reduce_sum(tf.cast(history, packed) * byte_weights, axis=1)
        else:
            clip = tf.transpose(history, (0, 2, 3, 1))
        clip = tf.cond(flip % 2 == 1, lambda: tf.reverse(clip, axis=[2]), lambda: clip)
        clip = tf.cond(flip // 2 == 1, lambda: tf.reverse(clip, axis=[1]), lambda: clip)
        if packed is not None:
            clip = tf.bitcast(clip, tf.uint8)
        return tf.reshape(clip, (time_steps, height, width, frames_per_step))

    clips = (
        tf.data.Dataset.from_tensor_slices((plan['target'].reshape(-1), plan['flip'].reshape(-1)))
        .map(cut, num_parallel_calls=workers, deterministic=True)
        .batch(per_step)
    )
    fields = {key: value for key, value in plan.items() if key not in ('target', 'flip')}
    dataset = tf.data.Dataset.zip(tf.data.Dataset.from_tensor_slices(fields), clips)
    dataset = dataset.map(lambda step, step_clips: {**step, 'clips': step_clips}).prefetch(prefetch)
    options = tf.data.Options()
    options.threading.private_threadpool_size = workers  # the `workers` threads, as for 'numpy'
    options.threading.max_intra_op_parallelism = 1
    options.autotune.enabled = False  # fixed parallelism: `workers` is what the benchmark measures
    return dataset.with_options(options).as_numpy_iterator()
