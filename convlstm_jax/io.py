"""Files written whole or not at all, and JSON that stays strict.

Every file the project writes for a reader (configs, summaries, reports, arrays, plots) goes through
`write_atomic`: the content goes to a temporary file beside the target, which is then renamed over it, so a
crash or a kill never leaves a half-written file where a reader looks.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import tempfile
from collections.abc import Callable
from typing import IO, Any


def write_atomic(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> None:
    """Calls write(binary file) on a temporary file beside `path`, then renames it into place.

    The parent folder is created if needed; the file is made world-readable (mkstemp creates it private).
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
    try:
        with os.fdopen(handle, 'wb') as f:
            write(f)
        os.chmod(temp_name, 0o644)
        os.replace(temp_name, path)
    finally:
        if os.path.exists(temp_name):
            os.unlink(temp_name)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_atomic(path, lambda f: f.write(text.encode('utf-8')))


def write_json(path: str | os.PathLike, content: Any, *, sort_keys: bool = False) -> None:
    """Strict JSON (NaN and Inf become null, numpy scalars and arrays plain numbers and lists), indented."""
    write_text(path, json.dumps(jsonable(content), indent=2, sort_keys=sort_keys, allow_nan=False) + '\n')


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(pathlib.Path(path).read_text(encoding='utf-8'))


def jsonable(value: Any) -> Any:
    """numpy scalars and arrays become Python numbers and lists; NaN and Inf None (JSON has neither)."""
    if hasattr(value, 'tolist') and hasattr(value, 'dtype'):  # numpy scalars and arrays
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: jsonable(v) for key, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value
