"""predict: probabilities of a model directory over clips, streamed in batches; bad clips refused clearly."""

from __future__ import annotations

import csv
import os
import pathlib
import re
import subprocess
import sys
import tracemalloc

import jax
import numpy as np
import pytest

from convlstm_jax import checkpoints, inference, predict
from convlstm_jax.data import sources
from convlstm_jax.data.clips import batch_time_channels
from convlstm_jax.models import build_model

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
INPUT = {
    'height': 10,
    'width': 12,
    'time_steps': 3,
    'frames_per_step': 2,
    'pixel_scale': 1 / 255,
    'resize': 'nearest',
    'horizon': 6,
}
MODEL = {'filters': [3], 'use_bias': True, 'batchnorm_last': True}


def _random_variables(clip_shape: tuple[int, ...], seed: int) -> dict:
    """Random weights and non-trivial BatchNorm statistics for MODEL, without running its (slow) init."""
    model = build_model(MODEL)
    clips = np.zeros((1, *clip_shape), np.float32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), clips, train=False))
    rng = np.random.default_rng(seed)
    variables = jax.tree.map(lambda s: rng.normal(0, 0.3, s.shape).astype(s.dtype), shapes)
    variables['batch_stats']['batchnorm_0']['var'] = rng.uniform(0.01, 0.1, 3).astype(np.float32)
    return variables


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory):
    """A tiny 1-layer model directory with random weights and non-trivial BatchNorm statistics."""
    variables = _random_variables((3, 10, 12, 2), seed=0)
    path = tmp_path_factory.mktemp('predict') / 'model'
    checkpoints.save_model_dir(path, {'model': MODEL, 'input': INPUT, 'source': {'test': True}}, variables)
    return path


def _clips(count: int, shape=(3, 10, 12, 2)) -> np.ndarray:
    return np.random.default_rng(count).integers(0, 256, (count, *shape), dtype=np.uint8)


def _reference(model_dir, clips: np.ndarray) -> np.ndarray:
    spec, variables = checkpoints.load_model(model_dir)
    logits = build_model(spec['model']).apply(variables, clips, train=False)
    return np.asarray(jax.nn.sigmoid(logits))


def test_cli_streams_uint8_clips_in_batches(model_dir, tmp_path):
    clips = _clips(7)
    np.save(tmp_path / 'clips.npy', clips)
    out = tmp_path / 'sub' / 'probabilities.npy'
    args = ['--checkpoint', str(model_dir), '--clips', str(tmp_path / 'clips.npy'), '--out', str(out)]
    assert predict.main([*args, '--batch_size', '3']) == 0  # 3 + 3 + 1 (padded) clips
    probabilities = np.load(out)
    assert probabilities.shape == (7,) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities, _reference(model_dir, clips), atol=1e-6)
    assert 0.0 < probabilities.min() and probabilities.max() < 1.0


def test_float_clips_equal_scaled_uint8(model_dir, tmp_path):
    clips = _clips(2)
    np.save(tmp_path / 'float.npy', clips.astype(np.float32) / 255)
    from_float = inference.predict_clips_file(model_dir, tmp_path / 'float.npy', progress=False)
    np.testing.assert_allclose(from_float, _reference(model_dir, clips), atol=1e-6)


def test_predict_clips_takes_any_iterable_of_batches(model_dir):
    _, model, variables = inference.load_predictor(model_dir)
    clips = _clips(4)
    probabilities = inference.predict_clips(model, variables, iter([clips[:2], clips[2:]]), progress=False)
    np.testing.assert_allclose(probabilities, _reference(model_dir, clips), atol=1e-6)
    empty = inference.predict_clips(model, variables, [], progress=False)
    assert empty.shape == (0,) and empty.dtype == np.float32


@pytest.mark.parametrize(
    'shape, message',
    [
        ((3, 10, 12, 2), 'rank 5'),
        ((1, 3, 10, 12, 4), 'must have 2 channels'),
        ((1, 3, 20, 24, 2), r'must be 10×12 \(height×width\)'),
        ((1, 5, 10, 12, 2), 'must have 3 time steps'),
    ],
)
def test_wrong_shapes_are_refused(model_dir, tmp_path, capsys, shape, message):
    np.save(tmp_path / 'bad.npy', np.zeros(shape, np.uint8))
    args = [
        '--checkpoint',
        str(model_dir),
        '--clips',
        str(tmp_path / 'bad.npy'),
        '--out',
        str(tmp_path / 'o.npy'),
    ]
    assert predict.main(args) == 2
    error = capsys.readouterr().err
    assert error.startswith('error: ') and re.search(message, error), error
    assert '(N, 3, 10, 12, 2)' in error
    assert not (tmp_path / 'o.npy').exists()


def test_wrong_dtype_and_range_are_refused(model_dir, tmp_path):
    np.save(tmp_path / 'int.npy', np.zeros((1, 3, 10, 12, 2), np.int16))
    with pytest.raises(ValueError, match='uint8 .* or float in \\[0, 1\\]; got int16'):
        inference.predict_clips_file(model_dir, tmp_path / 'int.npy', progress=False)
    np.save(tmp_path / 'unscaled.npy', np.full((1, 3, 10, 12, 2), 200.0, np.float32))
    with pytest.raises(ValueError, match='float clips must lie in \\[0, 1\\].*divide by 255'):
        inference.predict_clips_file(model_dir, tmp_path / 'unscaled.npy', progress=False)


def test_missing_checkpoint_is_refused(tmp_path, capsys):
    np.save(tmp_path / 'clips.npy', _clips(1))
    args = ['--checkpoint', str(tmp_path / 'nowhere'), '--clips', str(tmp_path / 'clips.npy')]
    assert predict.main([*args, '--out', str(tmp_path / 'o.npy')]) == 2
    assert 'does not exist' in capsys.readouterr().err


def test_predict_and_checkpoints_do_not_import_tensorflow():
    """They must run on machines without TensorFlow."""
    code = (
        'import sys, convlstm_jax.predict, convlstm_jax.inference, convlstm_jax.checkpoints; '
        "sys.exit(any(m.split('.')[0] in ('tensorflow', 'tf_keras', 'keras') for m in sys.modules))"
    )
    assert subprocess.run([sys.executable, '-c', code], cwd=REPO_ROOT).returncode == 0


# --- A new recording: a video file or a folder of frames -------------------------------------------------

VIDEO_INPUT = {**INPUT, 'height': 16, 'width': 20, 'time_steps': 4, 'frames_per_step': 4}
HISTORY = 4 * 4  # frames one clip covers
STORED = (32, 40)  # the recording's own frame size, resized to 16×20 by the contract


@pytest.fixture(scope='module')
def video_model_dir(tmp_path_factory):
    """A tiny model directory with the input contract 16×20 frames, 4 time steps of 4 frames."""
    variables = _random_variables((4, 16, 20, 4), seed=1)
    path = tmp_path_factory.mktemp('predict_video') / 'model'
    spec = {'model': MODEL, 'input': VIDEO_INPUT, 'source': {'test': True}}
    checkpoints.save_model_dir(path, spec, variables)
    return path


def _frames(count: int) -> np.ndarray:
    """Random frames at the stored size: nearest and area resizing give clearly different pictures."""
    rng = np.random.default_rng(count)
    return rng.integers(0, 256, (count, *STORED), dtype=np.uint8)


def _write_video(path: pathlib.Path, frames: np.ndarray) -> pathlib.Path:
    """A lossless (FFV1, grayscale) video, so the decoded frames equal the written ones."""
    import av

    with av.open(str(path), 'w') as container:
        stream = container.add_stream('ffv1', rate=30)
        stream.height, stream.width = frames.shape[1:]
        stream.pix_fmt = 'gray'
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format='gray')))
        container.mux(stream.encode())
    return path


def _write_pngs(folder: pathlib.Path, frames: np.ndarray) -> pathlib.Path:
    from PIL import Image

    folder.mkdir()
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f'{index:05d}.png')
    return folder


def _decode(path: pathlib.Path) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format='gray') for frame in container.decode(video=0)])


def _clip_reference(
    model_dir, frames: np.ndarray, resize: str = 'nearest', scale: float = 1 / 255
) -> np.ndarray:
    """Probabilities of the clips of every frame with a full history, built as an array with data/clips.py."""
    resized = sources.resize(frames, 16, 20, resize)
    clips = batch_time_channels(resized, np.arange(HISTORY - 1, len(frames)), 4, 4)
    if not np.isclose(scale, 1 / 255):
        clips = clips.astype(np.float32) * np.float32(scale)
    spec, variables = checkpoints.load_model(model_dir)
    logits = build_model(spec['model']).apply(variables, clips, train=False)
    return np.asarray(jax.nn.sigmoid(logits))


def _read_csv(path: pathlib.Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    with open(path, newline='') as file:
        rows = list(csv.reader(file))
    frames = np.array([int(row[0]) for row in rows[1:]])
    probabilities = np.array([float(row[1]) if row[1] else np.nan for row in rows[1:]])
    return rows[0], frames, probabilities


def test_video_cli_matches_the_same_clips_as_an_array(video_model_dir, tmp_path):
    frames = _frames(27)
    video = _write_video(tmp_path / 'fish.mkv', frames)
    np.testing.assert_array_equal(_decode(video), frames)  # lossless: the model sees exactly these frames
    out, plot = tmp_path / 'out' / 'preds.csv', tmp_path / 'out' / 'preds.png'
    args = [
        '--checkpoint',
        str(video_model_dir),
        '--video',
        str(video),
        '--out',
        str(out),
        '--plot',
        str(plot),
    ]
    assert predict.main([*args, '--batch_size', '5']) == 0  # 12 clips: 5 + 5 + 2 (padded)
    header, frame_numbers, probabilities = _read_csv(out)
    assert header == ['frame', 'probability']
    np.testing.assert_array_equal(frame_numbers, np.arange(27))
    assert np.isnan(probabilities[: HISTORY - 1]).all()  # no full history: empty, not invented
    expected = _clip_reference(video_model_dir, frames)
    np.testing.assert_allclose(probabilities[HISTORY - 1 :], expected, atol=1e-6)
    assert 0.0 < expected.min() and expected.max() < 1.0 and expected.std() > 1e-3  # not saturated
    assert plot.read_bytes().startswith(b'\x89PNG') and plot.stat().st_size > 5000
    assert sorted(p.name for p in out.parent.iterdir()) == ['preds.csv', 'preds.png']  # no temporary files


def test_frames_folder_equals_video(video_model_dir, tmp_path):
    frames = _frames(20)
    video = _write_video(tmp_path / 'fish.mkv', frames)
    folder = _write_pngs(tmp_path / 'frames', frames)
    from_video, _, _ = predict.predict_recording_file(video_model_dir, video=str(video), progress=False)
    from_folder, _, _ = predict.predict_recording_file(
        video_model_dir, frames=str(folder), batch_size=3, progress=False
    )
    assert from_folder.shape == (20,) and from_folder.dtype == np.float32
    np.testing.assert_allclose(from_folder, from_video, atol=1e-6)  # NaNs in the same places
    # The command line, with and without --batch_size: the same probabilities in the CSV.
    for batch_size in ([], ['--batch_size', '3']):
        out = tmp_path / 'preds.csv'
        args = ['--checkpoint', str(video_model_dir), '--frames', str(folder), '--out', str(out), *batch_size]
        assert predict.main(args) == 0
        _, frame_numbers, probabilities = _read_csv(out)
        np.testing.assert_array_equal(frame_numbers, np.arange(20))
        np.testing.assert_allclose(probabilities, from_folder, atol=1e-6)


def test_input_contract_resize_and_pixel_scale_are_applied(video_model_dir, tmp_path):
    frames = _frames(18)
    folder = _write_pngs(tmp_path / 'frames', frames)
    _, model, variables = inference.load_predictor(video_model_dir)
    recording = sources.frame_folder_recording(folder)
    for resize, scale in [('area', 1 / 255), ('nearest', 1 / 510)]:
        spec = {**VIDEO_INPUT, 'resize': resize, 'pixel_scale': scale}
        probabilities = predict.predict_recording(model, variables, recording, spec, progress=False)
        expected = _clip_reference(video_model_dir, frames, resize, scale)
        np.testing.assert_allclose(probabilities[HISTORY - 1 :], expected, atol=1e-6)
    with pytest.raises(ValueError, match="input.resize must be one of nearest, area, got 'bicubic'"):
        predict.predict_recording(model, variables, recording, {**VIDEO_INPUT, 'resize': 'bicubic'})


@pytest.mark.parametrize(
    'chunk_sizes, batch_size', [([5] * 10, 4), ([1] * 40, 7), ([40], 3), ([16, 1, 23], 25), ([6], 2)]
)
def test_frame_windows_hold_every_clip_once(chunk_sizes, batch_size):
    """Clips of 2 steps × 3 frames: the windows' targets are frames 5, 6, … in order, each once."""
    frames = np.random.default_rng(0).integers(0, 256, (sum(chunk_sizes), 3, 2), dtype=np.uint8)
    chunks = np.split(frames, np.cumsum(chunk_sizes)[:-1])
    windows = list(predict.frame_windows(iter(chunks), clip_length=6, batch_size=batch_size))
    assert all(window.shape == (5 + batch_size, 3, 2) for window, _ in windows)
    assert all(count == batch_size for _, count in windows[:-1]) and 1 <= windows[-1][1] <= batch_size
    clips = [batch_time_channels(window, np.arange(5, 5 + count), 2, 3) for window, count in windows]
    expected = batch_time_channels(frames, np.arange(5, len(frames)), 2, 3)
    np.testing.assert_array_equal(np.concatenate(clips), expected)


def test_frame_windows_stream_without_reading_ahead():
    """The first window comes out once the frames it needs are read: an endless stream works."""
    read = []

    def endless():
        while True:
            read.append(1)
            yield np.zeros((2, 3, 2), np.uint8)

    stream = predict.frame_windows(endless(), clip_length=6, batch_size=4)
    assert next(stream)[0].shape == (9, 3, 2)
    assert len(read) == 5  # frames 0…9: the histories of frames 5…8, in chunks of two
    for _ in range(100):
        next(stream)
    assert len(read) == 5 + 200


def test_frame_windows_hold_only_a_window_of_frames():
    """Memory stays bounded by one clip's history plus a batch, however long the recording."""
    frame_bytes = 64 * 64
    chunks = (np.full((8, 64, 64), i % 256, np.uint8) for i in range(500))  # 4000 frames, 16 MB in all
    stream = predict.frame_windows(chunks, clip_length=6, batch_size=4)
    tracemalloc.start()
    try:
        count = sum(count for _, count in stream)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 4000 - 5
    # the buffer (< 6 + 4 + 8 frames) and its concatenation with the next chunk, with room to spare
    assert peak < 60 * frame_bytes, peak


def _refused(model_dir, tmp_path, capsys, source: list[str]) -> str:
    out = tmp_path / 'preds.csv'
    assert predict.main(['--checkpoint', str(model_dir), *source, '--out', str(out)]) == 2
    assert not out.exists()
    error = capsys.readouterr().err
    assert error.startswith('error: ')
    return error


def test_video_shorter_than_one_clip_is_refused(video_model_dir, tmp_path, capsys):
    video = _write_video(tmp_path / 'short.mkv', _frames(HISTORY - 1))
    error = _refused(video_model_dir, tmp_path, capsys, ['--video', str(video)])
    assert 'has 15 frames, shorter than one clip' in error and '16 frames of history' in error, error


def test_unreadable_video_is_refused(video_model_dir, tmp_path, capsys):
    (tmp_path / 'noise.mp4').write_bytes(np.random.default_rng(0).bytes(4000))
    error = _refused(video_model_dir, tmp_path, capsys, ['--video', str(tmp_path / 'noise.mp4')])
    assert 'cannot open video' in error and 'noise.mp4' in error, error
    error = _refused(video_model_dir, tmp_path, capsys, ['--video', str(tmp_path / 'absent.mkv')])
    assert 'no such file' in error, error


def test_missing_or_empty_frames_folder_is_refused(video_model_dir, tmp_path, capsys):
    error = _refused(video_model_dir, tmp_path, capsys, ['--frames', str(tmp_path / 'absent')])
    assert 'no such folder' in error and 'absent' in error, error
    (tmp_path / 'empty').mkdir()
    error = _refused(video_model_dir, tmp_path, capsys, ['--frames', str(tmp_path / 'empty')])
    assert 'no frames' in error, error


def test_plot_needs_a_recording(model_dir, tmp_path):
    args = ['--checkpoint', str(model_dir), '--clips', 'x.npy', '--out', 'y.npy', '--plot', 'p.png']
    with pytest.raises(SystemExit) as exit_info:
        predict.main(args)
    assert exit_info.value.code == 'error: --plot needs --video or --frames'  # exit status 1


def test_probability_plot_spans_the_probabilities():
    from convlstm_jax import plotting

    probabilities = np.r_[np.full(5, np.nan), np.linspace(0.42, 0.47, 20)].astype(np.float32)
    figure = plotting.probability_figure(probabilities, fps=25.0, title='tiny')
    axes = figure.axes[0]
    low, high = axes.get_ylim()
    assert 0.41 < low < 0.42 and 0.47 < high < 0.48, (low, high)  # not 0 … 1
    assert axes.get_xlabel() == 'frame' and axes.get_ylabel() == 'burst probability ŷ'


def test_cpu_split_into_devices_gives_the_same_predictions(model_dir, video_model_dir, tmp_path):
    """`--cpu_devices 3`: batches of 5 clips (5 + 2, padded to whole devices) and video windows of 5 targets
    (rounded up to 6, two per device; 10 targets: 6 + 4 padded) give the one-device probabilities."""
    clips = _clips(7)
    np.save(tmp_path / 'clips.npy', clips)
    frames = _frames(25)
    video = _write_video(tmp_path / 'fish.mkv', frames)
    runs = [
        (model_dir, ['--clips', str(tmp_path / 'clips.npy')], tmp_path / 'split.npy'),
        (video_model_dir, ['--video', str(video)], tmp_path / 'split.csv'),
    ]
    for model, source, out in runs:
        result = subprocess.run(
            [sys.executable, '-m', 'convlstm_jax.predict', '--cpu_devices', '3', '--batch_size', '5']
            + ['--checkpoint', str(model), *source, '--out', str(out)],
            cwd=REPO_ROOT,
            env={**os.environ, 'JAX_PLATFORMS': 'cpu'},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-2000:]
    np.testing.assert_allclose(np.load(runs[0][2]), _reference(model_dir, clips), atol=1e-6)
    _, _, probabilities = _read_csv(runs[1][2])
    expected = _clip_reference(video_model_dir, frames)
    np.testing.assert_allclose(probabilities[HISTORY - 1 :], expected, atol=1e-6)


def test_cpu_devices_must_be_positive(model_dir, capsys):
    args = ['--checkpoint', str(model_dir), '--clips', 'x.npy', '--out', 'y.npy']
    with pytest.raises(SystemExit) as exit_info:
        predict.main(['--cpu_devices', '0', *args])
    assert exit_info.value.code == 'error: flag --cpu_devices=0: 0 is not a positive integer (see --help)'
    assert capsys.readouterr().err == ''  # nothing else: one line
