"""Where frames come from: the synthetic tank, a folder of frames per split, or video files.

A source is described as recordings per split. A recording is one continuous piece of video: a clip never
crosses two. Each recording reads its frames as grayscale uint8 chunks at their stored resolution; the
speed proxy ỹ is computed there, and only then are the frames resized to the model's size (`resize`).
"""

from __future__ import annotations

import csv
import dataclasses
import pathlib
import re
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from convlstm_jax.data import synthetic

SPLITS = ('train', 'validation', 'test')
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff')
VIDEO_SUFFIXES = ('.mp4', '.avi', '.mov', '.mkv', '.webm', '.m4v', '.mpg', '.mpeg')
RESIZE_METHODS = ('nearest', 'area')
_CHUNK_FRAMES = 256  # frames per chunk read from a source


def check_split_name(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f'unknown split {split!r}: expected one of {", ".join(SPLITS)}')


@dataclasses.dataclass(frozen=True)
class Recording:
    """One continuous stretch of video inside one split."""

    name: str
    num_frames: int
    fps: float
    read: Callable[[], Iterator[np.ndarray]]  # grayscale uint8 chunks (k, h, w) at stored resolution
    fingerprint: str  # identifies the content (file names, sizes, times) for the cache key
    label_file: pathlib.Path | None = None  # user labels, one per frame of the file's whole video
    label_offset: int = 0  # where this recording starts in the label file
    stored_y_tilde: np.ndarray | None = None  # ỹ and labels kept with already prepared frames (TFDS)
    stored_labels: np.ndarray | None = None
    stored_labels_by_rule: bool = True  # whether those stored labels came from the ỹ rule

    @property
    def labels_by_rule(self) -> bool:
        if self.stored_labels is not None:
            return self.stored_labels_by_rule
        return self.label_file is None


def recordings_from_config(data) -> dict[str, list[Recording]]:
    """The recordings of each split for `config.data` (source 'synthetic', 'frames' or 'video')."""
    if data.source == 'synthetic':
        return synthetic_recordings(
            tuple(data.synthetic.split_frames),
            height=data.height,
            width=data.width,
            seed=data.synthetic.seed,
            num_fish=data.synthetic.num_fish,
        )
    if data.source == 'frames':
        return frame_folder_recordings(data.path, fps=data.fps, label_file=data.label_file)
    if data.source == 'video':
        return video_recordings(data.path, fractions=tuple(data.split_fractions), label_file=data.label_file)
    raise ValueError(f'unknown data source {data.source!r}: expected synthetic, frames, video or tfds')


# --- The synthetic tank ---------------------------------------------------------------------------


def synthetic_recordings(
    split_frames: Sequence[int], *, height: int, width: int, seed: int = 0, num_fish: int = 6
) -> dict[str, list[Recording]]:
    """One long synthetic recording, rendered at the model's size, cut chronologically into the splits."""
    if len(split_frames) != len(SPLITS) or min(split_frames) < 1:
        raise ValueError(
            f'split_frames must be {len(SPLITS)} positive frame counts, got {tuple(split_frames)}'
        )
    params = synthetic.TankParams(num_fish=num_fish)
    total = int(sum(split_frames))
    trajectories: list[synthetic.Trajectories] = []  # simulated on first read, shared by the splits

    def read_range(start: int, stop: int) -> Iterator[np.ndarray]:
        if not trajectories:
            trajectories.append(synthetic.simulate(total, seed=seed, params=params))
        yield from synthetic.render(
            trajectories[0], height=height, width=width, seed=seed, params=params, start=start, stop=stop
        )

    fingerprint = f'synthetic v{synthetic.VERSION} seed={seed} fish={num_fish} {total}×{height}×{width}'
    recordings, start = {}, 0
    for split, count in zip(SPLITS, split_frames, strict=True):
        stop = start + int(count)
        recordings[split] = [
            Recording(
                name=f'synthetic[{start}:{stop}]',
                num_frames=int(count),
                fps=params.fps,
                read=lambda start=start, stop=stop: read_range(start, stop),
                fingerprint=f'{fingerprint} [{start}:{stop}]',
            )
        ]
        start = stop
    return recordings


# --- Folders of frames ----------------------------------------------------------------------------


def frame_folder_recordings(root: str | pathlib.Path, *, fps: float, label_file: str = '') -> dict[str, list]:
    """The 2021 layout: ROOT/train/00000.png …, ROOT/validation/…, ROOT/test/….

    A split folder holds either numbered frames (one recording) or sub-folders of numbered frames (one
    recording each, in name order). Frame numbers must be consecutive; all frames of a recording one size.
    """
    root = pathlib.Path(root)
    if not str(root) or not root.is_dir():
        raise ValueError(
            f'frames source: expected a folder with {", ".join(SPLITS)} sub-folders, got {root!s}'
        )
    recordings = {}
    for split in SPLITS:
        folder = root / split
        if not folder.is_dir():
            raise ValueError(f'frames source: missing split folder {folder}')
        subfolders = sorted(path for path in folder.iterdir() if path.is_dir())
        folders = subfolders if subfolders and not _numbered_frames(folder) else [folder]
        recordings[split] = [_frame_folder_recording(path, fps, label_file) for path in folders]
    return recordings


def _numbered_frames(folder: pathlib.Path) -> list[tuple[int, pathlib.Path]]:
    files = [path for path in folder.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()]
    numbered = []
    for path in files:
        if not re.fullmatch(r'\d+', path.stem):
            raise ValueError(f'frame file names must be frame numbers like 00000.png, got {path}')
        numbered.append((int(path.stem), path))
    return sorted(numbered)


def _frame_folder_recording(folder: pathlib.Path, fps: float, label_file: str) -> Recording:
    numbered = _numbered_frames(folder)
    if not numbered:
        raise ValueError(f'frames source: no frames ({"/".join(IMAGE_SUFFIXES)}) in {folder}')
    numbers = np.array([number for number, _ in numbered])
    gaps = np.flatnonzero(np.diff(numbers) != 1)
    if len(gaps):
        before, after = numbers[gaps[0]], numbers[gaps[0] + 1]
        raise ValueError(f'frames in {folder} are not consecutive: frame {before} is followed by {after}')
    paths = [path for _, path in numbered]
    stats = [path.stat() for path in paths]  # A changed frame changes the size or the time of its file.
    total_size, newest = sum(s.st_size for s in stats), max(s.st_mtime_ns for s in stats)
    fingerprint = f'{folder.resolve()} {len(paths)} {total_size} {newest}'
    return Recording(
        name=str(folder),
        num_frames=len(paths),
        fps=float(fps),
        read=lambda: _read_images(paths),
        fingerprint=fingerprint,
        label_file=_label_path(folder / label_file, label_file),
    )


def _read_images(paths: Sequence[pathlib.Path]) -> Iterator[np.ndarray]:
    from PIL import Image, UnidentifiedImageError

    shape = None
    for start in range(0, len(paths), _CHUNK_FRAMES):
        chunk = []
        for path in paths[start : start + _CHUNK_FRAMES]:
            try:
                with Image.open(path) as image:
                    frame = np.asarray(image.convert('L'))
            except (UnidentifiedImageError, OSError, ValueError) as error:
                raise ValueError(f'cannot read image {path}: {error}') from error
            if shape is None:
                shape = frame.shape
            elif frame.shape != shape:
                raise ValueError(
                    f'frames of one recording must share a size: {paths[0]} is {shape[1]}×{shape[0]} '
                    f'(W×H), {path} is {frame.shape[1]}×{frame.shape[0]}'
                )
            chunk.append(frame)
        yield np.stack(chunk)


# --- Video files ----------------------------------------------------------------------------------


def video_recordings(
    path: str | pathlib.Path, *, fractions: Sequence[float], label_file: str = ''
) -> dict[str, list[Recording]]:
    """Video files read with PyAV.

    PATH a folder with train/, validation/, test/ sub-folders: each video in one is a recording of that split.
    PATH one file, or several separated by commas: each is cut chronologically by `fractions` (train,
    validation, test), so each file gives one recording per split.
    """
    text = str(path)
    if not text:
        raise ValueError('video source: data.path is empty; expected a video file, a comma list, or a folder')
    folder = pathlib.Path(text)
    if folder.is_dir():
        return _videos_by_split_folder(folder, label_file)
    files = [pathlib.Path(part.strip()) for part in text.split(',') if part.strip()]
    if len(fractions) != len(SPLITS) or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(
            f'split_fractions must be {len(SPLITS)} non-negative numbers summing to 1, got {fractions}'
        )
    recordings: dict[str, list[Recording]] = {split: [] for split in SPLITS}
    for file in files:
        num_frames, fps = probe_video(file)
        bounds = np.round(np.cumsum([0.0, *fractions]) * num_frames).astype(int)
        for split, start, stop in zip(SPLITS, bounds[:-1], bounds[1:], strict=True):
            recordings[split].append(
                _video_recording(file, num_frames, fps, int(start), int(stop), label_file)
            )
    return recordings


def _videos_by_split_folder(folder: pathlib.Path, label_file: str) -> dict[str, list[Recording]]:
    recordings = {}
    for split in SPLITS:
        split_folder = folder / split
        if not split_folder.is_dir():
            raise ValueError(f'video source: missing split folder {split_folder}')
        files = sorted(
            p for p in split_folder.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file()
        )
        if not files:
            raise ValueError(f'video source: no videos ({"/".join(VIDEO_SUFFIXES)}) in {split_folder}')
        recordings[split] = []
        for file in files:
            num_frames, fps = probe_video(file)
            recordings[split].append(_video_recording(file, num_frames, fps, 0, num_frames, label_file))
    return recordings


def _video_recording(
    file: pathlib.Path, num_frames: int, fps: float, start: int, stop: int, label_file: str
) -> Recording:
    stat = file.stat()
    return Recording(
        name=f'{file}[{start}:{stop}]',
        num_frames=stop - start,
        fps=fps,
        read=lambda: _read_video(file, start, stop),
        fingerprint=f'{file.resolve()} {stat.st_size} {stat.st_mtime_ns} [{start}:{stop}]',
        label_file=_label_path(file.with_name(f'{file.name}.{label_file}'), label_file),
        label_offset=start,
    )


def _open_video(file: pathlib.Path):
    import av

    if not file.is_file():
        raise ValueError(f'video source: no such file {file}')
    try:
        container = av.open(str(file))
    except av.error.FFmpegError as error:
        raise ValueError(f'cannot open video {file}: {error}') from error
    if not container.streams.video:
        container.close()
        raise ValueError(f'cannot open video {file}: it has no video stream')
    return container


def probe_video(file: str | pathlib.Path) -> tuple[int, float]:
    """(number of frames, frames per second); counts the packets when the container does not say."""
    file = pathlib.Path(file)
    with _open_video(file) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        if not rate:
            raise ValueError(f'cannot tell the frame rate of video {file}')
        # One packet per frame for the usual codecs; reading checks the count against the decoded frames.
        num_frames = stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
    return int(num_frames), float(rate)


def _read_video(file: pathlib.Path, start: int, stop: int) -> Iterator[np.ndarray]:
    with _open_video(file) as container:
        stream = container.streams.video[0]
        stream.thread_type = 'AUTO'
        chunk, index = [], 0
        for frame in container.decode(stream):
            if index >= stop:
                break
            if index >= start:
                chunk.append(frame.to_ndarray(format='gray'))
                if len(chunk) == _CHUNK_FRAMES:
                    yield np.stack(chunk)
                    chunk = []
            index += 1
        if chunk:
            yield np.stack(chunk)
    if index < stop:
        raise ValueError(f'video {file} ended after {index} frames; expected at least {stop}')


# --- One new recording (predict.py) ----------------------------------------------------------------


def video_file_recording(file: str | pathlib.Path) -> Recording:
    """A whole video file as one recording, read in chunks as it is decoded (never whole into memory)."""
    file = pathlib.Path(file)
    num_frames, fps = probe_video(file)
    return _video_recording(file, num_frames, fps, 0, num_frames, '')


def frame_folder_recording(folder: str | pathlib.Path, *, fps: float = 30.0) -> Recording:
    """A folder of numbered frames (00000.png, …) as one recording, read in chunks."""
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise ValueError(f'expected a folder of numbered frames (00000.png, …), got {folder}: no such folder')
    return _frame_folder_recording(folder, fps, '')


# --- Labels, resizing, time units -----------------------------------------------------------------


def _label_path(path: pathlib.Path, label_file: str) -> pathlib.Path | None:
    if not label_file:
        return None
    if not path.is_file():
        raise ValueError(f'label file {path} not found (data.label_file = {label_file!r})')
    return path


def read_label_file(path: pathlib.Path, start: int, num_frames: int) -> np.ndarray:
    """Per-frame 0/1 labels from .npy (1-D) or .csv (one value a line, an optional header), for a range."""
    if path.suffix == '.npy':
        values = np.load(path)
    elif path.suffix == '.csv':
        with open(path, newline='') as file:
            rows = [row for row in csv.reader(file) if row]
        if rows and not rows[0][-1].strip().lstrip('-').isdigit():
            rows = rows[1:]
        values = np.array([int(row[-1]) for row in rows])
    else:
        raise ValueError(f'label file {path}: expected .npy or .csv')
    values = np.asarray(values).reshape(-1)
    if not np.isin(values, (0, 1)).all():
        raise ValueError(f'label file {path}: expected 0/1 labels, found {np.unique(values)[:10]}')
    if len(values) < start + num_frames:
        raise ValueError(
            f'label file {path} has {len(values)} labels; the video has {start + num_frames} frames'
        )
    return values[start : start + num_frames].astype(np.int8)


def frames_for_seconds(seconds: float, fps: float) -> int:
    """A duration in frames at the given rate (2021: 1.5 s at 30 fps = 45 frames, 4 s = 120 frames)."""
    return int(round(seconds * fps))


def nearest_indices(source: int, target: int) -> np.ndarray:
    """Source rows (or columns) that PIL's Image.resize(NEAREST) picks: it accumulates the scale stepwise."""
    scale = source / target
    position, picked = 0.5 * scale, []
    for _ in range(target):
        picked.append(min(int(position), source - 1))
        position += scale
    return np.array(picked)


def area_weights(source: int, target: int) -> np.ndarray:
    """(target, source) matrix averaging each target pixel's footprint over the source pixels it covers."""
    edges = np.arange(target + 1) * (source / target)
    lower, upper = edges[:-1, None], edges[1:, None]
    pixel = np.arange(source)[None, :]
    overlap = np.clip(np.minimum(upper, pixel + 1) - np.maximum(lower, pixel), 0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


def resize(frames: np.ndarray, height: int, width: int, method: str = 'nearest') -> np.ndarray:
    """uint8 (k, h, w) → uint8 (k, height, width): 'nearest' exactly as PIL, or 'area' (box average)."""
    if method not in RESIZE_METHODS:
        raise ValueError(f'unknown resize {method!r}: expected one of {", ".join(RESIZE_METHODS)}')
    _, source_height, source_width = frames.shape
    if (source_height, source_width) == (height, width):
        return frames
    if method == 'nearest':
        rows, cols = nearest_indices(source_height, height), nearest_indices(source_width, width)
        return frames[:, rows][:, :, cols]
    rows = area_weights(source_height, height).astype(np.float32)
    cols = area_weights(source_width, width).astype(np.float32)
    averaged = np.einsum('ij,kjl,ml->kim', rows, frames.astype(np.float32), cols, optimize=True)
    return np.clip(np.rint(averaged), 0, 255).astype(np.uint8)
