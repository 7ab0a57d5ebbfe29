"""The 'device' pipeline: each split's frames live on every local device, and the step cuts its own clips.

The host sends, per sample, only the target frame index and the flip code (`pipeline.train_batches` and
`eval_batches` with backend='device': the same plan, hence the same samples and flips for the same seed, epoch
and step as the host pipelines). Inside the pmapped step, `with_clips` turns such a batch into the host
pipelines' batch: each clip is one `lax.dynamic_slice` of its n·c history frames, laid out (n, H, W, c) as
data/clips.py does, and flipped. The clips stay uint8; the model scales them as it does host clips.

The frames are placed once per split as uint8 (`place_splits`), one copy per local device, as an argument of
the step (a jax.Array with a leading device axis), never as a constant closed over by the compiled program.
Each process of a multi-process run holds its own copies and takes its slice of every global batch, as the
host pipelines do. A memory-mapped split is read whole from disk onto each device (on a CPU: into host memory,
once per CPU device), so it counts at its full size in the memory check, which refuses before placing anything
when the frames would not fit beside the model. This module imports no TensorFlow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from convlstm_jax import parallel
from convlstm_jax.data.dataset import Split

MARGIN = 0.25  # of the free memory, kept for the model's parameters, optimizer state and activations
HOST_PIPELINES = "data.pipeline='tfdata' or 'numpy'"


class FramesDoNotFit(ValueError):
    """The splits' frames would not fit on the devices beside the model."""


def cut_clip(
    frames: jax.Array, target: jax.Array, flip: jax.Array, *, time_steps: int, frames_per_step: int
) -> jax.Array:
    """The clip of target frame `target` flipped by `flip` (0 none, 1 left-right, 2 up-down, 3 both).

    frames uint8 (T, H, W) on this device; returns uint8 (time_steps, H, W, frames_per_step), equal to
    `clips.time_channels(frames, target, time_steps, frames_per_step, flip=flip)`. `target` must have a full
    history (the pipeline checks every sample on the host); `lax.dynamic_slice` would clamp it otherwise.
    """
    length = time_steps * frames_per_step
    _, height, width = frames.shape
    start = jnp.asarray(target, jnp.int32) - (length - 1)
    history = lax.dynamic_slice(frames, (start, 0, 0), (length, height, width))
    clip = history.reshape(time_steps, frames_per_step, height, width).transpose(0, 2, 3, 1)
    clip = jnp.where(flip % 2 == 1, clip[:, :, ::-1], clip)
    return jnp.where(flip // 2 == 1, clip[:, ::-1], clip)


def cut_clips(
    frames: jax.Array, targets: jax.Array, flips: jax.Array, *, time_steps: int, frames_per_step: int
) -> jax.Array:
    """`cut_clip` over a per-device batch: targets, flips (b,) → uint8 (b, time_steps, H, W, c)."""
    return jax.vmap(
        lambda target, flip: cut_clip(
            frames, target, flip, time_steps=time_steps, frames_per_step=frames_per_step
        )
    )(targets, flips)


def with_clips(
    frames: jax.Array, batch: Mapping[str, jax.Array], *, time_steps: int, frames_per_step: int
) -> dict[str, jax.Array]:
    """A device pipeline's per-device batch as the host pipelines give it: 'clips' in place of target/flip."""
    fields = {key: value for key, value in batch.items() if key not in ('target', 'flip')}
    clips = cut_clips(
        frames, batch['target'], batch['flip'], time_steps=time_steps, frames_per_step=frames_per_step
    )
    return {**fields, 'clips': clips}


def place_splits(
    splits: Mapping[str, Split],
    devices: Sequence[Any] | None = None,
    *,
    reserve_bytes: int = 0,
    margin: float = MARGIN,
) -> dict[str, jax.Array]:
    """Each split's frames on every local device: {name: uint8 (D, T, H, W)}, sharded over the devices.

    Checked first with `check_fits` (reserve_bytes: what the caller knows the model will need per device,
    e.g. from the compiled step's `memory_analysis()`, on top of the margin).
    """
    devices = list(jax.local_devices() if devices is None else devices)
    frames = {name: split.frames for name, split in splits.items()}
    check_fits(frames, devices, reserve_bytes=reserve_bytes, margin=margin)
    return {name: put_frames(array, devices) for name, array in frames.items()}


def put_frames(frames: np.ndarray, devices: Sequence[Any]) -> jax.Array:
    """One copy of `frames` per device, as one array (D, T, H, W) sharded as `parallel.replicate` shards.

    Each device's copy is transferred from the host array itself (no D-fold copy on the host first).
    """
    if frames.ndim != 3 or frames.dtype != np.uint8:
        raise ValueError(f'expected uint8 frames (T, H, W), got {frames.dtype} {frames.shape}')
    devices = list(devices)
    sharding = jax.sharding.NamedSharding(
        jax.sharding.Mesh(np.asarray(devices), (parallel.AXIS,)), jax.sharding.PartitionSpec(parallel.AXIS)
    )
    host = np.asarray(frames)[None]  # a memory-mapped split is read from disk here
    shards = [jax.device_put(host, device) for device in devices]
    return jax.make_array_from_single_device_arrays((len(devices), *frames.shape), sharding, shards)


def check_fits(
    frames: Mapping[str, np.ndarray],
    devices: Sequence[Any],
    *,
    reserve_bytes: int = 0,
    margin: float = MARGIN,
    host_available_bytes: int | None = None,
) -> None:
    """Refuses, naming the host pipelines, when the frames would not fit on the devices beside the model.

    On an accelerator: its allocator's free memory (memory_stats: bytes_limit − bytes_in_use), per device.
    On a CPU, which keeps no such statistics: the host's available memory (psutil, or `host_available_bytes`),
    shared by all the process's CPU devices, each of which holds its own copy.
    """
    devices = list(devices)
    per_device = int(sum(array.nbytes for array in frames.values()))
    listing = ', '.join(f'{name} {array.nbytes / 1e6:.0f} MB' for name, array in frames.items())
    host_devices = [device for device in devices if _free_device_bytes(device) is None]
    for device in devices:
        free = _free_device_bytes(device)
        if free is not None and per_device + reserve_bytes > (1 - margin) * free:
            raise FramesDoNotFit(
                f"data.pipeline='device': the frames ({listing}) need {per_device / 1e6:.0f} MB on "
                f'{device} beside the model ({reserve_bytes / 1e6:.0f} MB reserved), which has '
                f'{free / 1e6:.0f} MB free ({margin:.0%} of it kept as a margin); use {HOST_PIPELINES}, '
                'which cut the clips on the host'
            )
    if host_devices:
        if host_available_bytes is None:
            import psutil

            host_available_bytes = psutil.virtual_memory().available
        needed = len(host_devices) * (per_device + reserve_bytes)
        if needed > (1 - margin) * host_available_bytes:
            raise FramesDoNotFit(
                f"data.pipeline='device': the frames ({listing}) need {needed / 1e6:.0f} MB of host memory "
                f'(one copy per CPU device × {len(host_devices)}, with {reserve_bytes / 1e6:.0f} MB reserved '
                f'for the model each), and {host_available_bytes / 1e6:.0f} MB is available ({margin:.0%} of '
                f'it kept as a margin); use {HOST_PIPELINES}, which cut the clips on the host'
            )


def _free_device_bytes(device: Any) -> int | None:
    """Free bytes in an accelerator's allocator; None on a CPU (no memory statistics)."""
    try:
        stats = device.memory_stats()
    except Exception:  # Some backends raise instead of returning None.
        return None
    if not stats or 'bytes_limit' not in stats:
        return None
    return int(stats['bytes_limit']) - int(stats.get('bytes_in_use', 0))
