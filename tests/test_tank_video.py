"""The synthetic tank as an mp4: reads back through the video source, whole or not at all, bad input named."""

from __future__ import annotations

import numpy as np
import pytest

from convlstm_jax.data import sources, synthetic, tank_video


def test_written_video_reads_back_through_the_video_source(tmp_path, capsys) -> None:
    out = tmp_path / 'tank.mp4'
    tank_video.main(
        [
            '--seconds',
            '1.5',
            '--fps',
            '10',
            '--height',
            '16',
            '--width',
            '20',
            '--seed',
            '3',
            '--out',
            str(out),
        ]
    )
    assert capsys.readouterr().out.startswith(f'wrote {out}: 15 frames of 16×20 at 10 fps (')
    assert [path.name for path in tmp_path.iterdir()] == ['tank.mp4']
    recording = sources.video_file_recording(out)
    assert (recording.num_frames, recording.fps) == (15, 10.0)
    frames = np.concatenate(list(recording.read()))
    assert frames.shape == (15, 16, 20) and frames.dtype == np.uint8
    rendered = synthetic.generate(15, seed=3, height=16, width=20).frames
    assert np.abs(frames.astype(int) - rendered).mean() < 4  # H.264 is lossy, but close at crf 18


@pytest.mark.parametrize('seed', [[], ['--seed', '1']])
def test_the_documented_command_writes_the_2021_frame_size(tmp_path, capsys, seed) -> None:
    """`tank_video --seconds S [--seed N] --out tank.mp4` as the docs show it, for a few frames."""
    out = tmp_path / 'tank.mp4'
    tank_video.main(['--seconds', '0.2', *seed, '--out', str(out)])
    assert capsys.readouterr().out.startswith(f'wrote {out}: 6 frames of 120×160 at 30 fps (')
    recording = sources.video_file_recording(out)
    assert (recording.num_frames, recording.fps) == (6, 30.0)


def test_an_interrupted_write_leaves_nothing(tmp_path, monkeypatch) -> None:
    def interrupted(*args, **kwargs):
        yield np.zeros((2, 16, 20), np.uint8)
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, 'render', interrupted)
    with pytest.raises(KeyboardInterrupt):
        tank_video.write_video(tmp_path / 'tank.mp4', 1, height=16, width=20, progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    'arguments', [['--height', '15'], ['--seconds', '0'], ['--fps', '-1'], ['--width', '0']]
)
def test_bad_sizes_are_one_line_errors(tmp_path, arguments) -> None:
    with pytest.raises(SystemExit, match='^error: expected .* even height and width'):
        tank_video.main(['--out', str(tmp_path / 'tank.mp4'), '--seconds', '1', *arguments])
    assert list(tmp_path.iterdir()) == []
