"""A video of the synthetic tank (data/synthetic.py), something to predict on, written with PyAV.

python -m convlstm_jax.data.tank_video --seconds 60 --out tank.mp4
python -m convlstm_jax.predict --checkpoint runs/quick --video tank.mp4 …   (docs/data.md, README)
"""

from __future__ import annotations

import fractions
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

import av

from convlstm_jax import io
from convlstm_jax import progress as progress_lib
from convlstm_jax.data import synthetic


def write_video(
    path: str | pathlib.Path,
    seconds: float,
    *,
    seed: int = 0,
    height: int = 120,
    width: int = 160,
    fps: float = 30.0,
    progress: bool = True,
) -> int:
    """Writes `seconds` of the tank as an H.264 mp4 (PyAV), whole or not at all; returns the frame count.

    The fish move in tank time (30 fps); another `fps` only changes the playback speed. The file is written
    beside `path` under a temporary name and renamed at the end, so a failure or Ctrl-C leaves nothing.
    """
    num_frames = round(seconds * fps)
    if num_frames < 1 or height < 2 or width < 2 or height % 2 or width % 2 or fps <= 0:
        raise ValueError(
            'expected --seconds × --fps ≥ 1 frame, fps > 0 and an even height and width ≥ 2 (H.264 with '
            f'4:2:0 chroma), got {seconds} s at {fps} fps = {num_frames} frames of {height}×{width}'
        )
    params = synthetic.TankParams()
    trajectories = synthetic.simulate(num_frames, seed=seed, params=params)

    def write(file) -> None:
        with av.open(file, mode='w', format='mp4') as container:
            stream = container.add_stream('libx264', rate=fractions.Fraction(fps).limit_denominator(1001))
            stream.height, stream.width, stream.pix_fmt = height, width, 'yuv420p'
            stream.options = {'crf': '18'}  # close to the rendered frames; a minute of 120×160 is ~1–2 MB
            with progress_lib.bar(
                total=num_frames, unit='frame', desc='tank video', disable=not progress
            ) as bar:
                for chunk in synthetic.render(
                    trajectories, height=height, width=width, seed=seed, params=params
                ):
                    for frame in chunk:
                        image = av.VideoFrame.from_ndarray(frame, format='gray')
                        container.mux(stream.encode(image.reformat(format='yuv420p')))
                    bar.update(len(chunk))
            container.mux(stream.encode())

    io.write_atomic(path, write)
    return num_frames


def define_flags(flag_values: Any, argv: Sequence[str]) -> None:
    """The options of the command, in `flag_values` (see cli.run)."""
    from absl import flags

    def define(kind, name, default, text, **kwargs):
        getattr(flags, f'DEFINE_{kind}')(name, default, text, flag_values=flag_values, **kwargs)

    define('string', 'out', None, 'The mp4 file to write, e.g. tank.mp4.', required=True)
    define('float', 'seconds', 60.0, 'Length of the video.')
    define('integer', 'seed', 0, 'Tank seed (the training data uses config seed 0).')
    define('integer', 'height', 120, 'Frame height, even.')
    define('integer', 'width', 160, 'Frame width, even.')
    define('float', 'fps', 30.0, 'Frames per second.')


def run(args: Any) -> None:
    try:
        count = write_video(
            args.out, args.seconds, seed=args.seed, height=args.height, width=args.width, fps=args.fps
        )
    except ValueError as error:
        sys.exit(f'error: {error}')
    size = pathlib.Path(args.out).stat().st_size / 1e6
    print(
        f'wrote {args.out}: {count} frames of {args.height}×{args.width} at {args.fps:g} fps ({size:.1f} MB)'
    )


def main(argv: Sequence[str] | None = None) -> int:
    """The command with `argv` (the arguments, without the program name; default sys.argv[1:])."""
    from convlstm_jax import cli

    return cli.run(run, __doc__, define_flags, argv)


if __name__ == '__main__':
    sys.exit(main())
