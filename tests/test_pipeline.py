"""Input pipeline: sharding, determinism, resume, evaluation coverage and the two backends' equality."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from convlstm_jax.data import clips, pipeline
from convlstm_jax.data.dataset import Split

N, PER_STEP = 3, 2  # clips of 6 frames
LENGTH = N * PER_STEP
SHAPE = {'time_steps': N, 'frames_per_step': PER_STEP}


@pytest.fixture(scope='module')
def split() -> Split:
    """Two recordings of 40 and 30 frames; samples are the targets with a full history in their recording."""
    rng = np.random.default_rng(1)
    recording = np.repeat(np.array([0, 1], np.int32), [40, 30])
    first_of_recording = np.array([0] * 40 + [40] * 30)
    samples = np.flatnonzero(np.arange(70) - (LENGTH - 1) >= first_of_recording)
    return Split(
        name='tiny',
        frames=rng.integers(0, 256, size=(70, 4, 6), dtype=np.uint8),
        y_tilde=rng.random(70),
        labels=rng.integers(0, 2, size=70).astype(np.int8),
        recording=recording,
        samples=samples.astype(np.int64),
    )


def train(split: Split, **kwargs) -> list[dict[str, np.ndarray]]:
    arguments = {'global_batch': 4, 'seed': 3, 'epoch': 0, 'backend': 'numpy', **SHAPE, **kwargs}
    return list(pipeline.train_batches(split, **arguments))


def evaluate(split: Split, **kwargs) -> list[dict[str, np.ndarray]]:
    return list(pipeline.eval_batches(split, **{'global_batch': 8, 'backend': 'numpy', **SHAPE, **kwargs}))


def flat(batches: list[dict[str, np.ndarray]], key: str) -> np.ndarray:
    """One array over all steps and devices, in global batch order."""
    return np.concatenate([b[key].reshape(-1, *b[key].shape[2:]) for b in batches])


def assert_same(a: list[dict[str, np.ndarray]], b: list[dict[str, np.ndarray]]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            assert x[key].dtype == y[key].dtype
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_an_epoch_is_a_permutation_of_samples_with_clips_labels_and_flips(split: Split) -> None:
    batches = train(split)
    steps = pipeline.steps_per_epoch(split, 4)
    assert len(batches) == steps == len(split.samples) // 4
    first = batches[0]
    assert first['clips'].shape == (1, 4, N, 4, 6, PER_STEP) and first['clips'].dtype == np.uint8
    assert first['labels'].dtype == np.float32 and first['index'].dtype == np.int64
    index = flat(batches, 'index')
    assert len(np.unique(index)) == len(index) == steps * 4 and np.isin(index, split.samples).all()
    assert not np.array_equal(index, np.sort(index))  # shuffled
    np.testing.assert_array_equal(flat(batches, 'labels'), split.labels[index])
    seen_flips = set()
    for t, clip in zip(index, flat(batches, 'clips'), strict=True):
        plain = clips.time_channels(split.frames, t, N, PER_STEP)
        (flip,) = [f for f in clips.FLIP_CODES if np.array_equal(clip, clips.flip_clip(plain, f))]
        seen_flips.add(flip)
    assert seen_flips == {0, 1, 2, 3}
    unflipped = train(split, flips=False)
    for t, clip in zip(flat(unflipped, 'index'), flat(unflipped, 'clips'), strict=True):
        np.testing.assert_array_equal(clip, clips.time_channels(split.frames, t, N, PER_STEP))


def test_same_seed_same_batches_other_epoch_or_seed_other_order(split: Split) -> None:
    assert_same(train(split), train(split))
    index = flat(train(split), 'index')
    assert not np.array_equal(index, flat(train(split, epoch=1), 'index'))
    assert not np.array_equal(index, flat(train(split, seed=4), 'index'))


def test_resume_from_a_step_gives_the_same_batches(split: Split) -> None:
    everything = train(split)
    assert_same(train(split, start_step=5), everything[5:])
    assert_same(train(split, start_step=2, num_steps=3), everything[2:5])
    assert train(split, start_step=len(everything)) == []


def test_processes_and_devices_share_the_same_global_batch(split: Split) -> None:
    single = train(split)
    shards = [train(split, process_index=p, process_count=2) for p in range(2)]
    for step, whole in enumerate(single):
        halves = [shard[step] for shard in shards]
        assert not set(halves[0]['index'].ravel()) & set(halves[1]['index'].ravel())  # disjoint
        for key in whole:  # complete: process 0 then process 1 make up the global batch
            joined = np.concatenate([h[key].reshape(-1, *h[key].shape[2:]) for h in halves])
            np.testing.assert_array_equal(joined, whole[key][0], err_msg=key)
    two_devices = train(split, local_device_count=2)
    assert two_devices[0]['clips'].shape == (2, 2, N, 4, 6, PER_STEP)
    np.testing.assert_array_equal(flat(two_devices, 'clips'), flat(single, 'clips'))


def test_eval_sees_every_sample_once_in_order_with_padding_masked(split: Split) -> None:
    batches = evaluate(split)
    assert len(batches) == pipeline.eval_steps(split, 8) == -(-len(split.samples) // 8)
    mask, index = flat(batches, 'mask'), flat(batches, 'index')
    np.testing.assert_array_equal(index[mask == 1], split.samples)
    padding = len(batches) * 8 - len(split.samples)
    assert padding > 0 and (mask[-padding:] == 0).all() and (index[-padding:] == -1).all()
    assert (flat(batches, 'labels')[-padding:] == 0).all()
    np.testing.assert_array_equal(flat(batches, 'labels')[mask == 1], split.labels[split.samples])
    for t, clip in zip(index[mask == 1], flat(batches, 'clips')[mask == 1], strict=True):
        np.testing.assert_array_equal(clip, clips.time_channels(split.frames, t, N, PER_STEP))


def test_eval_shards_take_their_slice_of_each_padded_batch(split: Split) -> None:
    whole = evaluate(split)
    shards = [evaluate(split, process_index=p, process_count=2, local_device_count=2) for p in range(2)]
    assert shards[0][0]['clips'].shape == (2, 2, N, 4, 6, PER_STEP)
    for step, batch in enumerate(whole):
        for key in batch:
            joined = np.concatenate([s[step][key].reshape(-1, *s[step][key].shape[2:]) for s in shards])
            np.testing.assert_array_equal(joined, batch[key][0], err_msg=key)


@pytest.mark.parametrize(
    'options',
    [
        {},
        {'flips': False, 'workers': 1},
        {'process_index': 1, 'process_count': 2, 'local_device_count': 2},
        {'local_device_count': 4, 'start_step': 3, 'num_steps': 4, 'prefetch': 1},
    ],
)
def test_tfdata_and_numpy_backends_give_identical_batches(split: Split, options: dict) -> None:
    """Whole batches, with flips, over processes and devices, resumed, and evaluation with its padding."""
    pytest.importorskip(
        'tensorflow', reason='the tfdata backend needs TensorFlow (absent on the GPU machines)'
    )
    assert_same(train(split, backend='tfdata', **options), train(split, backend='numpy', **options))
    shards = {key: value for key, value in options.items() if key in ('process_index', 'process_count')}
    shards['local_device_count'] = options.get('local_device_count', 1)
    tfdata_eval = evaluate(split, backend='tfdata', **shards)
    assert (flat(tfdata_eval, 'mask') == 0).any()  # the padded last batch is compared too
    assert_same(tfdata_eval, evaluate(split, backend='numpy', **shards))


@pytest.mark.parametrize(('n', 'per_step'), [(6, 1), (3, 2), (2, 3), (1, 4)])
def test_tfdata_equals_numpy_for_each_channel_layout(split: Split, n: int, per_step: int) -> None:
    """1 channel: a reshape; 2 and 4: channels packed in one word; others: a transpose."""
    pytest.importorskip('tensorflow', reason='the tfdata backend needs TensorFlow')
    shape = {'time_steps': n, 'frames_per_step': per_step}
    assert_same(train(split, backend='tfdata', **shape), train(split, backend='numpy', **shape))


def test_tfdata_reads_memory_mapped_splits(split: Split, tmp_path) -> None:
    pytest.importorskip('tensorflow', reason='the tfdata backend needs TensorFlow')
    np.save(tmp_path / 'frames.npy', split.frames)
    mapped = dataclasses.replace(split, frames=np.load(tmp_path / 'frames.npy', mmap_mode='r'))
    assert_same(train(mapped, backend='tfdata'), train(split, backend='numpy'))


def test_tfdata_is_made_of_tensorflow_ops() -> None:
    """No numpy_function or py_function: the clips are cut by TensorFlow's threads, not under the GIL."""
    source = pathlib.Path(pipeline.__file__).with_name('tfdata.py').read_text()
    assert 'numpy_function' not in source and 'py_function' not in source and 'tf.gather' in source


@pytest.mark.parametrize(
    ('kwargs', 'message'),
    [
        (
            {'global_batch': 6, 'process_count': 2, 'local_device_count': 2},
            'nearest valid global batch sizes: 4, 8',
        ),
        ({'global_batch': 3, 'local_device_count': 4}, 'nearest valid global batch sizes: 4$'),
        ({'process_index': 2, 'process_count': 2}, r'process_index must lie in \[0, 1\]'),
        ({'num_steps': 100}, 'do not fit in the 15 steps'),
        ({'global_batch': 1000}, 'fewer than one global batch'),
        ({'backend': 'torch'}, "unknown pipeline backend 'torch'"),
        ({'time_steps': 20}, r'samples must lie in \[39, 69\]'),
    ],
)
def test_bad_arguments_are_named(split: Split, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        train(split, **kwargs)


def test_samples_whose_clip_crosses_two_recordings_are_refused(split: Split) -> None:
    crossing = dataclasses.replace(split, samples=np.arange(LENGTH - 1, 70))
    with pytest.raises(ValueError, match=r'ending at \[40, 41, 42, 43, 44\] would cross two recordings'):
        train(crossing)


def test_prefetch_to_devices_shards_over_local_devices(split: Split) -> None:
    """On 2 host devices (a fresh process: the device count is fixed when JAX starts), pmap consumes them."""
    script = textwrap.dedent(
        """
        import jax, numpy as np
        from convlstm_jax.data import pipeline
        split = pipeline.synthetic_split(40, 4, 6, clip_length=6)
        batches = list(pipeline.train_batches(split, global_batch=4, seed=0, epoch=0, num_steps=3,
                       local_device_count=2, backend='numpy', time_steps=3, frames_per_step=2))
        on_device = list(pipeline.prefetch_to_devices(iter(batches), size=2))
        assert len(on_device) == 3
        for host, device in zip(batches, on_device):
            sums = jax.pmap(lambda c: c.astype(np.int32).sum())(device['clips'])
            np.testing.assert_array_equal(sums, host['clips'].astype(np.int32).sum(axis=(1, 2, 3, 4, 5)))
            assert len(device['index'].sharding.device_set) == 2
        print('ok')
        """
    )
    env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=2', 'JAX_PLATFORMS': 'cpu'}
    result = subprocess.run(
        [sys.executable, '-c', script], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and result.stdout.strip() == 'ok', result.stderr[-3000:]


def test_benchmark_command_runs_on_tiny_shapes(tmp_path, capsys) -> None:
    out = tmp_path / 'pipeline.json'
    argv = '--benchmark --frames 120 --shape 3,4,6,2 --clips 16 --backends numpy --threads 1,2'.split()
    pipeline.main([*argv, '--json', str(out)])
    rows = json.loads(out.read_text())
    assert [(row['backend'], row['threads']) for row in rows] == [('numpy', 1), ('numpy', 2)]
    assert all(row['clips'] == 16 and row['clips_per_s'] > 0 for row in rows)
    printed = capsys.readouterr().out
    assert '| numpy | 1 |' in printed and '| numpy | 2 |' in printed
