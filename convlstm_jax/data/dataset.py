"""Prepared datasets: build once from a source, cache on disk, load each split as one frame array.

A prepared dataset is a folder keyed by a hash of everything that shapes its content:
```
CACHE/<source>-<key>/meta.json                 what was built, from what (written last: marks it complete)
CACHE/<source>-<key>/<split>.frames.npy        uint8 (T, H, W) at model resolution
CACHE/<source>-<key>/<split>.{y_tilde,labels,recording}.npy
CACHE/<source>-<key>/tfds/convlstm_frames/…    only if asked: the same frames as a TFDS dataset
```
It is built in a hidden temporary folder that is renamed into place at the end, so an interrupted or failed
build leaves nothing that looks complete; one line then says where it is and how big. The TFDS dataset, the
format to hand to others (`tfds.load('convlstm_frames', data_dir=CACHE/<source>-<key>/tfds)`), is written only
when asked (`prepare --tfds`, `data.write_tfds`), also into an entry built before. Training reads the .npy
arrays, memory-mapped beyond `data.memmap_bytes`, which needs no TensorFlow. data/cache.py lists and clears.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import shutil
import sys
import uuid

import numpy as np

from convlstm_jax import io
from convlstm_jax import progress as progress_lib
from convlstm_jax.data import cache, sources
from convlstm_jax.data import labels as labels_lib

FORMAT = 'convlstm_jax.frames/1'
ARRAYS = ('frames', 'y_tilde', 'labels', 'recording')


@dataclasses.dataclass
class Split:
    """One split held in memory (or memory-mapped), ready for clip slicing.

    `samples` are the target frames t whose full history (n·frames_per_step frames ending at t) lies in t's
    recording and whose label is defined (with the ỹ rule: t + h ≤ the recording's last frame − 1).
    """

    name: str
    frames: np.ndarray  # uint8 (T, H, W) at model resolution (maybe a np.memmap)
    y_tilde: np.ndarray  # float64 (T,) computed at stored resolution
    labels: np.ndarray  # int8 (T,)
    recording: np.ndarray  # int32 (T,) recording id of each frame (a clip never crosses two)
    samples: np.ndarray  # int64 sorted valid target frame indices t


def load_splits(data, *, progress: bool = True) -> dict[str, Split]:
    """The train, validation and test splits for `config.data`, building the dataset first if needed."""
    folder = prepare(data, progress=progress)
    return read_splits(folder, data)


def prepare(data, *, progress: bool = True, write_tfds: bool | None = None) -> pathlib.Path:
    """The folder of the prepared dataset for `config.data`, built now unless already there."""
    if data.source == 'tfds':
        from convlstm_jax.data import tfds_builder

        recordings = tfds_builder.recordings_from_tfds(data.path)
    else:
        recordings = sources.recordings_from_config(data)
    horizon = _horizon_frames(data, recordings)
    params = _content_params(data, recordings, horizon)
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    folder = cache.cache_root(data) / f'{data.source}-{key}'
    write_tfds = data.write_tfds if write_tfds is None else write_tfds
    if (folder / 'meta.json').is_file():
        if write_tfds and not (folder / 'tfds').is_dir():
            _add_tfds(folder)
        return folder
    _check_long_enough(recordings, data, horizon)
    _build(folder, recordings, data, horizon, params, progress=progress, write_tfds=write_tfds)
    # On stderr, beside the build's progress bar: the first line on stdout stays the run's own.
    size_mb = cache.folder_bytes(folder) / 1e6
    progress_lib.write(f'dataset built: {folder} ({size_mb:.1f} MB)', file=sys.stderr)
    return folder


def read_splits(folder: pathlib.Path, data) -> dict[str, Split]:
    """Loads a prepared dataset's splits; frames beyond data.memmap_bytes stay memory-mapped on disk."""
    meta = io.read_json(folder / 'meta.json')
    if meta.get('format') != FORMAT:
        raise ValueError(f'{folder} holds {meta.get("format")!r}, expected {FORMAT!r}; delete it to rebuild')
    splits = {}
    for name, info in meta['splits'].items():
        frame_bytes = info['frames'] * meta['height'] * meta['width']
        mmap = 'r' if frame_bytes > data.memmap_bytes else None
        arrays = {
            field: np.load(folder / f'{name}.{field}.npy', mmap_mode=mmap if field == 'frames' else None)
            for field in ARRAYS
        }
        samples = valid_samples(
            arrays['recording'],
            n=data.time_steps,
            h=meta['horizon'],
            frames_per_step=data.frames_per_step,
            label_rule=meta['labels'] == 'rule',
        )
        splits[name] = Split(name=name, samples=samples, **arrays)
    return splits


def valid_samples(
    recording: np.ndarray, *, n: int, h: int, frames_per_step: int = 4, label_rule: bool = True
) -> np.ndarray:
    """Target frames with a full history inside their recording and (with the ỹ rule) a defined label."""
    boundaries = np.flatnonzero(np.diff(recording)) + 1
    starts = np.concatenate([[0], boundaries])
    stops = np.concatenate([boundaries, [len(recording)]])
    ranges = []
    for start, stop in zip(starts, stops, strict=True):
        first, last = labels_lib.valid_range(int(stop - start), n, h, frames_per_step)
        last = last if label_rule else int(stop - start) - 1
        ranges.append(np.arange(start + first, start + last + 1, dtype=np.int64))
    return np.concatenate(ranges) if ranges else np.zeros(0, np.int64)


def _horizon_frames(data, recordings: dict[str, list[sources.Recording]]) -> int:
    if data.horizon_seconds <= 0:
        return int(data.horizon)
    rates = {recording.fps for split in recordings.values() for recording in split}
    if len(rates) != 1:
        raise ValueError(f'horizon_seconds needs one frame rate, but the recordings have {sorted(rates)} fps')
    return sources.frames_for_seconds(data.horizon_seconds, rates.pop())


def _content_params(data, recordings: dict[str, list[sources.Recording]], horizon: int) -> dict:
    """Everything that shapes the prepared content, and nothing else (so the cache key is stable)."""
    return {
        'format': FORMAT,
        'source': data.source,
        'recordings': {
            split: [r.fingerprint for r in split_recordings] for split, split_recordings in recordings.items()
        },
        'height': data.height,
        'width': data.width,
        'resize': data.resize,
        'labels': _label_kind(recordings),
        'rule': [data.time_steps, horizon, data.label_b, data.label_c, data.frames_per_step],
    }


def _label_kind(recordings: dict[str, list[sources.Recording]]) -> str:
    """'rule' when every label comes from the ỹ rule, else 'file' (the horizon then bounds no sample)."""
    by_rule = {r.labels_by_rule for split in recordings.values() for r in split}
    return 'rule' if by_rule == {True} else 'file'


def _check_long_enough(recordings: dict[str, list[sources.Recording]], data, horizon: int) -> None:
    """Fails before anything is written when a split cannot give a single clip."""
    history = data.time_steps * data.frames_per_step
    for split, split_recordings in recordings.items():
        if not split_recordings:
            raise ValueError(f'split {split!r} has no recordings')
        needed = history + horizon + 1
        longest = max(recording.num_frames for recording in split_recordings)
        if longest < needed:
            raise ValueError(
                f'split {split!r} is too short for one clip: its longest recording has {longest} frames; '
                f'a clip needs {history} frames of history + a horizon of {horizon} + 1 = {needed}'
            )


def _build(
    folder: pathlib.Path,
    recordings: dict[str, list[sources.Recording]],
    data,
    horizon: int,
    params: dict,
    *,
    progress: bool,
    write_tfds: bool,
) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.parent / f'.{folder.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}'
    staging.mkdir()
    try:
        fps = next(iter(recordings.values()))[0].fps
        meta = {'format': FORMAT, 'height': data.height, 'width': data.width, 'horizon': horizon, 'fps': fps}
        meta['labels'] = params['labels']
        meta['params'] = params
        meta['splits'] = _write_arrays(staging, recordings, data, horizon, progress=progress)
        if write_tfds:
            _write_tfds_if_possible(staging, meta, staging / 'tfds')
        io.write_json(staging / 'meta.json', meta)
        try:
            os.rename(staging, folder)
        except OSError:
            if not (folder / 'meta.json').is_file():  # Not another process finishing first: a real failure.
                raise
            shutil.rmtree(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _add_tfds(folder: pathlib.Path) -> None:
    """Writes the TFDS dataset into an entry built without one, renamed into place when complete."""
    staging = folder / f'.tfds.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}'
    try:
        if _write_tfds_if_possible(folder, io.read_json(folder / 'meta.json'), staging):
            os.rename(staging, folder / 'tfds')
            progress_lib.write(
                f'TFDS dataset added: {folder / "tfds"} ({cache.folder_bytes(folder / "tfds") / 1e6:.1f} MB)',
                file=sys.stderr,
            )
    except OSError:
        if not (folder / 'tfds').is_dir():  # Not another process finishing first: a real failure.
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_tfds_if_possible(arrays: pathlib.Path, meta: dict, out: pathlib.Path) -> bool:
    try:
        from convlstm_jax.data import tfds_builder
    except ImportError as error:  # The GPU machines may have no TensorFlow: the arrays are enough there.
        logging.warning('TFDS dataset not written (%s); the .npy arrays are complete', error)
        return False
    tfds_builder.write(arrays, meta, out)
    return True


def _write_arrays(
    staging: pathlib.Path,
    recordings: dict[str, list[sources.Recording]],
    data,
    horizon: int,
    *,
    progress: bool,
) -> dict[str, dict]:
    total = sum(r.num_frames for split in recordings.values() for r in split)
    info = {}
    with progress_lib.bar(total=total, unit='frame', desc='preparing frames', disable=not progress) as bar:
        for split, split_recordings in recordings.items():
            info[split] = _write_split(staging, split, split_recordings, data, horizon, bar)
    return info


def _write_split(staging, split, split_recordings, data, horizon, bar) -> dict:
    num_frames = sum(r.num_frames for r in split_recordings)
    shape = (num_frames, data.height, data.width)
    frames = np.lib.format.open_memmap(staging / f'{split}.frames.npy', 'w+', np.uint8, shape)
    y_tilde = np.zeros(num_frames)
    labels = np.zeros(num_frames, np.int8)
    recording_ids = np.zeros(num_frames, np.int32)
    start = 0
    for index, recording in enumerate(split_recordings):
        stop = start + recording.num_frames
        y_tilde[start:stop] = _write_recording_frames(recording, frames[start:stop], data, bar)
        labels[start:stop] = _recording_labels(recording, y_tilde[start:stop], data, horizon)
        recording_ids[start:stop] = index
        start = stop
    frames.flush()
    del frames
    for field, values in (('y_tilde', y_tilde), ('labels', labels), ('recording', recording_ids)):
        np.save(staging / f'{split}.{field}.npy', values)
    return {
        'frames': num_frames,
        'recordings': [r.name for r in split_recordings],
        'recording_frames': [r.num_frames for r in split_recordings],
        'positives': int(labels.sum()),
    }


def _write_recording_frames(recording: sources.Recording, out: np.ndarray, data, bar) -> np.ndarray:
    """Streams one recording into `out` at model resolution; returns its ỹ at stored resolution."""
    y_tilde = np.zeros(recording.num_frames)
    position, previous = 0, None
    for chunk in recording.read():
        if position + len(chunk) > recording.num_frames:
            raise ValueError(f'{recording.name} has more frames than the {recording.num_frames} announced')
        if previous is not None and previous.shape != chunk.shape[1:]:
            raise ValueError(
                f'{recording.name}: frame size changes from {previous.shape} to {chunk.shape[1:]}'
            )
        if recording.stored_y_tilde is None:
            # Differences across the chunk boundary need the last frame of the previous chunk.
            with_previous = chunk if previous is None else np.concatenate([previous[None], chunk])
            first = position if previous is None else position - 1
            y_tilde[first : first + len(with_previous)] = labels_lib.speed_proxy(with_previous)
        out[position : position + len(chunk)] = sources.resize(chunk, data.height, data.width, data.resize)
        previous = chunk[-1]
        position += len(chunk)
        bar.update(len(chunk))
    if position != recording.num_frames:
        raise ValueError(f'{recording.name} gave {position} frames; expected {recording.num_frames}')
    if recording.stored_y_tilde is not None:
        return recording.stored_y_tilde
    y_tilde[-1] = 0.0  # The last frame has no successor.
    return y_tilde


def _recording_labels(recording: sources.Recording, y_tilde: np.ndarray, data, horizon: int) -> np.ndarray:
    if recording.stored_labels is not None:
        return recording.stored_labels
    if recording.label_file is not None:
        return sources.read_label_file(recording.label_file, recording.label_offset, recording.num_frames)
    return labels_lib.burst_labels(
        y_tilde,
        n=data.time_steps,
        h=horizon,
        b=data.label_b,
        c=data.label_c,
        frames_per_step=data.frames_per_step,
    )
