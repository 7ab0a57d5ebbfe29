"""The device pipeline: clips cut on the device equal the host pipelines' batches; frames that don't fit."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

# The script below runs as it is on 1 device here and on 2 host devices in a subprocess (the device count is
# fixed when JAX starts). It compares whole batches: every key, dtype and value.
SCRIPT = textwrap.dedent(
    """
    import functools
    import jax, numpy as np
    from convlstm_jax import parallel
    from convlstm_jax.data import device, pipeline

    N, C = 3, 2
    split = pipeline.synthetic_split(52, 4, 6, seed=2, clip_length=N * C)
    split.labels[:] = np.random.default_rng(0).integers(0, 2, 52)
    devices = jax.local_devices()
    D = len(devices)
    frames = device.place_splits({'train': split}, devices)['train']
    assert frames.shape == (D, 52, 4, 6) and frames.dtype == np.uint8
    assert len(frames.sharding.device_set) == D

    cut = jax.pmap(
        functools.partial(device.with_clips, time_steps=N, frames_per_step=C), axis_name=parallel.AXIS
    )

    def assert_same(host, on_device):
        # Both as the step sees them: on the devices (where int64 'index' becomes int32 in both).
        host = list(pipeline.prefetch_to_devices(host))
        on_device = list(pipeline.prefetch_to_devices(on_device))
        assert len(host) == len(on_device) > 0
        for h, d in zip(host, on_device):
            h, d = jax.device_get(h), jax.device_get(cut(frames, d))
            assert h.keys() == d.keys(), (h.keys(), d.keys())
            for key in h:
                assert h[key].dtype == d[key].dtype, (key, h[key].dtype, d[key].dtype)
                np.testing.assert_array_equal(h[key], d[key], err_msg=key)

    common = dict(time_steps=N, frames_per_step=C, local_device_count=D)
    for process_index, process_count in ((0, 1), (1, 2)):
        shard = dict(common, process_index=process_index, process_count=process_count)
        for epoch in (0, 1):
            train = dict(global_batch=4 * D, seed=5, epoch=epoch, **shard)
            assert_same(
                pipeline.train_batches(split, backend='numpy', **train),
                pipeline.train_batches(split, backend='device', **train),
            )
        evaluation = dict(global_batch=6 * D, **shard)
        assert len(split.samples) % (6 * D)  # the last batch is padded
        assert_same(
            pipeline.eval_batches(split, backend='numpy', **evaluation),
            pipeline.eval_batches(split, backend='device', **evaluation),
        )
    print('ok', D)
    """
)


def test_device_batches_equal_the_numpy_pipelines_on_one_device() -> None:
    namespace: dict = {}
    exec(SCRIPT, namespace)  # noqa: S102  (the same script as the two-device test, in this process)


def test_device_batches_equal_the_numpy_pipelines_on_two_devices() -> None:
    env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=2', 'JAX_PLATFORMS': 'cpu'}
    result = subprocess.run(
        [sys.executable, '-c', SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and result.stdout.split() == ['ok', '2'], result.stderr[-3000:]


def test_every_flip_and_target_equals_clips_time_channels() -> None:
    import jax

    from convlstm_jax.data import clips, device

    frames = np.random.default_rng(3).integers(0, 256, (30, 5, 7), dtype=np.uint8)
    targets = np.array([11, 11, 11, 11, 29, 20], np.int32)
    flips = np.array([0, 1, 2, 3, 3, 1], np.int32)
    cut = jax.jit(lambda f, t, c: device.cut_clips(f, t, c, time_steps=4, frames_per_step=3))
    got = np.asarray(cut(frames, targets, flips))
    assert got.shape == (6, 4, 5, 7, 3) and got.dtype == np.uint8
    for clip, target, flip in zip(got, targets, flips, strict=True):
        np.testing.assert_array_equal(clip, clips.time_channels(frames, int(target), 4, 3, flip=int(flip)))


def test_memory_mapped_frames_are_placed_whole(tmp_path) -> None:
    import jax

    from convlstm_jax.data import device

    frames = np.random.default_rng(4).integers(0, 256, (20, 3, 4), dtype=np.uint8)
    np.save(tmp_path / 'frames.npy', frames)
    mapped = np.load(tmp_path / 'frames.npy', mmap_mode='r')
    placed = device.put_frames(mapped, jax.local_devices())
    np.testing.assert_array_equal(np.asarray(placed)[0], frames)


class FakeAccelerator:
    def __init__(self, limit: int, in_use: int) -> None:
        self.limit, self.in_use = limit, in_use

    def memory_stats(self) -> dict[str, int]:
        return {'bytes_limit': self.limit, 'bytes_in_use': self.in_use}

    def __str__(self) -> str:
        return 'cuda:0'


def test_frames_that_do_not_fit_are_refused_naming_the_host_pipelines() -> None:
    import jax

    from convlstm_jax.data import device

    frames = {'train': np.zeros((100, 10, 10), np.uint8), 'validation': np.zeros((20, 10, 10), np.uint8)}
    host = 'tfdata.*numpy.*cut the clips on the host'
    (cpu,) = jax.local_devices()[:1]
    # A CPU device has no memory statistics: the host's available memory decides, one copy per CPU device.
    device.check_fits(frames, [cpu], host_available_bytes=10**6)
    with pytest.raises(device.FramesDoNotFit, match=f'need 0 MB of host memory.*{host}'):
        device.check_fits(frames, [cpu], host_available_bytes=15_000)
    with pytest.raises(device.FramesDoNotFit, match='× 2'):
        device.check_fits(frames, [cpu, cpu], host_available_bytes=25_000)
    with pytest.raises(device.FramesDoNotFit, match=host):
        device.check_fits(frames, [cpu], reserve_bytes=10**6, host_available_bytes=10**6)
    # An accelerator: its allocator's free bytes, with the margin.
    device.check_fits(frames, [FakeAccelerator(limit=10**6, in_use=0)])
    with pytest.raises(device.FramesDoNotFit, match=f'on cuda:0 .* 0 MB free .*25% .*{host}'):
        device.check_fits(frames, [FakeAccelerator(limit=10**6, in_use=10**6 - 15_000)])


def test_place_splits_refuses_before_placing_anything(monkeypatch) -> None:
    import psutil

    from convlstm_jax.data import device, pipeline

    placed = []
    monkeypatch.setattr(device, 'put_frames', lambda *args: placed.append(args))
    monkeypatch.setattr(psutil, 'virtual_memory', lambda: type('Memory', (), {'available': 1000})())
    split = pipeline.synthetic_split(40, 4, 6, clip_length=6)
    with pytest.raises(device.FramesDoNotFit, match='train 0 MB'):
        device.place_splits({'train': split})
    assert placed == []
