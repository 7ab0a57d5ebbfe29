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

from convlstm_jax import checkpoints, inference, io
from convlstm_jax.data import clips as clip_slicing
from convlstm_jax.data import sources


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

    return inference.on_local_devices(window_logits, variables, split)


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
    steps, height, width, per_step = inference.expected_clip_shape(input_spec)
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
    logits = inference.run_batches(apply, windows, total=recording.num_frames - length + 1, progress=progress)
    return np.concatenate([np.full(length - 1, np.nan, np.float32), inference.sigmoid(logits)])


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
    member: int | str | None = None,
    batch_size: int = 8,
    progress: bool = True,
    resize: str | None = None,
) -> tuple[np.ndarray, sources.Recording, dict[str, Any]]:
    """(probability per frame as in `predict_recording`, the recording, the model's spec). `resize`
    replaces the input contract's resize method (config.data.resize)."""
    recording = open_recording(video=video, frames=frames)
    spec, model, variables = inference.load_predictor(checkpoint, select, member)
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
    cli.define_checkpoint_flags(flag_values)
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
    flags.DEFINE_integer('batch_size', 8, 'Clips per batch (split over the devices).', 1, flag_values=f)
    flags.mark_flags_as_required(['checkpoint', 'out'], flag_values=f)
    flags.mark_flags_as_mutual_exclusive(['clips', 'video', 'frames'], required=True, flag_values=f)


def run(f: Any) -> int:
    from convlstm_jax import cli

    if f.plot and f.clips:
        sys.exit('error: --plot needs --video or --frames')
    try:
        config = cli.saved_model_start(f, f.batch_size, 'predicting with')
        if f.clips:
            probabilities = inference.predict_clips_file(
                f.checkpoint, f.clips, select=f.select, member=f.member, batch_size=f.batch_size
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
        member=args.member,
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
