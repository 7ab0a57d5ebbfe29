"""Time-channels clips sliced from one frame array: clips are never stored, only their target indices.

The clip of target frame t holds frames t − n·c + 1 … t (c = frames per step), oldest first, regrouped into
n time steps of c consecutive frames each, the frames of a step stacked as channels (oldest = channel 0):
step k, channel j is frame t − (n·c − 1) + c·k + j. With c = 1 this is the single-channel form (n, H, W, 1).

Flips (augmentation) are codes applied identically to every frame of a clip: 0 none, 1 left-right,
2 up-down, 3 both (a 180° rotation).
"""

from __future__ import annotations

import numpy as np

FLIP_CODES = (0, 1, 2, 3)


def clip_length(n: int, frames_per_step: int) -> int:
    """Frames of history one clip covers (120 for the 2021 clips)."""
    if n < 1 or frames_per_step < 1:
        raise ValueError(
            f'expected n >= 1 and frames_per_step >= 1, got n={n}, frames_per_step={frames_per_step}'
        )
    return n * frames_per_step


def clip_frame_indices(targets: np.ndarray, n: int, frames_per_step: int) -> np.ndarray:
    """Frame index of every (clip, step, channel): shape targets.shape + (n, frames_per_step)."""
    length = clip_length(n, frames_per_step)
    offsets = np.arange(length, dtype=np.int64).reshape(n, frames_per_step) - (length - 1)
    return np.asarray(targets, dtype=np.int64)[..., None, None] + offsets


def time_channels(frames: np.ndarray, t: int, n: int, frames_per_step: int, *, flip: int = 0) -> np.ndarray:
    """The clip of target frame t: (n, H, W, frames_per_step) uint8, a fresh array."""
    _check_frames(frames)
    _check_targets(np.asarray([t]), frames.shape[0], clip_length(n, frames_per_step))
    _check_flips(np.asarray([flip]))
    out = np.empty((n, *frames.shape[1:], frames_per_step), dtype=frames.dtype)
    _fill_clip(out, frames, int(t), n, frames_per_step, int(flip))
    return out


def batch_time_channels(
    frames: np.ndarray,
    targets: np.ndarray,
    n: int,
    frames_per_step: int,
    *,
    flips: np.ndarray | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """The clips of many targets at once: (B, n, H, W, frames_per_step) uint8, written into `out` if given.

    Each clip's history is one contiguous slice of `frames` (a view, also of a memmap), copied once into its
    place channel by channel. Measured here at the 2021 shape, this beats one fancy-index gather of
    `clip_frame_indices` followed by a transpose by about 4× (the transpose to a 4-wide last axis is slow in
    numpy), and a gather followed by the per-channel copy by about 10 %.
    """
    targets = np.asarray(targets, dtype=np.int64).reshape(-1)
    flips = np.zeros(targets.shape, np.int64) if flips is None else np.asarray(flips).reshape(-1)
    if flips.shape != targets.shape:
        raise ValueError(f'expected one flip code per target ({targets.shape[0]}), got {flips.shape[0]}')
    _check_frames(frames)
    _check_targets(targets, frames.shape[0], clip_length(n, frames_per_step))
    _check_flips(flips)
    shape = (targets.shape[0], n, *frames.shape[1:], frames_per_step)
    if out is None:
        out = np.empty(shape, dtype=frames.dtype)
    elif out.shape != shape or out.dtype != frames.dtype:
        raise ValueError(
            f'expected out of shape {shape} and dtype {frames.dtype}, got {out.shape} {out.dtype}'
        )
    for i, (t, flip) in enumerate(zip(targets.tolist(), flips.tolist(), strict=True)):
        _fill_clip(out[i], frames, t, n, frames_per_step, flip)
    return out


def flip_clip(clip: np.ndarray, flip: int) -> np.ndarray:
    """A view of a (n, H, W, c) clip flipped by a flip code (the reference for tests and visualization)."""
    _check_flips(np.asarray([flip]))
    return _flipped(clip, flip, height_axis=-3, width_axis=-2)


def _fill_clip(out: np.ndarray, frames: np.ndarray, t: int, n: int, frames_per_step: int, flip: int) -> None:
    """Writes one clip into out (n, H, W, c). Copying one channel at a time keeps the copies fast."""
    length = n * frames_per_step
    history = frames[t - length + 1 : t + 1].reshape(n, frames_per_step, *frames.shape[1:])
    history = _flipped(history, flip, height_axis=-2, width_axis=-1)
    for channel in range(frames_per_step):
        out[..., channel] = history[:, channel]


def _flipped(a: np.ndarray, flip: int, *, height_axis: int, width_axis: int) -> np.ndarray:
    if flip & 1:
        a = np.flip(a, axis=width_axis)
    if flip & 2:
        a = np.flip(a, axis=height_axis)
    return a


def _check_frames(frames: np.ndarray) -> None:
    if frames.ndim != 3 or frames.dtype != np.uint8:
        raise ValueError(f'expected frames as uint8 (T, H, W), got {frames.dtype} of shape {frames.shape}')


def _check_targets(targets: np.ndarray, num_frames: int, length: int) -> None:
    if targets.size and (targets.min() < length - 1 or targets.max() >= num_frames):
        bad = targets[(targets < length - 1) | (targets >= num_frames)]
        raise ValueError(
            f'target frames must lie in [{length - 1}, {num_frames - 1}] (a clip needs {length} frames of '
            f'history among {num_frames}), got {bad[:5].tolist()}'
        )


def _check_flips(flips: np.ndarray) -> None:
    if flips.size and (flips.min() < 0 or flips.max() > 3):
        raise ValueError(
            f'flip codes must be 0 none, 1 left-right, 2 up-down, 3 both; got {np.unique(flips)}'
        )
