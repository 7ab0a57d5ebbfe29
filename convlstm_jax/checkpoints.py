"""Model directories and training checkpoints: the one format every command reads.

A model directory::

    DIR/model.json   {"format": "convlstm_jax.model/1", "model": {config.model fields},
                      "input": {"height", "width", "time_steps", "frames_per_step", "pixel_scale",
                                "resize", "horizon"},
                      "source": {free-form provenance}}
    DIR/variables/   orbax StandardCheckpointer pytree {'params': ..., 'batch_stats': ...}

A training workdir holds the same `model.json` at its top and one orbax CheckpointManager step per saved
checkpoint: `WORKDIR/checkpoints/<step>/{variables,train_state}`. The best step is chosen from the metrics
the CheckpointManager stores with each step (`manager.save(step, args=...,
metrics={'val_loss': ..., 'val_auc': ...})`, which orbax keeps as the step's `metrics` item whenever the
manager has a `best_fn`); `load_model` reads them back with `CheckpointManager(dir).metrics(step)`, so any
`best_fn` works. Steps without the metric asked for are not candidates for best_auc / best_loss.

A checkpoint that exists but cannot be read raises `CheckpointError` (a ValueError) whose message is one line
naming the step and what is unreadable; orbax's own logging about it is held back, as are two warnings orbax
gives on normal use (a step saved without metrics; an item folder without its own metadata file).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import pathlib
import re
import shutil
import sys
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import jax
import numpy as np
import orbax.checkpoint as ocp

from convlstm_jax import io

MODEL_FORMAT = 'convlstm_jax.model/1'
MODEL_JSON = 'model.json'
VARIABLES_DIR = 'variables'
CHECKPOINTS_DIR = 'checkpoints'
BROKEN_DIR = 'checkpoints-broken'  # unreadable steps moved aside on resume (workdir.py draws the layout)
WORKDIR_CONFIG = 'config.json'
SELECTIONS = ('best_auc', 'best_loss', 'latest')
# select -> (metric stored with each step, whether larger is better)
_SELECT_METRIC = {'best_auc': ('val_auc', True), 'best_loss': ('val_loss', False)}
# uint8 frames are scaled by this inside the model; float clips must already be in [0, 1].
PIXEL_SCALE = 1 / 255


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
            return pathlib.Path(str(record.args[0])).parent.name not in (VARIABLES_DIR, 'train_state')
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


def _guarded(where: str, items: dict[str, pathlib.Path], read: Callable[[], _T]) -> _T:
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


def input_contract(data_config: Any) -> dict[str, Any]:
    """The "input" section of model.json from a `config.data`: what clips the model expects."""
    return {
        'height': int(data_config.height),
        'width': int(data_config.width),
        'time_steps': int(data_config.time_steps),
        'frames_per_step': int(data_config.frames_per_step),
        'pixel_scale': PIXEL_SCALE,
        'resize': str(data_config.resize),
        'horizon': int(data_config.horizon),
    }


def model_fields(model_config: Any) -> dict[str, Any]:
    """The "model" section of model.json from a `config.model` (a ConfigDict or a dict), JSON-ready."""
    fields = model_config.to_dict() if hasattr(model_config, 'to_dict') else dict(model_config)
    return json.loads(json.dumps(fields))


def save_model_dir(path: str | pathlib.Path, spec: dict[str, Any], variables: dict[str, Any]) -> pathlib.Path:
    """Writes `spec` (model.json content) and `variables` to a model directory, atomically.

    Everything is written to a temporary sibling first and renamed into place, so a reader never sees a
    half-written directory; an existing directory at `path` is replaced.
    """
    path = pathlib.Path(path).absolute()
    spec = {'format': MODEL_FORMAT, **{k: v for k, v in spec.items() if k != 'format'}}
    _check_spec(spec, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f'.{path.name}.tmp-{uuid.uuid4().hex[:8]}'
    try:
        tmp.mkdir()
        (tmp / MODEL_JSON).write_text(json.dumps(spec, indent=2, sort_keys=True) + '\n')
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(tmp / VARIABLES_DIR, jax.tree.map(np.asarray, variables))
        checkpointer.wait_until_finished()
        checkpointer.close()
        if path.exists():
            old = path.parent / f'.{path.name}.old-{uuid.uuid4().hex[:8]}'
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old)
        else:
            tmp.rename(path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return path


def load_model(path: str | pathlib.Path, select: str = 'best_auc') -> tuple[dict[str, Any], dict[str, Any]]:
    """Returns (spec, variables) from a model directory, a training workdir or one step directory in it.

    For a training workdir `select` picks the step: 'best_auc' (highest val_auc), 'best_loss' (lowest
    val_loss) or 'latest'. Variables come back as numpy arrays, whatever devices they were saved from.
    """
    if select not in SELECTIONS:
        raise ValueError(f'unknown select {select!r}: expected one of {", ".join(SELECTIONS)}')
    spec_path, variables_path, where = _resolve(pathlib.Path(path), select)
    spec = read_spec(spec_path)
    return spec, _restore_numpy(variables_path, where)


def read_spec(path: str | pathlib.Path) -> dict[str, Any]:
    """Reads and checks a model.json."""
    path = pathlib.Path(path)
    try:
        spec = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f'{path} is not valid JSON: {e}') from e
    _check_spec(spec, path)
    return spec


def _check_spec(spec: dict[str, Any], where: pathlib.Path) -> None:
    if spec.get('format') != MODEL_FORMAT:
        raise ValueError(f'{where}: expected format {MODEL_FORMAT!r}, found {spec.get("format")!r}')
    missing = [key for key in ('model', 'input') if not isinstance(spec.get(key), dict)]
    if missing:
        raise ValueError(f'{where}: model.json lacks the section(s) {missing}')


def _resolve(path: pathlib.Path, select: str) -> tuple[pathlib.Path, pathlib.Path, str]:
    """(model.json, variables directory, how errors name it) for a model directory, a workdir, or a step
    directory."""
    if not path.is_dir():
        raise FileNotFoundError(f'checkpoint {path} does not exist or is not a directory')
    if (path / MODEL_JSON).is_file() and (path / VARIABLES_DIR).is_dir():
        return path / MODEL_JSON, path / VARIABLES_DIR, f'model directory {path}'
    if (path / MODEL_JSON).is_file() and (path / CHECKPOINTS_DIR).is_dir():
        step = select_step(path / CHECKPOINTS_DIR, select)
        where = f'checkpoint step {step} in {path}'
        return path / MODEL_JSON, path / CHECKPOINTS_DIR / str(step) / VARIABLES_DIR, where
    workdir_spec = path.parent.parent / MODEL_JSON
    if (path / VARIABLES_DIR).is_dir() and path.parent.name == CHECKPOINTS_DIR and workdir_spec.is_file():
        return workdir_spec, path / VARIABLES_DIR, f'checkpoint step {path.name} in {path.parent.parent}'
    if (path / WORKDIR_CONFIG).is_file() or (path / MODEL_JSON).is_file():
        raise FileNotFoundError(f'no checkpoint yet in {path}')  # a training run before its first save
    raise ValueError(
        f'{path} is not a model directory (model.json + variables/), a training workdir '
        f'(model.json + checkpoints/) or a step directory of one (checkpoints/<step>/variables)'
    )


def select_step(checkpoints_dir: str | pathlib.Path, select: str) -> int:
    """The step of a CheckpointManager directory that `select` names."""
    if select not in SELECTIONS:
        raise ValueError(f'unknown select {select!r}: expected one of {", ".join(SELECTIONS)}')
    manager = ocp.CheckpointManager(pathlib.Path(checkpoints_dir).absolute())
    try:
        steps = [
            s
            for s in manager.all_steps()
            if (pathlib.Path(checkpoints_dir) / str(s) / VARIABLES_DIR).is_dir()
        ]
        if not steps:
            raise FileNotFoundError(f'no checkpoint yet in {pathlib.Path(checkpoints_dir).absolute().parent}')
        if select == 'latest':
            return max(steps)
        metric, larger_is_better = _SELECT_METRIC[select]
        scored = {}
        for step in steps:
            value = (manager.metrics(step) or {}).get(metric)
            if value is not None and math.isfinite(value):
                scored[step] = value
    finally:
        manager.close()
    if not scored:
        raise FileNotFoundError(
            f'no checkpoint in {checkpoints_dir} has the metric {metric!r} that --select {select} needs '
            f'(steps {steps}); use --select latest'
        )
    # Ties go to the later step.
    sign = 1 if larger_is_better else -1
    return max(scored, key=lambda s: (sign * scored[s], s))


def _restore_numpy(variables_path: pathlib.Path, where: str) -> dict[str, Any]:
    """Restores an orbax pytree as numpy arrays, independent of the devices that saved it."""
    variables_path = variables_path.absolute()
    check_item(variables_path, where)
    checkpointer = ocp.PyTreeCheckpointer()
    try:
        items = {f'{VARIABLES_DIR}/': variables_path}
        metadata = _guarded(where, items, lambda: checkpointer.metadata(variables_path).item_metadata)
        if metadata is None:  # orbax logs why (held back here) and returns nothing
            raise CheckpointError(
                f'{where}: {VARIABLES_DIR}/ is unreadable (orbax cannot read its tree metadata)'
            )
        metadata = metadata.tree
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata)
        variables = _guarded(
            where,
            items,
            lambda: checkpointer.restore(
                variables_path, args=ocp.args.PyTreeRestore(restore_args=restore_args)
            ),
        )
    finally:
        checkpointer.close()
    variables = dict(variables)
    variables.setdefault('batch_stats', {})
    return variables


# --------------------------------------------------------------------------------------------------
# Training checkpoints (train.py): an asynchronous orbax CheckpointManager over WORKDIR/checkpoints.


class TrainingCheckpoints:
    """`WORKDIR/checkpoints/<step>/{variables,train_state}`: keeps the latest `keep` steps plus the best step
    by validation loss and the best by validation AUC.

    Retention is one orbax `AnyPreservationPolicy`: a step survives if `LatestN` or either `BestN` keeps it,
    so a best-N rule never deletes the latest step. Orbax 0.12 writes a step's metrics to disk only when the
    manager has a `best_fn`, so one is set (val_auc) although the policy alone decides what is deleted;
    without it the best steps would lose their metrics on restart and be deleted by the next save.
    Steps saved without metrics (a stop signal mid-epoch) are kept only while they are among the latest.
    """

    def __init__(self, workdir: str | pathlib.Path, keep: int = 2, *, read_only: bool = False):
        if keep < 1:
            raise ValueError(f'keep_checkpoints must be at least 1, got {keep}')
        policy = ocp.checkpoint_managers
        preservation = policy.AnyPreservationPolicy(
            [
                policy.LatestN(n=keep),
                policy.BestN(
                    get_metric_fn=lambda m: m['val_loss'],
                    reverse=True,
                    n=1,
                    keep_checkpoints_without_metrics=False,
                ),
                policy.BestN(
                    get_metric_fn=lambda m: m['val_auc'],
                    reverse=False,
                    n=1,
                    keep_checkpoints_without_metrics=False,
                ),
            ]
        )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=preservation,
            best_fn=lambda m: m['val_auc'],
            best_mode='max',
            enable_async_checkpointing=True,
            create=not read_only,
            read_only=read_only,
        )
        self.directory = pathlib.Path(workdir).absolute() / CHECKPOINTS_DIR
        self._manager = ocp.CheckpointManager(
            self.directory, item_names=(VARIABLES_DIR, 'train_state'), options=options
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(
        self, step: int, variables: dict, train_state: dict, metrics: dict[str, float] | None = None
    ) -> None:
        """Starts writing `step` in the background (numpy arrays: they are never modified afterwards).

        `metrics` ({'val_loss', 'val_auc'}) makes the step a candidate for the best-by-loss/AUC steps.
        """
        if step in self._manager.all_steps():
            return
        # numpy scalars (which orbax refuses) become 0-d arrays
        variables, train_state = jax.tree.map(np.asarray, (variables, train_state))
        self._manager.save(
            step,
            args=ocp.args.Composite(
                **{
                    VARIABLES_DIR: ocp.args.StandardSave(variables),
                    'train_state': ocp.args.StandardSave(train_state),
                }
            ),
            metrics=metrics,
            force=True,
        )

    def restore(self, step: int, variables: dict, train_state: dict) -> tuple[dict, dict]:
        """(variables, train_state) of `step`, shaped like the given templates (numpy arrays); a step that
        cannot be read raises CheckpointError."""
        variables, train_state = jax.tree.map(np.asarray, (variables, train_state))
        where = f'checkpoint step {step} in {self.directory.parent}'
        items = {VARIABLES_DIR: variables, 'train_state': train_state}
        for item in items:
            check_item(self.directory / str(step) / item, where)
        restored = _guarded(
            where,
            {f'{item}/': self.directory / str(step) / item for item in items},
            lambda: self._manager.restore(
                step,
                args=ocp.args.Composite(
                    **{item: ocp.args.StandardRestore(template) for item, template in items.items()}
                ),
            ),
        )
        return restored[VARIABLES_DIR], restored['train_state']

    def wait_until_finished(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()


def move_aside(workdir: str | pathlib.Path, step: int) -> pathlib.Path:
    """Moves an unreadable step out of the managed folder, to WORKDIR/checkpoints-broken/<step>[.N]: kept for
    inspection, and out of the way of a new save of the same step and of retention. No manager may be open."""
    workdir = pathlib.Path(workdir)
    target = workdir / BROKEN_DIR / str(step)
    number = 1
    while target.exists():
        target = target.with_name(f'{step}.{number}')
        number += 1
    target.parent.mkdir(parents=True, exist_ok=True)
    (workdir / CHECKPOINTS_DIR / str(step)).rename(target)
    return target


def write_spec(path: str | pathlib.Path, spec: dict[str, Any]) -> None:
    """Writes a model.json (a training workdir's, beside its checkpoints/)."""
    spec = {'format': MODEL_FORMAT, **{k: v for k, v in spec.items() if k != 'format'}}
    _check_spec(spec, pathlib.Path(path))
    io.write_json(path, spec, sort_keys=True)
