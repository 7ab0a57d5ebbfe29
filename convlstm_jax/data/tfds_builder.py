"""The prepared frames as a TFDS dataset: one example per frame, in order, offline (nothing to download).

Written by `dataset.prepare` from the arrays it has just built; anyone can then read it with
`tfds.load('convlstm_frames', data_dir=DIR)` once this module is imported, and `data.source = 'tfds'` with
`data.path = DIR` turns it back into splits.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import numpy as np

from convlstm_jax.tf_cpu import import_tensorflow

tf = import_tensorflow()
import tensorflow_datasets as tfds  # noqa: E402  (after TensorFlow is told to leave the GPUs alone)

from convlstm_jax.data import sources  # noqa: E402

NAME = 'convlstm_frames'
_READ_BATCH = 256


class ConvlstmFrames(tfds.core.GeneratorBasedBuilder):
    """Frames of one prepared dataset with their index, recording id, speed proxy ỹ and label."""

    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {'1.0.0': 'One example per frame: frame, index, recording, y_tilde, label.'}
    # No checksums or metadata files beside the code: TFDS would otherwise look for them through
    # importlib_resources, which is not always installed.
    code_path = None

    def __init__(self, *, arrays_dir: pathlib.Path | None = None, meta: dict | None = None, **kwargs):
        self._arrays_dir, self._meta = arrays_dir, meta
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description='Grayscale frames at model resolution, in order, for burst prediction.',
            features=tfds.features.FeaturesDict(
                {
                    'frame': tfds.features.Tensor(shape=(None, None), dtype=np.uint8, encoding='bytes'),
                    'index': np.int64,
                    'recording': np.int32,
                    # tf.train.Example floats are float32: bytes keep ỹ exact.
                    'y_tilde': tfds.features.Tensor(shape=(), dtype=np.float64, encoding='bytes'),
                    'label': np.int8,
                }
            ),
            metadata=tfds.core.MetadataDict(self._meta or {}),
            disable_shuffling=True,  # Examples stay in frame order.
        )

    # TFDS prints "Downloading and preparing dataset …" and "… downloaded and prepared": nothing is
    # downloaded here, and dataset.prepare says itself where the dataset is.
    def _log_download_bytes(self) -> None:
        pass

    def _log_download_done(self) -> None:
        pass

    def _split_generators(self, dl_manager) -> dict[str, Iterator]:
        if self._arrays_dir is None:
            raise ValueError(f'{NAME} is built by convlstm_jax.data.prepare; it cannot be downloaded')
        return {split: self._generate_examples(split) for split in self._meta['splits']}

    def _generate_examples(self, split: str) -> Iterator[tuple[int, dict]]:
        arrays = {
            field: np.load(self._arrays_dir / f'{split}.{field}.npy', mmap_mode='r')
            for field in ('frames', 'y_tilde', 'labels', 'recording')
        }
        for index in range(len(arrays['frames'])):
            yield (
                index,
                {
                    'frame': np.asarray(arrays['frames'][index]),
                    'index': index,
                    'recording': arrays['recording'][index],
                    'y_tilde': arrays['y_tilde'][index],
                    'label': arrays['labels'][index],
                },
            )


def write(folder: pathlib.Path, meta: dict, out: pathlib.Path) -> None:
    """Writes the TFDS dataset of the arrays in `folder` to `out` (its data_dir)."""
    builder = ConvlstmFrames(arrays_dir=folder, meta=meta, data_dir=str(out))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))


def recordings_from_tfds(data_dir: str | pathlib.Path) -> dict[str, list[sources.Recording]]:
    """The recordings of a dataset written by `write`, read back frame by frame from `data_dir`."""
    data_dir = pathlib.Path(data_dir)
    try:
        builder = tfds.builder(NAME, data_dir=str(data_dir))
        meta = dict(builder.info.metadata)
    except Exception as error:  # TFDS raises several types for a missing or foreign folder.
        raise ValueError(f'no {NAME} TFDS dataset in {data_dir}: {error}') from error
    if not builder.is_prepared() or 'splits' not in meta:
        raise ValueError(f'no prepared {NAME} TFDS dataset in {data_dir}')
    info_file = pathlib.Path(builder.data_dir) / 'dataset_info.json'
    stamp = info_file.stat().st_mtime_ns
    recordings = {}
    for split, info in meta['splits'].items():
        scalars = _read_scalars(builder, split)
        recordings[split], start = [], 0
        for name, count in zip(info['recordings'], info['recording_frames'], strict=True):
            stop = start + count
            recordings[split].append(
                sources.Recording(
                    name=name,
                    num_frames=count,
                    fps=meta.get('fps', 30.0),
                    read=lambda split=split, start=start, stop=stop: _read_frames(
                        builder, split, start, stop
                    ),
                    fingerprint=f'{builder.data_dir} {stamp} {split}[{start}:{stop}]',
                    stored_y_tilde=scalars['y_tilde'][start:stop],
                    stored_labels=scalars['label'][start:stop],
                    stored_labels_by_rule=meta['labels'] == 'rule',
                )
            )
            start = stop
    return recordings


def _read_scalars(builder: tfds.core.DatasetBuilder, split: str) -> dict[str, np.ndarray]:
    dataset = builder.as_dataset(split=split, decoders={'frame': tfds.decode.SkipDecoding()})
    dataset = dataset.map(lambda example: {'y_tilde': example['y_tilde'], 'label': example['label']})
    batches = list(tfds.as_numpy(dataset.batch(4096)))
    return {field: np.concatenate([batch[field] for batch in batches]) for field in ('y_tilde', 'label')}


def _read_frames(
    builder: tfds.core.DatasetBuilder, split: str, start: int, stop: int
) -> Iterator[np.ndarray]:
    dataset = builder.as_dataset(split=f'{split}[{start}:{stop}]').map(lambda example: example['frame'])
    yield from tfds.as_numpy(dataset.batch(_READ_BATCH))
