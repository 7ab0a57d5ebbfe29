"""Time-channels clips: contents against direct slices, channel order, flips, batch form, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from convlstm_jax.data import clips

NUM_FRAMES, HEIGHT, WIDTH = 50, 5, 7


@pytest.fixture(scope='module')
def frames() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(NUM_FRAMES, HEIGHT, WIDTH), dtype=np.uint8)


@pytest.mark.parametrize('t', [11, 12, 30, NUM_FRAMES - 1])
def test_time_channels_groups_frames_oldest_first(frames: np.ndarray, t: int) -> None:
    n, per_step = 3, 4  # 12 frames of history: t − 11 … t
    clip = clips.time_channels(frames, t, n, per_step)
    assert clip.shape == (n, HEIGHT, WIDTH, per_step) and clip.dtype == np.uint8
    history = frames[t - 11 : t + 1]
    for k in range(n):
        for channel in range(per_step):  # Step k, channel j is frame t − 11 + 4k + j.
            np.testing.assert_array_equal(clip[k, :, :, channel], history[4 * k + channel])
    np.testing.assert_array_equal(clip[0, :, :, 0], frames[t - 11])  # oldest first
    np.testing.assert_array_equal(clip[-1, :, :, -1], frames[t])  # the target frame last


def test_single_channel_form(frames: np.ndarray) -> None:
    clip = clips.time_channels(frames, 20, 6, 1)
    assert clip.shape == (6, HEIGHT, WIDTH, 1)
    np.testing.assert_array_equal(clip[..., 0], frames[15:21])


@pytest.mark.parametrize(
    ('flip', 'reference'),
    [(0, lambda f: f), (1, np.fliplr), (2, np.flipud), (3, lambda f: np.flipud(np.fliplr(f)))],
)
def test_flip_is_the_same_for_every_frame(frames: np.ndarray, flip: int, reference) -> None:
    t, n, per_step = 25, 2, 3
    flipped = clips.time_channels(frames, t, n, per_step, flip=flip)
    plain = clips.time_channels(frames, t, n, per_step)
    for k in range(n):
        for channel in range(per_step):
            np.testing.assert_array_equal(flipped[k, :, :, channel], reference(plain[k, :, :, channel]))
    np.testing.assert_array_equal(flipped, clips.flip_clip(plain, flip))


def test_batch_matches_single_clips_and_frame_indices(frames: np.ndarray) -> None:
    targets, flips = np.array([7, 8, 30, 49, 8]), np.array([0, 1, 2, 3, 3])
    batch = clips.batch_time_channels(frames, targets, 4, 2, flips=flips)
    assert batch.shape == (5, 4, HEIGHT, WIDTH, 2)
    for i, (t, flip) in enumerate(zip(targets, flips, strict=True)):
        np.testing.assert_array_equal(batch[i], clips.time_channels(frames, t, 4, 2, flip=flip))
    gathered = frames[clips.clip_frame_indices(targets, 4, 2)]  # (B, n, c, H, W)
    np.testing.assert_array_equal(
        clips.batch_time_channels(frames, targets, 4, 2), gathered.transpose(0, 1, 3, 4, 2)
    )


def test_batch_reads_memory_mapped_frames(frames: np.ndarray, tmp_path) -> None:
    path = tmp_path / 'frames.npy'
    np.save(path, frames)
    mapped = np.load(path, mmap_mode='r')
    np.testing.assert_array_equal(
        clips.batch_time_channels(mapped, [20, 40], 3, 4, flips=[1, 2]),
        clips.batch_time_channels(frames, [20, 40], 3, 4, flips=[1, 2]),
    )


@pytest.mark.parametrize(
    ('call', 'message'),
    [
        (lambda f: clips.time_channels(f, 10, 3, 4), r'\[11, 49\]'),  # history starts before frame 0
        (lambda f: clips.time_channels(f, NUM_FRAMES, 3, 4), r'\[11, 49\]'),
        (lambda f: clips.time_channels(f, 20, 3, 4, flip=4), 'flip codes'),
        (lambda f: clips.time_channels(f.astype(np.float32), 20, 3, 4), 'uint8'),
        (lambda f: clips.time_channels(f, 20, 0, 4), 'n >= 1'),
        (lambda f: clips.batch_time_channels(f, [20, 30], 3, 4, flips=[1]), 'one flip code per target'),
        (lambda f: clips.batch_time_channels(f, [20], 3, 4, out=np.empty((1, 3, 5, 7, 2), np.uint8)), 'out'),
    ],
)
def test_bad_input_is_named(frames: np.ndarray, call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call(frames)
