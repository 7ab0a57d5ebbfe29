"""A model directory (or a training workdir) run over batches of clips on the local devices: the Python API
behind `python -m convlstm_jax.predict` (which adds new recordings, see predict.py), the evaluation and the
Keras parity tests.

    spec, model, variables = load_predictor('models/upbeat-snowflake-91')
    probabilities = predict_clips(model, variables, batches(clips, 8), total=len(clips))

Clips are (N, T, H, W, C), uint8 (scaled by 1/255 in the model) or float in [0, 1], shaped as the model
directory's input contract says.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import numpy as np

from convlstm_jax import checkpoints, parallel
from convlstm_jax import progress as progress_lib
from convlstm_jax.models import build_model


def load_predictor(
    checkpoint: str | pathlib.Path, select: str = 'best_auc', member: int | str | None = None
) -> tuple[dict, Any, dict]:
    """(spec, model, variables) of a model directory, a training workdir or a step directory; of one member
    of a population's workdir (`member`: an index, or 'best', the default; the spec then names it)."""
    spec, variables = checkpoints.load_model(checkpoint, select=select, member=member)
    model = build_model(spec['model'])
    return spec, model, variables


def expected_clip_shape(input_spec: dict[str, Any]) -> tuple[int, int, int, int]:
    """(T, H, W, C) of one clip under a model directory's input contract."""
    return (
        int(input_spec['time_steps']),
        int(input_spec['height']),
        int(input_spec['width']),
        int(input_spec['frames_per_step']),
    )


def check_clips(shape: tuple[int, ...], dtype: np.dtype, input_spec: dict[str, Any]) -> None:
    """ValueError unless clips of this shape and dtype fit the input contract."""
    steps, height, width, channels = expected_clip_shape(input_spec)
    wanted = f'(N, {steps}, {height}, {width}, {channels})'
    if len(shape) != 5:
        raise ValueError(
            f'clips must have rank 5, {wanted} (N, time, height, width, channels); got shape {shape}'
        )
    if shape[4] != channels:
        raise ValueError(
            f'clips must have {channels} channels (frames per time step), {wanted}; got shape {shape}'
        )
    if shape[2:4] != (height, width):
        raise ValueError(
            f'clips must be {height}×{width} (height×width), {wanted}; got shape {shape}. '
            f'Resize frames with {input_spec.get("resize", "nearest")!r} first'
        )
    if shape[1] != steps:
        raise ValueError(f'clips must have {steps} time steps, {wanted}; got shape {shape}')
    if not (dtype == np.uint8 or np.issubdtype(dtype, np.floating)):
        raise ValueError(f'clips must be uint8 (scaled by 1/255) or float in [0, 1]; got {dtype}')


def batches(clips: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    """Consecutive batches of a (maybe memory-mapped) array, read one at a time."""
    if batch_size < 1:
        raise ValueError(f'batch_size must be at least 1, got {batch_size}')
    for start in range(0, len(clips), batch_size):
        yield np.asarray(clips[start : start + batch_size])


def on_local_devices(
    logits: Callable[[Any, jax.Array], jax.Array],
    variables: dict[str, Any],
    split: Callable[[np.ndarray, int], np.ndarray],
) -> Callable[[np.ndarray], np.ndarray]:
    """inputs -> flat logits: `logits(variables, inputs)` compiled for the local device, or pmapped over the
    local devices (e.g. `--cpu_devices`), each getting its share `split(inputs, device_count)[d]`."""
    devices = jax.local_devices()
    if len(devices) == 1:
        variables = jax.device_put(variables)
        compiled = jax.jit(logits)
        return lambda inputs: np.asarray(compiled(variables, inputs))
    replicated = parallel.replicate(variables, devices)
    sharded = jax.pmap(logits, devices=devices)
    return lambda inputs: np.asarray(sharded(replicated, split(inputs, len(devices)))).reshape(-1)


def make_apply(model: Any, variables: dict[str, Any]) -> Callable[[np.ndarray], np.ndarray]:
    """A compiled clips -> logits function with the variables already on the device(s).

    With several local devices, each batch is split over them; a batch that does not divide is padded and the
    padding's logits dropped.
    """

    def split(clips: np.ndarray, count: int) -> np.ndarray:
        clips = _pad_rows(clips, -len(clips) % count)
        return clips.reshape(count, -1, *clips.shape[1:])

    apply = on_local_devices(lambda v, clips: model.apply(v, clips, train=False), variables, split)
    return lambda clips: apply(clips)[: len(clips)]


def _pad_rows(array: np.ndarray, rows: int) -> np.ndarray:
    """`array` with `rows` zero rows appended."""
    if rows == 0:
        return array
    return np.concatenate([array, np.zeros((rows, *array.shape[1:]), array.dtype)])


def predict_logits(
    model: Any,
    variables: dict[str, Any],
    clips_iter: Iterable[np.ndarray],
    *,
    total: int | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Logits (N,) float32 over batches of clips (b, T, H, W, C).

    A batch smaller than the first is zero-padded to its size, so that one compiled program serves them all
    (inference BatchNorm is per sample, so padding changes nothing else).
    """

    def padded() -> Iterator[tuple[np.ndarray, int]]:
        batch_size = None
        for batch in clips_iter:
            _check_range(batch)
            batch_size = batch_size or len(batch)
            count = len(batch)
            yield _pad_rows(batch, batch_size - count), count

    return run_batches(make_apply(model, variables), padded(), total=total, progress=progress)


def run_batches(
    apply: Callable[[np.ndarray], np.ndarray],
    batches_iter: Iterable[tuple[np.ndarray, int]],
    *,
    total: int | None,
    progress: bool,
) -> np.ndarray:
    """The first `count` logits of apply(inputs) for each (inputs, count), concatenated; a progress bar."""
    outputs = []
    with progress_lib.bar(total=total, unit='clip', desc='predict', disable=not progress) as bar:
        for inputs, count in batches_iter:
            outputs.append(apply(inputs)[:count])
            bar.update(count)
    if not outputs:
        return np.zeros((0,), np.float32)
    return np.concatenate(outputs).astype(np.float32)


def predict_clips(
    model: Any,
    variables: dict[str, Any],
    clips_iter: Iterable[np.ndarray],
    *,
    total: int | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Probabilities (N,) float32: the sigmoid of `predict_logits`."""
    logits = predict_logits(model, variables, clips_iter, total=total, progress=progress)
    return sigmoid(logits)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """The logistic function in float64 (no overflow warnings), returned as float32."""
    x = np.asarray(logits, np.float64)
    return (0.5 * (1.0 + np.tanh(0.5 * x))).astype(np.float32)


def _check_range(batch: np.ndarray) -> None:
    """Float clips must already be scaled: 0…255 floats would silently saturate the model."""
    if batch.dtype != np.uint8 and batch.size:
        low, high = float(batch.min()), float(batch.max())
        if low < 0.0 or high > 1.0:
            raise ValueError(
                f'float clips must lie in [0, 1]; found values in [{low}, {high}]. '
                'Pass uint8 frames or divide by 255'
            )


def predict_clips_file(
    checkpoint: str | pathlib.Path,
    clips_path: str | pathlib.Path,
    *,
    select: str = 'best_auc',
    member: int | str | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> np.ndarray:
    """Probabilities for the clips stored in a .npy file, streamed from disk."""
    spec, model, variables = load_predictor(checkpoint, select, member)
    clips = np.load(clips_path, mmap_mode='r')
    check_clips(clips.shape, clips.dtype, spec['input'])
    return predict_clips(model, variables, batches(clips, batch_size), total=len(clips), progress=progress)
