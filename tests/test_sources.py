"""Frame sources, the prepared-dataset cache, and the errors bad input gets."""

from __future__ import annotations

import pathlib
import time

import numpy as np
import pytest
from PIL import Image

from convlstm_jax import config as config_lib
from convlstm_jax.data import dataset, labels, sources

RNG = np.random.default_rng(0)


def data_config(tmp_path: pathlib.Path, **overrides):
    """Tiny clips: history 2 × 4 = 8 frames, horizon 3, so a recording of 12 frames gives one sample."""
    data = config_lib.base_config().data
    data.data_dir = str(tmp_path / 'cache')
    data.height, data.width = 12, 16
    data.time_steps, data.horizon = 2, 3
    data.write_tfds = False
    for field, value in overrides.items():
        setattr(data, field, value)
    return data


def random_frames(count: int, height: int = 24, width: int = 32) -> np.ndarray:
    return RNG.integers(0, 256, (count, height, width), dtype=np.uint8)


def write_frames(folder: pathlib.Path, frames: np.ndarray, first: int = 0) -> None:
    folder.mkdir(parents=True)
    for number, frame in enumerate(frames, start=first):
        Image.fromarray(frame).save(folder / f'{number:05d}.png')


def write_video(path: pathlib.Path, frames: np.ndarray, fps: int = 30) -> None:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), 'w') as container:
        stream = container.add_stream('ffv1', rate=fps)  # lossless, so frames come back exactly
        stream.height, stream.width = frames.shape[1:]
        stream.pix_fmt = 'gray'
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format='gray')))
        container.mux(stream.encode())


def cache_entries(data) -> list[pathlib.Path]:
    root = pathlib.Path(data.data_dir)
    return sorted(root.iterdir()) if root.exists() else []


def pil_resize(frames: np.ndarray, height: int, width: int, method) -> np.ndarray:
    return np.stack([np.asarray(Image.fromarray(f).resize((width, height), method)) for f in frames])


@pytest.mark.parametrize(
    'source,target',
    [((240, 320), (120, 160)), ((50, 70), (48, 64)), ((97, 33), (16, 20)), ((7, 9), (24, 32))],
)
def test_nearest_resize_is_pils(source, target):
    frames = random_frames(2, *source)
    got = sources.resize(frames, *target, 'nearest')
    np.testing.assert_array_equal(got, pil_resize(frames, *target, Image.NEAREST))


def test_area_resize_averages_each_footprint():
    frames = random_frames(2, 120, 160)
    # 2.5 source pixels per target pixel: repeat each pixel twice, then average 5 × 5 blocks.
    doubled = frames.repeat(2, axis=1).repeat(2, axis=2).astype(np.float64)
    expected = np.rint(doubled.reshape(2, 48, 5, 64, 5).mean(axis=(2, 4)))
    got = sources.resize(frames, 48, 64, 'area')
    assert np.abs(got - expected).max() <= 1  # float32 arithmetic may round a .5 the other way
    assert (got == expected).mean() > 0.99
    with pytest.raises(ValueError, match='unknown resize'):
        sources.resize(frames, 48, 64, 'bicubic')


def test_frames_folders_with_several_recordings(tmp_path):
    root = tmp_path / 'frames'
    stored = {
        'a': random_frames(20),
        'b': random_frames(16),
        'validation': random_frames(14),
        'test': random_frames(12),
    }
    write_frames(root / 'train' / 'a', stored['a'])
    write_frames(root / 'train' / 'b', stored['b'], first=100)
    write_frames(root / 'validation', stored['validation'])
    write_frames(root / 'test', stored['test'])
    data = data_config(tmp_path, source='frames', path=str(root))

    splits = dataset.load_splits(data, progress=False)

    train = splits['train']
    np.testing.assert_array_equal(train.recording, [0] * 20 + [1] * 16)
    both = np.concatenate([stored['a'], stored['b']])
    np.testing.assert_array_equal(train.frames, pil_resize(both, 12, 16, Image.NEAREST))
    # ỹ at the stored 24×32, per recording (the last frame of each has no successor).
    expected_y = np.concatenate([labels.speed_proxy(stored['a']), labels.speed_proxy(stored['b'])])
    np.testing.assert_allclose(train.y_tilde, expected_y, rtol=1e-12)
    expected_labels = np.concatenate([labels.burst_labels(y, n=2, h=3) for y in np.split(expected_y, [20])])
    np.testing.assert_array_equal(train.labels, expected_labels)
    # Samples: t in [7, T − 5] inside each recording; none whose history crosses the boundary.
    np.testing.assert_array_equal(train.samples, np.r_[7:16, 27:32])
    np.testing.assert_array_equal(splits['test'].samples, [7])
    assert (
        train.frames.dtype == np.uint8 and train.labels.dtype == np.int8 and train.recording.dtype == np.int32
    )


def test_video_cut_by_fractions_and_horizon_in_seconds(tmp_path):
    frames = random_frames(60)
    video = tmp_path / 'tank.mkv'
    write_video(video, frames, fps=20)
    data = data_config(tmp_path, source='video', path=str(video), split_fractions=(0.6, 0.2, 0.2))
    data.resize, data.horizon_seconds = 'area', 0.15  # 3 frames at 20 fps
    assert sources.probe_video(video) == (60, 20.0)

    splits = dataset.load_splits(data, progress=False)

    assert [len(splits[name].frames) for name in sources.SPLITS] == [36, 12, 12]
    np.testing.assert_array_equal(splits['validation'].frames, sources.resize(frames[36:48], 12, 16, 'area'))
    np.testing.assert_allclose(splits['test'].y_tilde, labels.speed_proxy(frames[48:]), rtol=1e-12)
    np.testing.assert_array_equal(splits['test'].samples, [7])


def test_videos_assigned_to_splits_by_folder_with_label_files(tmp_path):
    root = tmp_path / 'videos'
    user_labels = np.arange(12) % 2
    for split, names in (('train', ('a', 'b')), ('validation', ('c',)), ('test', ('d',))):
        for name in names:
            write_video(root / split / f'{name}.mkv', random_frames(12))
            if name != 'a':
                np.save(root / split / f'{name}.mkv.labels.npy', user_labels)
    data = data_config(tmp_path, source='video', path=str(root), label_file='labels.npy')
    with pytest.raises(ValueError, match='label file .*a.mkv.labels.npy not found'):
        dataset.load_splits(data, progress=False)
    np.save(root / 'train' / 'a.mkv.labels.npy', user_labels)

    splits = dataset.load_splits(data, progress=False)

    np.testing.assert_array_equal(splits['train'].recording, [0] * 12 + [1] * 12)
    np.testing.assert_array_equal(splits['train'].labels, np.tile(user_labels, 2))
    # User labels need no horizon: every frame with a full history is a sample.
    np.testing.assert_array_equal(splits['train'].samples, np.r_[7:12, 19:24])


def test_csv_label_file(tmp_path):
    path = tmp_path / 'labels.csv'
    path.write_text('label\n0\n1\n1\n0\n')
    np.testing.assert_array_equal(sources.read_label_file(path, 1, 3), [1, 1, 0])
    path.write_text('0\n2\n')
    with pytest.raises(ValueError, match='expected 0/1 labels'):
        sources.read_label_file(path, 0, 2)


def test_synthetic_smoke_is_fast_and_cached(tmp_path):
    data = config_lib.apply_variant(config_lib.base_config(), 'smoke').data
    data.data_dir = str(tmp_path / 'cache')
    start = time.perf_counter()
    splits = dataset.load_splits(data, progress=False)
    assert time.perf_counter() - start < 5
    assert {name: split.frames.shape for name, split in splits.items()} == {
        'train': (120, 16, 20),
        'validation': (60, 16, 20),
        'test': (60, 16, 20),
    }
    first, last = labels.valid_range(120, 4, 6)
    np.testing.assert_array_equal(splits['train'].samples, np.arange(first, last + 1))
    (entry,) = cache_entries(data)
    again = dataset.load_splits(data, progress=False)
    assert cache_entries(data) == [entry]
    np.testing.assert_array_equal(again['test'].frames, splits['test'].frames)
    data.memmap_bytes = 0
    assert isinstance(dataset.load_splits(data, progress=False)['train'].frames, np.memmap)
    data.synthetic.seed = 1
    dataset.load_splits(data, progress=False)
    assert len(cache_entries(data)) == 2  # Other content, other key.


def test_interrupted_build_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    data = config_lib.apply_variant(config_lib.base_config(), 'smoke').data
    data.data_dir = str(tmp_path / 'cache')

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(labels, 'burst_labels', interrupted)
    with pytest.raises(KeyboardInterrupt):
        dataset.load_splits(data, progress=False)
    assert cache_entries(data) == []


def bad_frame_folders(root: pathlib.Path, case: str) -> None:
    """Writes a frames source with one defect."""
    for split in sources.SPLITS:
        if case == 'missing split' and split == 'test':
            continue
        if case == 'empty folder' and split == 'validation':
            (root / split).mkdir(parents=True)
            continue
        frames = random_frames(12 if case != 'too short' or split != 'test' else 11)
        write_frames(root / split, frames)
    test = root / 'test'
    if case == 'mixed sizes':
        Image.fromarray(random_frames(1, 20, 32)[0]).save(test / '00005.png')
    elif case == 'unreadable image':
        (test / '00003.png').write_bytes(b'not a png')
    elif case == 'gap':
        (test / '00004.png').unlink()
    elif case == 'not numbered':
        Image.fromarray(random_frames(1)[0]).save(test / 'frame_a.png')


@pytest.mark.parametrize(
    'case,message',
    [
        ('missing root', 'expected a folder with train, validation, test'),
        ('missing split', 'missing split folder .*test'),
        ('empty folder', 'no frames .* in .*validation'),
        ('mixed sizes', 'must share a size: .*00000.png is 32×24 .*00005.png is 32×20'),
        ('unreadable image', 'cannot read image .*00003.png'),
        ('gap', 'not consecutive: frame 3 is followed by 5'),
        ('not numbered', 'frame numbers like 00000.png, got .*frame_a.png'),
        (
            'too short',
            "split 'test' is too short for one clip: .*11 frames; .* 8 frames of history .* 3 .* = 12",
        ),
    ],
)
def test_bad_frame_folders(tmp_path, case, message):
    root = tmp_path / 'frames'
    if case != 'missing root':
        bad_frame_folders(root, case)
    data = data_config(tmp_path, source='frames', path=str(root))
    with pytest.raises(ValueError, match=message):
        dataset.load_splits(data, progress=False)
    assert cache_entries(data) == []


def test_bad_videos(tmp_path):
    broken = tmp_path / 'broken.mp4'
    broken.write_bytes(b'\x00' * 1000)
    data = data_config(tmp_path, source='video', path=str(broken))
    with pytest.raises(ValueError, match='cannot open video .*broken.mp4'):
        dataset.load_splits(data, progress=False)
    data.path = str(tmp_path / 'absent.mp4')
    with pytest.raises(ValueError, match='no such file .*absent.mp4'):
        dataset.load_splits(data, progress=False)
    data.path = ''
    with pytest.raises(ValueError, match='data.path is empty'):
        dataset.load_splits(data, progress=False)
    assert cache_entries(data) == []


def test_unknown_source(tmp_path):
    with pytest.raises(ValueError, match="unknown data source 'youtube'"):
        dataset.load_splits(data_config(tmp_path, source='youtube'), progress=False)


def test_tfds_dataset_round_trip(tmp_path, capsys):
    """Only when asked (here added to a built entry); every frame in order; reads back as the same splits."""
    data = config_lib.base_config().data
    data.height, data.width, data.time_steps, data.horizon = 16, 20, 4, 6
    data.synthetic.split_frames = (120, 60, 60)
    data.data_dir = str(tmp_path / 'cache')
    assert data.write_tfds is False  # the default: no TFDS copy that training never reads
    folder = dataset.prepare(data, progress=False)
    assert not (folder / 'tfds').exists()
    data.write_tfds = True
    assert dataset.prepare(data, progress=False) == folder
    captured = capsys.readouterr()
    printed = captured.out + captured.err
    assert f'dataset built: {folder} (' in printed and f'TFDS dataset added: {folder / "tfds"} (' in printed
    assert 'Downloading' not in printed and 'Subsequent calls' not in printed
    assert [path.name for path in folder.iterdir() if path.name.startswith('.')] == []
    splits = dataset.read_splits(folder, data)

    import tensorflow_datasets as tfds

    from convlstm_jax.data import tfds_builder

    test = list(tfds.as_numpy(tfds.load(tfds_builder.NAME, data_dir=str(folder / 'tfds'), split='test')))
    np.testing.assert_array_equal(np.stack([example['frame'] for example in test]), splits['test'].frames)
    np.testing.assert_array_equal([example['index'] for example in test], np.arange(60))
    np.testing.assert_array_equal([example['y_tilde'] for example in test], splits['test'].y_tilde)
    np.testing.assert_array_equal([example['label'] for example in test], splits['test'].labels)

    data.source, data.path = 'tfds', str(folder / 'tfds')
    again = dataset.load_splits(data, progress=False)
    for name, split in splits.items():
        for field in ('frames', 'y_tilde', 'labels', 'recording', 'samples'):
            np.testing.assert_array_equal(getattr(again[name], field), getattr(split, field))


def test_prepare_command(tmp_path, capsys):
    from convlstm_jax.data import prepare

    root = tmp_path / 'frames'
    for split in sources.SPLITS:
        write_frames(root / split, random_frames(14))
    cache_dir = [f'--config.data.data_dir={tmp_path / "cache"}']
    arguments = ['--config.data.source=frames', f'--config.data.path={root}', *cache_dir]
    arguments += ['--config.data.height=12', '--config.data.width=16', '--config.data.time_steps=2']
    prepare.main(arguments + ['--config.data.horizon_seconds=0.3', '--config.data.fps=10'])
    captured = capsys.readouterr()
    printed = captured.out + captured.err
    assert 'prepared dataset: ' in printed and 'test: 14 frames (12, 16), 3 samples' in printed
    (entry,) = (tmp_path / 'cache').iterdir()
    assert f'dataset built: {entry} (0.0 MB)' in printed and 'TFDS' not in printed
    assert not (entry / 'tfds').exists()

    # Listing: each entry, what it holds, its size; an interrupted build's leftovers too.
    (tmp_path / 'cache' / f'.{entry.name}.tmp-1-abc').mkdir()
    prepare.main(['--list', *cache_dir])
    listed = capsys.readouterr().out.splitlines()
    assert listed[0].startswith(f'cache {tmp_path / "cache"}: 2 entries, ')
    assert (
        listed[1].split()[0] == entry.name and 'frames, 12×16, frames: train 14, validation 14' in listed[1]
    )
    assert listed[2].split()[0] == f'.{entry.name}.tmp-1-abc' and 'unfinished build' in listed[2]

    # Clearing one entry, a name that is none (one line, nothing removed), then all.
    (tmp_path / 'cache' / 'notes.txt').write_text('not ours')
    with pytest.raises(SystemExit, match=f"error: no cache entry 'frames-0' in .*entries: {entry.name}, "):
        prepare.main(['--clear', 'frames-0', *cache_dir])
    prepare.main(['--clear', entry.name, *cache_dir])
    assert capsys.readouterr().out.startswith(f'removed {entry} (')
    assert sorted(p.name for p in (tmp_path / 'cache').iterdir()) == [f'.{entry.name}.tmp-1-abc', 'notes.txt']
    prepare.main(['--clear', '--list', *cache_dir])
    assert capsys.readouterr().out.splitlines()[-1] == f'cache {tmp_path / "cache"}: 0 entries, 0.0 MB'
    assert [p.name for p in (tmp_path / 'cache').iterdir()] == ['notes.txt']


def test_prepare_command_bad_input_is_one_line(tmp_path):
    from convlstm_jax.data import prepare

    with pytest.raises(SystemExit, match='^error: frames source: expected a folder'):
        prepare.main(
            ['--config.data.source=frames', f'--config.data.path={tmp_path / "absent"}']
            + [f'--config.data.data_dir={tmp_path}']
        )
    assert list(tmp_path.iterdir()) == []


def test_prepare_command_with_a_config_file_and_tfds(tmp_path, capsys):
    """The docs' `prepare --config configs/two_layer.py:quick --tfds` at :smoke size: an entry, its TFDS."""
    from convlstm_jax.data import prepare

    config_file = pathlib.Path(__file__).resolve().parents[1] / 'configs' / 'two_layer.py'
    prepare.main(['--config', f'{config_file}:smoke', '--tfds', f'--config.data.data_dir={tmp_path}'])
    printed = capsys.readouterr().out
    (entry,) = tmp_path.iterdir()
    assert f'prepared dataset: {entry}' in printed and 'test: 60 frames (16, 20)' in printed
    assert f"TFDS: tfds.load('convlstm_frames', data_dir='{entry / 'tfds'}')" in printed
    assert (entry / 'tfds').is_dir()
