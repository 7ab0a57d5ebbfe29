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

A population's workdir (population.py) holds every member in each step, on a leading member axis, and
says so in model.json (`"population": K`). Each step's metrics then hold every member's own (`val_auc/3`)
beside the best of them (`val_auc`, `val_loss`), retention keeps each member's best steps, and
`load_model(..., member=i|'best')` returns one member's variables: 'best' is the member with the best
validation AUC at the step selected by the best of them.

A checkpoint that exists but cannot be read raises `CheckpointError` (checkpoint_errors.py).
"""

from __future__ import annotations

import json
import math
import pathlib
import shutil
import uuid
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from convlstm_jax import io
from convlstm_jax.checkpoint_errors import (
    TRAIN_STATE_DIR,
    VARIABLES_DIR,
    CheckpointError,
    check_item,
    guarded,
)

MODEL_FORMAT = 'convlstm_jax.model/1'
MODEL_JSON = 'model.json'
CHECKPOINTS_DIR = 'checkpoints'
BROKEN_DIR = 'checkpoints-broken'  # unreadable steps moved aside on resume (workdir.py draws the layout)
WORKDIR_CONFIG = 'config.json'
SELECTIONS = ('best_auc', 'best_loss', 'latest')
# select -> (metric stored with each step, whether larger is better)
_SELECT_METRIC = {'best_auc': ('val_auc', True), 'best_loss': ('val_loss', False)}
# uint8 frames are scaled by this inside the model; float clips must already be in [0, 1].
PIXEL_SCALE = 1 / 255


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


def load_model(
    path: str | pathlib.Path, select: str = 'best_auc', member: int | str | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Returns (spec, variables) from a model directory, a training workdir or one step directory in it.

    For a training workdir `select` picks the step: 'best_auc' (highest val_auc), 'best_loss' (lowest
    val_loss) or 'latest'. Variables come back as numpy arrays, whatever devices they were saved from.
    From a population's workdir, `member` (an index, or 'best', the default) picks one member: the spec
    returned is that member's, without the population.
    """
    if select not in SELECTIONS:
        raise ValueError(f'unknown select {select!r}: expected one of {", ".join(SELECTIONS)}')
    path = pathlib.Path(path)
    spec_path, variables_path, where = _resolve(path, select)
    spec = read_spec(spec_path)
    size = int(spec.get('population', 1))
    chosen = resolve_member(path, select, member, size, variables_path.parent)
    if chosen is not None and member not in (None, 'best'):  # an index: that member's own best step
        spec_path, variables_path, where = _resolve(path, select, chosen)
    variables = _restore_numpy(variables_path, where)
    if size > 1:
        variables = jax.tree.map(lambda x: x[chosen], variables)
        spec = {**{k: v for k, v in spec.items() if k != 'population'}, 'member': chosen}
    return spec, variables


def resolve_member(
    path: pathlib.Path, select: str, member: int | str | None, size: int, step_dir: pathlib.Path
) -> int | None:
    """The member index `member` names in a workdir of a population of `size` (None for a solo model);
    'best' is the best member at `step_dir`, the step `select` chose by the best over members."""
    if size == 1:
        if member not in (None, 'best', 0, '0'):
            raise ValueError(f'--member {member}: {path} holds one model, not a population')
        return None
    if member in (None, 'best'):
        if select == 'latest':
            raise ValueError(
                f'{path} holds a population of {size}: --select latest needs --member 0..{size - 1}'
            )
        return _best_member(step_dir, select, size)
    try:
        index = int(member)
    except ValueError:
        expected = f"'best' or a member index 0..{size - 1}"
        raise ValueError(f'--member must be {expected}, found {member!r}') from None
    if not 0 <= index < size:
        raise ValueError(f'--member {index}: {path} holds members 0..{size - 1}')
    return index


def _best_member(step_dir: pathlib.Path, select: str, size: int) -> int:
    """The member whose own metric is the best at the step `step_dir`."""
    metric, larger_is_better = _SELECT_METRIC[select]
    manager = ocp.CheckpointManager(step_dir.parent.absolute())
    try:
        values = manager.metrics(int(step_dir.name)) or {}
    finally:
        manager.close()
    scored = {i: values.get(f'{metric}/{i}', math.nan) for i in range(size)}
    scored = {i: v for i, v in scored.items() if v is not None and math.isfinite(v)}
    if not scored:
        raise FileNotFoundError(f'step {step_dir.name} in {step_dir.parent} has no per-member {metric}')
    sign = 1 if larger_is_better else -1
    return max(scored, key=lambda i: (sign * scored[i], -i))


def ranking(results: list[dict]) -> dict[str, float] | None:
    """The metrics a step is saved with, from its validation results (one per member): val_loss and val_auc,
    the best over members, and for a population each member's own as val_loss/<i> and val_auc/<i>."""
    scored = [(i, r) for i, r in enumerate(results) if 'auc' in r]
    if not scored:
        return None
    metrics = {'val_loss': min(r['loss'] for _, r in scored), 'val_auc': max(r['auc'] for _, r in scored)}
    if len(results) > 1:
        for i, r in scored:
            metrics.update({f'val_loss/{i}': r['loss'], f'val_auc/{i}': r['auc']})
    return metrics


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


def _resolve(
    path: pathlib.Path, select: str, member: int | None = None
) -> tuple[pathlib.Path, pathlib.Path, str]:
    """(model.json, variables directory, how errors name it) for a model directory, a workdir, or a step
    directory; `member` chooses by that population member's own metric."""
    if not path.is_dir():
        raise FileNotFoundError(f'checkpoint {path} does not exist or is not a directory')
    if (path / MODEL_JSON).is_file() and (path / VARIABLES_DIR).is_dir():
        return path / MODEL_JSON, path / VARIABLES_DIR, f'model directory {path}'
    if (path / MODEL_JSON).is_file() and (path / CHECKPOINTS_DIR).is_dir():
        step = select_step(path / CHECKPOINTS_DIR, select, member)
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


def select_step(checkpoints_dir: str | pathlib.Path, select: str, member: int | None = None) -> int:
    """The step of a CheckpointManager directory that `select` names (by `member`'s own metric if given)."""
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
        if member is not None:
            metric = f'{metric}/{member}'
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
        metadata = guarded(where, items, lambda: checkpointer.metadata(variables_path).item_metadata)
        if metadata is None:  # orbax logs why (held back here) and returns nothing
            raise CheckpointError(
                f'{where}: {VARIABLES_DIR}/ is unreadable (orbax cannot read its tree metadata)'
            )
        metadata = metadata.tree
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata)
        variables = guarded(
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
    For a population of `members`, each member's best steps (by its val_loss/<i> and val_auc/<i>) are kept
    too, so that every member can always find its own best checkpoint.
    """

    def __init__(
        self, workdir: str | pathlib.Path, keep: int = 2, *, members: int = 1, read_only: bool = False
    ):
        if keep < 1:
            raise ValueError(f'keep_checkpoints must be at least 1, got {keep}')
        policy = ocp.checkpoint_managers
        keys = [''] + ([f'/{i}' for i in range(members)] if members > 1 else [])
        best = []
        for key in keys:  # a step without a member's metric ranks last for it
            best.append(
                policy.BestN(
                    get_metric_fn=lambda m, k=f'val_loss{key}': m.get(k, math.inf),
                    reverse=True,
                    n=1,
                    keep_checkpoints_without_metrics=False,
                )
            )
            best.append(
                policy.BestN(
                    get_metric_fn=lambda m, k=f'val_auc{key}': m.get(k, -math.inf),
                    reverse=False,
                    n=1,
                    keep_checkpoints_without_metrics=False,
                )
            )
        preservation = policy.AnyPreservationPolicy([policy.LatestN(n=keep), *best])
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
            self.directory, item_names=(VARIABLES_DIR, TRAIN_STATE_DIR), options=options
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
        restored = guarded(
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
