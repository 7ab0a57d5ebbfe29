"""The cache of prepared datasets: where it is, what it holds, how big, and clearing it.

An entry is a folder `<source>-<key>` with a meta.json (see dataset.py). A hidden `.<source>-<key>.tmp-…`
folder is a build in progress, or the remains of one that was killed; clearing removes those too. Nothing
else in the cache folder is ever touched.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
import shutil

_ENTRY = re.compile(r'^[a-z]+-[0-9a-f]{16}$')
_STAGING = re.compile(r'^\.[a-z]+-[0-9a-f]{16}\.tmp-')


@dataclasses.dataclass(frozen=True)
class Entry:
    name: str
    path: pathlib.Path
    complete: bool  # False: a build in progress or interrupted
    description: str
    size_bytes: int

    @property
    def size_mb(self) -> float:
        return self.size_bytes / 1e6


def cache_root(data) -> pathlib.Path:
    """`data.data_dir`, or ~/.cache/convlstm_jax when it is empty."""
    return pathlib.Path(data.data_dir or pathlib.Path.home() / '.cache' / 'convlstm_jax').expanduser()


def folder_bytes(folder: pathlib.Path) -> int:
    """Bytes of all the files under `folder`."""
    return sum(path.stat().st_size for path in folder.rglob('*') if path.is_file())


def entries(root: pathlib.Path) -> list[Entry]:
    """The prepared datasets in the cache folder `root`, by name, then any unfinished builds."""
    if not root.is_dir():
        return []
    found = []
    for path in sorted(root.iterdir(), key=lambda path: (path.name.startswith('.'), path.name)):
        if not path.is_dir():
            continue
        if _ENTRY.match(path.name) and (path / 'meta.json').is_file():
            found.append(Entry(path.name, path, True, describe(path), folder_bytes(path)))
        elif _STAGING.match(path.name):
            found.append(Entry(path.name, path, False, 'unfinished build', folder_bytes(path)))
    return found


def describe(folder: pathlib.Path) -> str:
    """One line on what a prepared dataset holds, from its meta.json."""
    try:
        meta = json.loads((folder / 'meta.json').read_text())
        splits = ', '.join(f'{name} {info["frames"]}' for name, info in meta['splits'].items())
        source = meta.get('params', {}).get('source', '?')
        text = f'{source}, {meta["height"]}×{meta["width"]}, frames: {splits}, horizon {meta["horizon"]}'
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f'unreadable meta.json ({error})'
    return text + (', with TFDS' if (folder / 'tfds').is_dir() else '')


def clear(root: pathlib.Path, name: str = 'all') -> list[Entry]:
    """Removes one entry by name, or every entry and unfinished build ('all'); returns what it removed."""
    present = entries(root)
    chosen = present if name == 'all' else [entry for entry in present if entry.name == name]
    if not chosen:
        names = ', '.join(entry.name for entry in present) or 'none'
        raise ValueError(f'no cache entry {name!r} in {root} (entries: {names})')
    for entry in chosen:
        shutil.rmtree(entry.path)
    return chosen
