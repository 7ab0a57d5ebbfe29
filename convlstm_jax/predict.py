"""Run a model directory (or a training workdir) over clips, a video or a folder of frames.

    python -m convlstm_jax.predict --checkpoint DIR --clips X.npy --out Y.npy [--batch_size N]
    python -m convlstm_jax.predict --checkpoint DIR --video FILE --out preds.csv [--plot preds.png]
    python -m convlstm_jax.predict --checkpoint DIR --frames FOLDER --out preds.csv [--plot preds.png]

X.npy holds clips (N, T, H, W, C) as uint8 (scaled by 1/255 in the model) or float in [0, 1], shaped as the
model directory's input contract says (the 2021 models: 30 time steps of 120×160 with 4 frames as channels).
It is memory-mapped and streamed in batches, so files larger than memory work. Y.npy gets probabilities (N,)
float32.

A video (anything PyAV reads) or a folder of numbered frames (00000.png, …) is one new recording: its frames
are read as grayscale, resized by the contract's method and size and scaled by its pixel scale, and every
frame t with a full history (t ≥ T·C − 1; no later frame is used) gets the burst probability of its clip.
The video is streamed: only a sliding window of frames (one clip's history plus a batch, plus the chunk being
decoded) is held in memory. preds.csv has the columns frame,probability, one row per frame; the probability
is left empty for the first T·C − 1 frames, which have no full clip. The optional plot shows it over time.

The config is the workdir's config.json (else model.json's contract): --config.data.resize=area changes how
video frames are resized; architecture overrides are refused. A CPU-only machine is split into one JAX device
per core (--cpu_devices=1 turns that off).
"""

from __future__ import annotations

import csv
import functools
import io as stdlib_io
import math
import pathlib
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

import jax
import jax.numpy as jnp
import numpy as np

from convlstm_jax import checkpoints, io, parallel
from convlstm_jax import progress as progress_lib
from convlstm_jax.data import clips as clip_slicing
from convlstm_jax.data import sources
from convlstm_jax.models import build_model


def load_predictor(checkpoint: str | pathlib.Path, select: str = 'best_auc') -> tuple[dict, Any, dict]:
    """(spec, model, variables) of a model directory, a training workdir or a step directory."""
    spec, variables = checkpoints.load_model(checkpoint, select=select)
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


def _on_local_devices(
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

    apply = _on_local_devices(lambda v, clips: model.apply(v, clips, train=False), variables, split)
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

    return _run_batches(make_apply(model, variables), padded(), total=total, progress=progress)


def _run_batches(
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
    batch_size: int = 8,
    progress: bool = True,
) -> np.ndarray:
    """Probabilities for the clips stored in a .npy file, streamed from disk."""
    spec, model, variables = load_predictor(checkpoint, select)
    clips = np.load(clips_path, mmap_mode='r')
    check_clips(clips.shape, clips.dtype, spec['input'])
    return predict_clips(model, variables, batches(clips, batch_size), total=len(clips), progress=progress)


# --- A new recording: a video file or a folder of frames ------------------------------------------------


def open_recording(*, video: str | None = None, frames: str | None = None) -> sources.Recording:
    """The recording to predict on: a video file (anything PyAV reads) or a folder of numbered frames."""
    if (video is None) == (frames is None):
        raise ValueError('expected exactly one of a video file or a frames folder')
    if video is not None:
        return sources.video_file_recording(video)
    return sources.frame_folder_recording(frames)


def frame_windows(
    frame_chunks: Iterable[np.ndarray], *, clip_length: int, batch_size: int
) -> Iterator[tuple[np.ndarray, int]]:
    """(window, count) for each batch of target frames with a full history, in frame order.

    `frame_chunks` are consecutive uint8 (k, H, W) pieces of one recording. A window holds the
    clip_length − 1 + batch_size frames from the first target's history on: the histories of `count`
    consecutive targets (the last window is zero-padded, so that all have one shape). Only the frames a coming
    clip still needs are kept: less than one clip's history plus a batch, plus the chunk just read.
    """
    if batch_size < 1:
        raise ValueError(f'batch_size must be at least 1, got {batch_size}')
    size = clip_length - 1 + batch_size
    buffer: np.ndarray | None = None
    first = 0  # frame index of buffer[0]
    target = clip_length - 1  # the next frame to predict: the first with a full history
    for chunk in frame_chunks:
        buffer = chunk if buffer is None else np.concatenate([buffer, chunk])
        while target + batch_size <= first + len(buffer):
            start = target - clip_length + 1 - first
            yield buffer[start : start + size], batch_size
            target += batch_size
        drop = max(0, target - clip_length + 1 - first)  # frames older than the next clip's history
        buffer, first = buffer[drop:], first + drop
    if buffer is not None and target < first + len(buffer):  # buffer starts at the next target's history
        padding = np.zeros((size - len(buffer), *buffer.shape[1:]), buffer.dtype)
        yield np.concatenate([buffer, padding]), first + len(buffer) - target


def _window_logits(
    model: Any,
    variables: dict[str, Any],
    window: jax.Array,
    time_steps: int,
    frames_per_step: int,
    pixel_scale: float | None,
) -> jax.Array:
    """Logits of the clips of a window's targets, the clips assembled on the device.

    Sending the frames once instead of each in T·C clips cuts the host copying and the transfer by about that
    factor. uint8 clips (pixel_scale None) are scaled by 1/255 inside the model.
    """
    clip_length = time_steps * frames_per_step
    targets = np.arange(clip_length - 1, window.shape[0])
    index = clip_slicing.clip_frame_indices(targets, time_steps, frames_per_step)  # (b, T, C), static
    clips = jnp.moveaxis(window[index], 2, -1)  # (b, T, C, H, W) -> (b, T, H, W, C)
    if pixel_scale is not None:
        clips = clips.astype(jnp.float32) * pixel_scale
    return model.apply(variables, clips, train=False)


def make_window_apply(
    window_logits: Callable[[Any, jax.Array], jax.Array], variables: dict[str, Any], clip_length: int
) -> Callable[[np.ndarray], np.ndarray]:
    """window -> logits of its targets, on one device or split over the local devices.

    Split: device d gets its own consecutive targets and their history (the parts overlap by clip_length − 1
    frames); the window's target count must divide by the device count.
    """

    def split(window: np.ndarray, count: int) -> np.ndarray:
        per_device = (len(window) - clip_length + 1) // count
        size = clip_length - 1 + per_device
        return np.stack([window[d * per_device : d * per_device + size] for d in range(count)])

    return _on_local_devices(window_logits, variables, split)


def predict_recording(
    model: Any,
    variables: dict[str, Any],
    recording: sources.Recording,
    input_spec: dict[str, Any],
    *,
    batch_size: int = 8,
    progress: bool = True,
) -> np.ndarray:
    """Probability of every frame of a recording, float32 (num_frames,): NaN before the first full clip.

    Frames are preprocessed by the input contract: grayscale (as read), resized by its method to its size,
    scaled by its pixel scale.
    """
    steps, height, width, per_step = expected_clip_shape(input_spec)
    length = clip_slicing.clip_length(steps, per_step)
    if recording.num_frames < length:
        raise ValueError(
            f'{recording.name} has {recording.num_frames} frames, shorter than one clip: the model needs '
            f'{length} frames of history ({steps} time steps × {per_step} frames per step)'
        )
    method = _resize_method(input_spec)
    pixel_scale = _pixel_scale(input_spec)
    # uint8 frames at 1/255 go as they are: the model scales them on the device.
    scale = None if math.isclose(pixel_scale, 1 / 255, rel_tol=1e-6) else pixel_scale
    window_logits = functools.partial(
        _window_logits, model, time_steps=steps, frames_per_step=per_step, pixel_scale=scale
    )
    apply = make_window_apply(window_logits, variables, length)
    batch_size = -(-batch_size // jax.local_device_count()) * jax.local_device_count()  # targets split evenly
    frames = (sources.resize(chunk, height, width, method) for chunk in recording.read())
    windows = frame_windows(frames, clip_length=length, batch_size=batch_size)
    logits = _run_batches(apply, windows, total=recording.num_frames - length + 1, progress=progress)
    return np.concatenate([np.full(length - 1, np.nan, np.float32), sigmoid(logits)])


def _resize_method(input_spec: dict[str, Any]) -> str:
    method = input_spec.get('resize', 'nearest')
    if method not in sources.RESIZE_METHODS:
        raise ValueError(
            f'model.json input.resize must be one of {", ".join(sources.RESIZE_METHODS)}, got {method!r}'
        )
    return method


def _pixel_scale(input_spec: dict[str, Any]) -> float:
    scale = input_spec.get('pixel_scale', checkpoints.PIXEL_SCALE)
    if not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f'model.json input.pixel_scale must be a positive number, got {scale!r}')
    return float(scale)


def predict_recording_file(
    checkpoint: str | pathlib.Path,
    *,
    video: str | None = None,
    frames: str | None = None,
    select: str = 'best_auc',
    batch_size: int = 8,
    progress: bool = True,
    resize: str | None = None,
) -> tuple[np.ndarray, sources.Recording, dict[str, Any]]:
    """(probability per frame as in `predict_recording`, the recording, the model's spec). `resize`
    replaces the input contract's resize method (config.data.resize)."""
    recording = open_recording(video=video, frames=frames)
    spec, model, variables = load_predictor(checkpoint, select)
    input_spec = {**spec['input'], 'resize': resize} if resize else spec['input']
    probabilities = predict_recording(
        model, variables, recording, input_spec, batch_size=batch_size, progress=progress
    )
    return probabilities, recording, spec


def write_predictions_csv(path: str | pathlib.Path, probabilities: np.ndarray) -> None:
    """frame,probability per frame, atomically; the probability is empty where it is NaN (no full clip)."""

    def write(binary: IO[bytes]) -> None:
        text = stdlib_io.TextIOWrapper(binary, encoding='utf-8', newline='')
        writer = csv.writer(text)
        writer.writerow(['frame', 'probability'])
        # '.9g' round-trips a float32 exactly.
        writer.writerows(
            (frame, '' if math.isnan(p) else f'{p:.9g}') for frame, p in enumerate(probabilities.tolist())
        )
        text.flush()
        text.detach()  # the caller closes the binary file

    io.write_atomic(path, write)


def define_flags(flag_values: Any, argv: list[str]) -> None:
    """The options of the command, in `flag_values` (see cli.run)."""
    from absl import flags

    from convlstm_jax import cli
    from convlstm_jax import config as config_lib

    config_lib.define_config_flag(from_workdir=True, flag_values=flag_values, argv=argv)
    cli.define_common_flags(flag_values)
    f = flag_values
    flags.DEFINE_string(
        'checkpoint', None, 'Model directory, training workdir or step directory.', flag_values=f
    )
    flags.DEFINE_string(
        'clips', None, '.npy of clips (N, T, H, W, C), uint8 or float in [0, 1].', flag_values=f
    )
    flags.DEFINE_string('video', None, 'A video of one new recording (anything PyAV reads).', flag_values=f)
    flags.DEFINE_string('frames', None, 'A folder of numbered frames (00000.png, …) of one.', flag_values=f)
    flags.DEFINE_string(
        'out', None, '--clips: .npy of probabilities (N,); else CSV frame,probability.', flag_values=f
    )
    flags.DEFINE_string(
        'plot', None, 'With --video/--frames: PNG of the probability over time.', flag_values=f
    )
    flags.DEFINE_enum('select', 'best_auc', checkpoints.SELECTIONS, 'Step of a workdir.', flag_values=f)
    flags.DEFINE_integer('batch_size', 8, 'Clips per batch (split over the devices).', 1, flag_values=f)
    flags.mark_flags_as_required(['checkpoint', 'out'], flag_values=f)
    flags.mark_flags_as_mutual_exclusive(['clips', 'video', 'frames'], required=True, flag_values=f)


def run(f: Any) -> int:
    from convlstm_jax import cli

    if f.plot and f.clips:
        sys.exit('error: --plot needs --video or --frames')
    try:
        config = cli.model_config_or_exit(f.checkpoint, cli.config_holder(f))
        cli.print_config_and_exit_if_asked(config, f)
        note = cli.set_up_cpu_devices((f.batch_size,), multi_process=False, flag_values=f)
        if note:
            print(f'predicting with {f.checkpoint} on {note}', flush=True)
        if f.clips:
            probabilities = predict_clips_file(
                f.checkpoint, f.clips, select=f.select, batch_size=f.batch_size
            )
            io.write_atomic(f.out, lambda file: np.save(file, probabilities))
            print(f'wrote {f.out}: {len(probabilities)} probabilities, mean {_mean(probabilities)}')
        else:
            _predict_recording_cli(f, config.data.resize)
    except (
        ValueError,
        OSError,
    ) as e:  # OSError: missing files and PyAV's errors; ValueError: CheckpointError
        print(f'error: {e}', file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    """The command with `argv` (the arguments, without the program name; default sys.argv[1:])."""
    from convlstm_jax import cli

    return cli.run(run, __doc__, define_flags, argv)


def _predict_recording_cli(args: Any, resize: str) -> None:
    probabilities, recording, spec = predict_recording_file(
        args.checkpoint,
        video=args.video,
        frames=args.frames,
        select=args.select,
        batch_size=args.batch_size,
        resize=resize,
    )
    write_predictions_csv(args.out, probabilities)
    predicted = probabilities[~np.isnan(probabilities)]
    missing = len(probabilities) - len(predicted)
    print(
        f'wrote {args.out}: {len(probabilities)} frames, {len(predicted)} probabilities (the first {missing} '
        f'frames have no full history: left empty), mean {_mean(predicted)}'
    )
    if args.plot:
        from convlstm_jax import plotting  # matplotlib only when drawing

        title = f'{args.video or args.frames} — {args.checkpoint}'
        fps = recording.fps if args.video else None
        plotting.save_figure(plotting.probability_figure(probabilities, fps=fps, title=title), args.plot)
        print(f'wrote {args.plot}')


def _mean(values: np.ndarray) -> str:
    return f'{float(values.mean()):.4f}' if len(values) else 'n/a'


if __name__ == '__main__':
    sys.exit(main())
