"""Reading orbax items with one-line errors: a checkpoint that exists but cannot be read raises
`CheckpointError` (a ValueError) naming the step and what is unreadable; orbax's own logging about it is held
back, as are two warnings orbax gives on normal use (a step saved without metrics; an item folder without its
own metadata file), and asyncio's reports of the abandoned sibling reads of a corrupt checkpoint."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pathlib
import re
import sys
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

VARIABLES_DIR = 'variables'
TRAIN_STATE_DIR = 'train_state'


class CheckpointError(ValueError):
    """A checkpoint that exists but cannot be read: one line names the step and what is unreadable."""


_T = TypeVar('_T')
_ORBAX_PATH = f'{os.sep}orbax{os.sep}'


class _OrbaxNoise(logging.Filter):
    """Drops orbax's warnings about what this module does on purpose, and, while a restore is guarded,
    everything orbax logs (a failure becomes one CheckpointError line instead)."""

    guarded = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if _ORBAX_PATH not in record.pathname:
            return True
        if self.guarded:
            return False
        if record.msg == 'Requested `tracked_metric`; did not provide metrics.':
            return False  # steps saved on a stop signal or a timer have no validation metrics
        if record.msg == 'Metadata file does not exist: %s' and record.args:
            return pathlib.Path(str(record.args[0])).parent.name not in (VARIABLES_DIR, TRAIN_STATE_DIR)
        return True


_NOISE = _OrbaxNoise()
logging.getLogger('absl').addFilter(_NOISE)  # orbax logs through absl's logger


def _drop_closed_loop_callbacks(previous: Callable[[Any], None]) -> Callable[[Any], None]:
    """An unraisable-exception hook that drops "Event loop is closed": when one read of a restore fails,
    orbax's event loop closes while tensorstore's other reads are in flight, and their completion callbacks,
    which can no longer reach it, are reported as unraisable. The restore has failed with a clear error."""

    def hook(unraisable: Any) -> None:
        value = unraisable.exc_value
        if isinstance(value, RuntimeError) and str(value) == 'Event loop is closed':
            return
        previous(unraisable)

    return hook


sys.unraisablehook = _drop_closed_loop_callbacks(sys.unraisablehook)


class _UnretrievedReadErrors(logging.Filter):
    """Drops asyncio's "Task exception was never retrieved" for tensorstore reads of a corrupt checkpoint:
    when one read fails, orbax abandons its sibling reads, and those that fail too are logged when collected.
    The restore has already failed with a clear CheckpointError; any other unretrieved task error stays."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith('Task exception was never retrieved') or not record.exc_info:
            return True
        error = record.exc_info[1]
        return not (isinstance(error, ValueError) and 'OCDBT database' in str(error))


logging.getLogger('asyncio').addFilter(_UnretrievedReadErrors())


@contextlib.contextmanager
def _orbax_silenced() -> Iterator[None]:
    _NOISE.guarded += 1
    try:
        yield
    finally:
        _NOISE.guarded -= 1


def guarded(where: str, items: dict[str, pathlib.Path], read: Callable[[], _T]) -> _T:
    """read(), with any failure turned into a one-line CheckpointError naming the item ({name: folder})
    whose folder the error mentions (all of them where it mentions none)."""
    try:
        with _orbax_silenced():
            return read()
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 (orbax and tensorstore raise many types for a bad file)
        named = [name for name, folder in items.items() if f'{folder}{os.sep}' in str(e)] or list(items)
        raise CheckpointError(f'{where}: {" or ".join(named)} is unreadable ({_reason(e)})') from None


def _reason(error: Exception) -> str:
    """The useful part of an orbax/tensorstore error: the first line, without the tensorstore spec."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    text = text.split(' [tensorstore_spec', 1)[0]
    found = re.search(r'of local file "([^"]+)": (.*)', text)
    if found:
        text = f'{pathlib.Path(found.group(1)).name}: {found.group(2)}'
    return text if len(text) <= 200 else text[:197] + '...'


def check_item(item_dir: pathlib.Path, where: str) -> None:
    """The files every orbax item needs, checked before orbax reads them (its own errors say less)."""
    item = item_dir.name
    if not item_dir.is_dir():
        raise CheckpointError(f'{where}: {item}/ is missing')
    try:
        json.loads((item_dir / '_METADATA').read_text())
    except OSError as e:
        raise CheckpointError(f'{where}: {item}/_METADATA is unreadable ({e.strerror})') from None
    except ValueError as e:
        raise CheckpointError(f'{where}: {item}/_METADATA is unreadable (not valid JSON: {e})') from None
    manifest = item_dir / 'manifest.ocdbt'
    if manifest.exists() and manifest.stat().st_size == 0:
        raise CheckpointError(f'{where}: {item}/manifest.ocdbt is unreadable (empty file)')
