"""Training and evaluation batches of time-channels clips, sliced on the fly from a split's frame array.

The order of samples is planned in numpy as a pure function of the arguments: epoch e of training is the
permutation drawn from (seed, e), with one flip code per position; step s takes positions s·G … (s+1)·G − 1
(G = global batch) and process p its contiguous slice of G / P. So every process agrees on the global batch,
whatever the number of processes and devices, and a run resumed at a step sees the batches it would have seen.
Evaluation visits every sample once, in order; the last global batch is padded (mask 0) rather than dropped.

Two host backends turn the plan into clips and produce identical batches:
- 'tfdata': tf.data made of TensorFlow ops (data/tfdata.py): a parallel map gathers and flips each clip from
  the frames held in a tf.Variable (TensorFlow on the CPU only);
- 'numpy': numpy slicing (`clips.batch_time_channels`) in a small pool of background threads, for machines
  without TensorFlow; it reads memory-mapped frames in place.
A third, 'device', yields the plan itself ('target', 'flip' as int32, no clips): the step cuts the clips on
the accelerator from frames placed there once (data/device.py). Clips stay uint8 until the device.

`python -m convlstm_jax.data.pipeline --benchmark` measures clips/s at the 2021 shape.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import math
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import numpy as np

from convlstm_jax import io
from convlstm_jax import progress as progress_bars
from convlstm_jax.data import clips as clips_lib
from convlstm_jax.data.dataset import Split

HOST_BACKENDS = ('tfdata', 'numpy')  # cut the clips on the host
BACKENDS = (*HOST_BACKENDS, 'device')
Batch = dict[str, np.ndarray]


def steps_per_epoch(split: Split, global_batch: int) -> int:
    """Full global batches in one pass over the training samples (a permutation's remainder is dropped)."""
    _check_positive('global_batch', global_batch)
    return len(split.samples) // global_batch


def eval_steps(split: Split, global_batch: int) -> int:
    """Global batches in one evaluation pass (the last one padded)."""
    _check_positive('global_batch', global_batch)
    return math.ceil(len(split.samples) / global_batch)


def train_batches(
    split: Split,
    *,
    global_batch: int,
    seed: int,
    epoch: int,
    start_step: int = 0,
    num_steps: int | None = None,
    process_index: int = 0,
    process_count: int = 1,
    local_device_count: int = 1,
    flips: bool = True,
    backend: str = 'tfdata',
    time_steps: int = 30,
    frames_per_step: int = 4,
    prefetch: int = 4,
    workers: int = 2,
) -> Iterator[Batch]:
    """Steps start_step … start_step + num_steps − 1 (default: to the end) of training epoch `epoch`.

    Yields {'clips': uint8 (D, b, n, H, W, c), 'labels': float32 (D, b), 'index': int64 (D, b)} with
    D = local_device_count and b = global_batch / (process_count · D); 'index' is the target frame t.
    Backend 'device' yields 'target' and 'flip' int32 (D, b) in place of 'clips'.
    `prefetch` batches are prepared ahead by `workers` threads (either host backend).
    """
    _check_batching(global_batch, process_index, process_count, local_device_count)
    _check_split(split, clips_lib.clip_length(time_steps, frames_per_step))
    if seed < 0 or epoch < 0:
        raise ValueError(f'seed and epoch must be non-negative integers, got seed={seed}, epoch={epoch}')
    total = steps_per_epoch(split, global_batch)
    if total == 0:
        raise ValueError(
            f'split {split.name!r} has {len(split.samples)} samples, '
            f'fewer than one global batch of {global_batch}'
        )
    stop = total if num_steps is None else start_step + num_steps
    if not 0 <= start_step <= stop <= total:
        raise ValueError(
            f'steps {start_step} … {stop - 1} do not fit in the {total} steps of an epoch of split '
            f'{split.name!r} ({len(split.samples)} samples, global batch {global_batch}); '
            f'got start_step={start_step}, num_steps={num_steps}'
        )
    positions, flip_codes = _epoch_order(len(split.samples), seed, epoch, flips)
    steps = positions[start_step * global_batch : stop * global_batch].reshape(-1, global_batch)
    step_flips = flip_codes[start_step * global_batch : stop * global_batch].reshape(-1, global_batch)
    local = _process_slice(global_batch, process_index, process_count)
    targets = split.samples[steps[:, local]].astype(np.int64)
    plan = {
        'target': targets,
        'flip': step_flips[:, local].astype(np.int64),
        'labels': split.labels[targets].astype(np.float32),
        'index': targets,
    }
    return _batches(
        split.frames, plan, time_steps, frames_per_step, local_device_count, backend, prefetch, workers
    )


def eval_batches(
    split: Split,
    *,
    global_batch: int,
    process_index: int = 0,
    process_count: int = 1,
    local_device_count: int = 1,
    backend: str = 'tfdata',
    time_steps: int = 30,
    frames_per_step: int = 4,
    prefetch: int = 4,
    workers: int = 2,
) -> Iterator[Batch]:
    """Every sample once, in order: train_batches' dicts plus 'mask' float32 (D, b), 1 real and 0 padding.

    The last global batch is padded up to `global_batch` with copies of the last sample's clip, label 0,
    index −1 and mask 0; each process takes its slice of every padded global batch.
    """
    _check_batching(global_batch, process_index, process_count, local_device_count)
    _check_split(split, clips_lib.clip_length(time_steps, frames_per_step))
    num_samples = len(split.samples)
    num_padded = eval_steps(split, global_batch) * global_batch
    positions = np.arange(num_padded).reshape(-1, global_batch)
    real = positions < num_samples
    targets = split.samples[np.minimum(positions, num_samples - 1)].astype(np.int64)
    local = _process_slice(global_batch, process_index, process_count)
    targets, real = targets[:, local], real[:, local]
    plan = {
        'target': targets,
        'flip': np.zeros_like(targets),
        'labels': np.where(real, split.labels[targets], 0).astype(np.float32),
        'index': np.where(real, targets, -1).astype(np.int64),
        'mask': real.astype(np.float32),
    }
    return _batches(
        split.frames, plan, time_steps, frames_per_step, local_device_count, backend, prefetch, workers
    )


def prefetch_to_devices(iterator: Iterator[Any], size: int = 2, devices: Sequence[Any] | None = None):
    """Moves each batch's arrays (leading axis = device) onto the local devices, `size` batches ahead.

    The arrays are sharded over their leading axis in `jax.pmap`'s device order, so a pmapped step consumes
    them without another copy, and the next transfers overlap the current step.
    """
    _check_positive('size', size)
    devices = list(jax.local_devices() if devices is None else devices)
    mesh = jax.sharding.Mesh(np.asarray(devices), ('devices',))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('devices'))

    def put(x: np.ndarray) -> jax.Array:
        if np.shape(x)[:1] != (len(devices),):
            raise ValueError(
                f'expected arrays with a leading axis of {len(devices)} devices, got {np.shape(x)}'
            )
        return jax.device_put(x, sharding)

    queue: collections.deque = collections.deque()
    for batch in iterator:
        queue.append(jax.tree_util.tree_map(put, batch))
        if len(queue) > size:
            yield queue.popleft()
    while queue:
        yield queue.popleft()


def _epoch_order(num_samples: int, seed: int, epoch: int, flips: bool) -> tuple[np.ndarray, np.ndarray]:
    """The permutation of sample positions for (seed, epoch) and the flip code of each position in it."""
    rng = np.random.default_rng([seed, epoch])
    permutation = rng.permutation(num_samples)
    flip_codes = rng.integers(0, len(clips_lib.FLIP_CODES), size=num_samples)
    return permutation, flip_codes if flips else np.zeros_like(flip_codes)


def _process_slice(global_batch: int, process_index: int, process_count: int) -> slice:
    per_process = global_batch // process_count
    return slice(process_index * per_process, (process_index + 1) * per_process)


def _batches(
    frames: np.ndarray,
    plan: dict[str, np.ndarray],
    time_steps: int,
    frames_per_step: int,
    local_device_count: int,
    backend: str,
    prefetch: int,
    workers: int,
) -> Iterator[Batch]:
    """Clips for each step of the plan, with its other fields, shaped (devices, per-device batch, …)."""
    _check_positive('prefetch', prefetch)
    _check_positive('workers', workers)

    def load(targets: np.ndarray, flips: np.ndarray) -> np.ndarray:
        return clips_lib.batch_time_channels(frames, targets, time_steps, frames_per_step, flips=flips)

    if backend == 'tfdata':
        from convlstm_jax.data import tfdata

        steps = tfdata.steps(frames, plan, time_steps, frames_per_step, prefetch, workers)
    elif backend == 'device':  # No clips: the step cuts them on the device (data/device.py) from these.
        plan = {**plan, 'target': plan['target'].astype(np.int32), 'flip': plan['flip'].astype(np.int32)}
        steps = ({key: value[step] for key, value in plan.items()} for step in range(plan['target'].shape[0]))
    elif backend == 'numpy':
        steps = _threaded_steps(plan, load, prefetch, workers)
    else:
        raise ValueError(f'unknown pipeline backend {backend!r}: expected one of {", ".join(BACKENDS)}')
    return (_per_device(step, local_device_count) for step in steps)


def _threaded_steps(plan: dict[str, np.ndarray], load, prefetch: int, workers: int) -> Iterator[Batch]:
    """Loads steps in a thread pool, `prefetch` ahead, in order (numpy releases the GIL while copying)."""
    num_steps = plan['target'].shape[0]

    def load_step(step: int) -> Batch:
        batch = {key: value[step] for key, value in plan.items() if key not in ('target', 'flip')}
        batch['clips'] = load(plan['target'][step], plan['flip'][step])
        return batch

    with concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix='clips') as pool:
        pending = collections.deque(pool.submit(load_step, s) for s in range(min(prefetch, num_steps)))
        try:
            for next_step in range(len(pending), num_steps + len(pending)):
                batch = pending.popleft().result()
                if next_step < num_steps:
                    pending.append(pool.submit(load_step, next_step))
                yield batch
        finally:  # The consumer stopped early: drop the work not started yet.
            for future in pending:
                future.cancel()


def _per_device(batch: Batch, local_device_count: int) -> Batch:
    return {key: value.reshape(local_device_count, -1, *value.shape[1:]) for key, value in batch.items()}


def _check_positive(name: str, value: int) -> None:
    if value < 1:
        raise ValueError(f'{name} must be a positive integer, got {value}')


def _check_batching(
    global_batch: int, process_index: int, process_count: int, local_device_count: int
) -> None:
    _check_positive('global_batch', global_batch)
    _check_positive('process_count', process_count)
    _check_positive('local_device_count', local_device_count)
    if not 0 <= process_index < process_count:
        raise ValueError(f'process_index must lie in [0, {process_count - 1}], got {process_index}')
    shards = process_count * local_device_count
    if global_batch % shards:
        lower = global_batch // shards * shards
        nearest = [size for size in (lower, lower + shards) if size > 0]
        raise ValueError(
            f'global batch {global_batch} does not divide evenly over {process_count} process(es) × '
            f'{local_device_count} local device(s) = {shards} shards; nearest valid global batch sizes: '
            f'{", ".join(map(str, nearest))}'
        )


def _check_split(split: Split, clip_length: int) -> None:
    """The samples must have a full history inside their own recording (the data helper guarantees it)."""
    frames, samples = split.frames, np.asarray(split.samples)
    if frames.ndim != 3 or frames.dtype != np.uint8:
        raise ValueError(
            f'split {split.name!r}: expected uint8 frames (T, H, W), got {frames.dtype} {frames.shape}'
        )
    if samples.ndim != 1 or samples.size == 0:
        raise ValueError(
            f'split {split.name!r} has no samples (expected a non-empty 1-D array of frame indices)'
        )
    first = samples - (clip_length - 1)
    if first.min() < 0 or samples.max() >= frames.shape[0]:
        raise ValueError(
            f'split {split.name!r}: samples must lie in [{clip_length - 1}, {frames.shape[0] - 1}] '
            f'for clips of {clip_length} frames, got [{samples.min()}, {samples.max()}]'
        )
    crossing = samples[split.recording[first] != split.recording[samples]]
    if crossing.size:
        raise ValueError(
            f'split {split.name!r}: clips of {clip_length} frames ending at {crossing[:5].tolist()} '
            'would cross two recordings; were the samples computed for another clip length?'
        )


def synthetic_split(num_frames: int, height: int, width: int, seed: int = 0, clip_length: int = 120) -> Split:
    """Random frames with every full-history target as a sample (benchmarks and tests; labels all 0)."""
    frames = np.random.default_rng(seed).integers(0, 256, size=(num_frames, height, width), dtype=np.uint8)
    return Split(
        name='synthetic-noise',
        frames=frames,
        y_tilde=np.zeros(num_frames),
        labels=np.zeros(num_frames, np.int8),
        recording=np.zeros(num_frames, np.int32),
        samples=np.arange(clip_length - 1, num_frames, dtype=np.int64),
    )


def benchmark(
    *,
    num_frames: int = 44956,
    height: int = 120,
    width: int = 160,
    time_steps: int = 30,
    frames_per_step: int = 4,
    batch: int = 4,
    num_clips: int = 4000,
    warmup_steps: int = 10,
    backends: Sequence[str] = HOST_BACKENDS,
    threads: Sequence[int] = (2,),
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Training-pipeline clips/s on random frames (with flips); one row per backend and thread count.

    `threads` sets the pipeline's `workers`: the threads that cut clips, for either backend.
    `startup_s`: building the pipeline and its warm-up steps (TensorFlow's import included), not timed.
    `clips_per_cpu_s` divides by the CPU time of all the process's threads: on a shared machine it says what
    the pipeline costs when the wall-clock rate only says how busy the neighbours are.
    """

    _check_positive('warmup_steps', warmup_steps)
    length = clips_lib.clip_length(time_steps, frames_per_step)
    split = synthetic_split(num_frames, height, width, seed=seed, clip_length=length)
    num_steps = min(math.ceil(num_clips / batch) + warmup_steps, steps_per_epoch(split, batch))
    if num_steps <= warmup_steps:
        raise ValueError(f'{num_frames} frames leave no steps to time after {warmup_steps} warm-up steps')
    rows = []
    for backend, workers in itertools.product(backends, threads):
        created = time.perf_counter()
        batches = train_batches(
            split,
            global_batch=batch,
            seed=seed,
            epoch=0,
            num_steps=num_steps,
            backend=backend,
            time_steps=time_steps,
            frames_per_step=frames_per_step,
            workers=workers,
        )
        for _ in range(warmup_steps):  # The clock starts once the pipeline is warm.
            next(batches)
        warm, warm_cpu = time.perf_counter(), time.process_time()
        progress = progress_bars.bar(
            batches,
            total=num_steps - warmup_steps,
            desc=f'{backend} ×{workers}',
            unit='batch',
            file=sys.stderr,
        )
        timed_clips = sum(batch for _ in progress)
        seconds, cpu_seconds = time.perf_counter() - warm, time.process_time() - warm_cpu
        rows.append(
            {
                'backend': backend,
                'threads': workers,
                'batch': batch,
                'shape': [time_steps, height, width, frames_per_step],
                'num_frames': num_frames,
                'clips': timed_clips,
                'seconds': seconds,
                'clips_per_s': timed_clips / seconds,
                'clips_per_cpu_s': timed_clips / cpu_seconds,
                'startup_s': warm - created,
            }
        )
    return rows


def define_flags(flag_values: Any, argv: Sequence[str]) -> None:
    """The options of `--benchmark`, in `flag_values` (see cli.run)."""
    from absl import flags

    f = flag_values
    flags.DEFINE_bool('benchmark', False, 'Measure the pipeline throughput (clips/s).', flag_values=f)
    flags.DEFINE_integer('frames', 44956, 'Frames in the random split (44,956 in 2021).', 1, flag_values=f)
    flags.DEFINE_list(
        'shape', '30,120,160,4', 'Clip shape N,H,W,C (steps, height, width, frames per step).', f
    )
    flags.DEFINE_integer('batch', 4, 'Clips per batch.', 1, flag_values=f)
    flags.DEFINE_integer('clips', 4000, 'Clips timed per backend, after a warm-up.', 1, flag_values=f)
    flags.DEFINE_multi_enum('backends', list(HOST_BACKENDS), HOST_BACKENDS, 'Backends (repeat: several).', f)
    flags.DEFINE_list('threads', '2', 'Threads that cut clips, comma-separated; one row each.', f)
    flags.DEFINE_string('json', None, 'Also write the rows to this JSON file.', flag_values=f)


def _positive_integers(name: str, values: Sequence[str], count: int | None = None) -> list[int]:
    numbers = [int(v) if v.isdigit() else 0 for v in values]
    if not numbers or min(numbers) < 1 or len(numbers) != (count or len(numbers)):
        found = ','.join(values)
        sys.exit(
            f'error: --{name}: expected {count or ""} comma-separated positive integers, found {found!r}'
        )
    return numbers


def run(args: Any) -> None:
    if not args.benchmark:
        sys.exit('error: nothing to do: pass --benchmark')
    time_steps, height, width, frames_per_step = _positive_integers('shape', args.shape, 4)
    rows = benchmark(
        num_frames=args.frames,
        height=height,
        width=width,
        time_steps=time_steps,
        frames_per_step=frames_per_step,
        batch=args.batch,
        num_clips=args.clips,
        backends=args.backends,
        threads=_positive_integers('threads', args.threads),
    )
    print('| backend | threads | clips/s | clips per CPU-s | batch | clip shape | frames | startup s |')
    print('|---|---|---|---|---|---|---|---|')
    for row in rows:
        rates = [f'{row["clips_per_s"]:.0f}', f'{row["clips_per_cpu_s"]:.0f}']
        cells = [
            row['backend'],
            row['threads'],
            *rates,
            row['batch'],
            '×'.join(map(str, row['shape'])),
            row['num_frames'],
        ]
        print('| ' + ' | '.join(map(str, [*cells, f'{row["startup_s"]:.1f}'])) + ' |')
    if args.json:
        io.write_json(args.json, rows)


def main(argv: Sequence[str] | None = None) -> int:
    """The command with `argv` (the arguments, without the program name; default sys.argv[1:])."""
    from convlstm_jax import cli

    return cli.run(run, __doc__, define_flags, argv)


if __name__ == '__main__':
    sys.exit(main())
