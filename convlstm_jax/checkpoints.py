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

MODEL_FORMAT = 'convlstm_jax.model/1'
MODEL_JSON = 'model.json'
VARIABLES_DIR = 'variables'
CHECKPOINTS_DIR = 'checkpoints'
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


def load_model(path: str | pathlib.Path, select: str = 'best_auc') -> tuple[dict[str, Any], dict[str, Any]]:
    """Returns (spec, variables) from a model directory, a training workdir or one step directory in it.

    For a training workdir `select` picks the step: 'best_auc' (highest val_auc), 'best_loss' (lowest
    val_loss) or 'latest'. Variables come back as numpy arrays, whatever devices they were saved from.
    """
    if select not in SELECTIONS:
        raise ValueError(f'unknown select {select!r}: expected one of {", ".join(SELECTIONS)}')
    spec_path, variables_path = _resolve(pathlib.Path(path), select)
    spec = read_spec(spec_path)
    return spec, _restore_numpy(variables_path)


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


def _resolve(path: pathlib.Path, select: str) -> tuple[pathlib.Path, pathlib.Path]:
    """(model.json, variables directory) for a model directory, a workdir, or a step directory."""
    if not path.is_dir():
        raise FileNotFoundError(f'checkpoint {path} does not exist or is not a directory')
    if (path / MODEL_JSON).is_file() and (path / VARIABLES_DIR).is_dir():
        return path / MODEL_JSON, path / VARIABLES_DIR
    if (path / MODEL_JSON).is_file() and (path / CHECKPOINTS_DIR).is_dir():
        step = select_step(path / CHECKPOINTS_DIR, select)
        return path / MODEL_JSON, path / CHECKPOINTS_DIR / str(step) / VARIABLES_DIR
    workdir_spec = path.parent.parent / MODEL_JSON
    if (path / VARIABLES_DIR).is_dir() and path.parent.name == CHECKPOINTS_DIR and workdir_spec.is_file():
        return workdir_spec, path / VARIABLES_DIR
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
            raise FileNotFoundError(f'no checkpoint with variables in {checkpoints_dir}')
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


def _restore_numpy(variables_path: pathlib.Path) -> dict[str, Any]:
    """Restores an orbax pytree as numpy arrays, independent of the devices that saved it."""
    checkpointer = ocp.PyTreeCheckpointer()
    try:
        metadata = checkpointer.metadata(variables_path.absolute()).item_metadata.tree
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata)
        variables = checkpointer.restore(
            variables_path.absolute(), args=ocp.args.PyTreeRestore(restore_args=restore_args)
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

    def __init__(self, workdir: str | pathlib.Path, keep: int = 2):
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
            create=True,
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
        """(variables, train_state) of `step`, shaped like the given templates (numpy arrays)."""
        variables, train_state = jax.tree.map(np.asarray, (variables, train_state))
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                **{
                    VARIABLES_DIR: ocp.args.StandardRestore(variables),
                    'train_state': ocp.args.StandardRestore(train_state),
                }
            ),
        )
        return restored[VARIABLES_DIR], restored['train_state']

    def wait_until_finished(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()


def write_spec(path: str | pathlib.Path, spec: dict[str, Any]) -> None:
    """Writes a model.json (a training workdir's, beside its checkpoints/)."""
    spec = {'format': MODEL_FORMAT, **{k: v for k, v in spec.items() if k != 'format'}}
    _check_spec(spec, pathlib.Path(path))
    io.write_json(path, spec, sort_keys=True)
