"""Progress bars that suit both a terminal and a log file.

On a terminal, tqdm redraws its line freely. Written to a file (a batch job's log), every redraw is a new
line, so there a bar prints at most one line every `LOG_INTERVAL_S` seconds.
"""

from __future__ import annotations

import sys
from typing import Any

import tqdm

LOG_INTERVAL_S = 30.0


def bar(iterable: Any = None, **kwargs: Any) -> tqdm.tqdm:
    """`tqdm.tqdm(iterable, **kwargs)`, on stderr, throttled to a line every 30 s when not on a terminal."""
    stream = kwargs.setdefault('file', sys.stderr)
    if not _is_terminal(stream):
        kwargs.setdefault('mininterval', LOG_INTERVAL_S)
        kwargs.setdefault('maxinterval', LOG_INTERVAL_S)
    kwargs.setdefault('dynamic_ncols', True)
    return tqdm.tqdm(iterable, **kwargs)


def write(line: str, file: Any = None) -> None:
    """Prints a line (to stdout, or `file`) without breaking a bar that is being drawn."""
    tqdm.tqdm.write(line, file=file)


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
