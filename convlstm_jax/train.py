"""Training: the pmapped train and eval steps, and `train_and_evaluate`, which checks a run, then starts it.

The 2021 recipe is reproduced step for step (tests/test_train.py checks three steps against tf_keras
`train_on_batch`): Adam with tf.keras's epsilon placement (optim.py), binary cross-entropy from logits with
per-class weights and tf.keras's reduction (sum of weighted per-sample losses / batch size), plus an L1L2
penalty on the kernels Keras regularizes (losses.py). The train step is `jax.pmap`ped over the local devices
with `axis_name='batch'`; gradients are averaged, BatchNorm statistics are global (the model reduces them),
metrics are sums and counts reduced across devices and normalized on the host. The loop is loop.py; the
workdir's layout is workdir.py.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import pathlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from convlstm_jax import checkpoints, models, population
from convlstm_jax import workdir as workdir_layout
from convlstm_jax.data import dataset, device, pipeline
from convlstm_jax.loop import Loop, StopRequest
from convlstm_jax.losses import (
    bce_from_logits,
    check_regularized,
    class_weighted_loss,
    l1l2_penalty,
    penalized,
)
from convlstm_jax.metric_writer import MetricWriter
from convlstm_jax.optim import clip_gradients, make_optimizer
from convlstm_jax.parallel import AXIS, check_batch_size, replicate
from convlstm_jax.state import (
    TrainState,
    create_train_state,
    init_variables,
    state_from_items,
    state_items,
)


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    model,
    optimizer_at: Callable[[jax.Array], optax.GradientTransformation],
    clip_global_norm: float,
    regularized: Sequence[str],
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One step of one model on this device's part of the global batch; call it through
    `jax.pmap(axis_name=AXIS)`, and for a population through `jax.vmap` over the member axis inside it.

    The model's hyper-parameters come from `state.hparams` (population.hparams): the learning rate
    (`optimizer_at(rate)` builds the Adam), the class weights, the L1/L2 factors (when `regularized` names
    kernels) and, where members set them, the dropout rates.

    Each device normalizes its weighted loss by its own batch b = B/D, so the mean over devices is tf.keras's
    loss on the global batch B, and the pmean of the gradients is its gradient. The penalty is added on every
    device, so its mean is the penalty itself.

    A population member whose loss or gradients are not finite is frozen (`state.frozen`): it keeps its last
    good parameters, BatchNorm statistics and optimizer state, and its later updates are dropped.
    """
    clips, labels = batch['clips'], batch['labels'].astype(jnp.float32)
    hparams = state.hparams
    local_batch = labels.shape[0]
    dropout_rng = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), lax.axis_index(AXIS))
    rates = {name: hparams[name] for name in ('dropout', 'recurrent_dropout') if name in hparams}
    member_model = model.clone(**rates) if rates else model

    def loss_fn(params):
        logits, updates = member_model.apply(
            {'params': params, 'batch_stats': state.batch_stats},
            clips,
            train=True,
            mutable=['batch_stats'],
            rngs={'dropout': dropout_rng},
        )
        loss = class_weighted_loss(logits, labels, hparams['class_weights'], local_batch)
        if regularized:
            loss += l1l2_penalty(params, hparams['l1'], hparams['l2'], regularized)
        return loss, (logits, updates.get('batch_stats', {}))

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads = clip_gradients(lax.pmean(grads, AXIS), clip_global_norm)
    updates, opt_state = optimizer_at(hparams['learning_rate']).update(grads, state.opt_state, state.params)
    new_state = state.replace(
        params=optax.apply_updates(state.params, updates),
        batch_stats=batch_stats,
        opt_state=opt_state,
        step=state.step + 1,
    )
    mean_loss = lax.pmean(loss, AXIS)
    if state.frozen is not None:
        finite_grads = jnp.all(jnp.array([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
        healthy = ~state.frozen & jnp.isfinite(mean_loss) & finite_grads
        kept = lambda new, old: jnp.where(healthy, new, old)  # noqa: E731
        new_state = new_state.replace(
            params=jax.tree.map(kept, new_state.params, state.params),
            batch_stats=jax.tree.map(kept, new_state.batch_stats, state.batch_stats),
            opt_state=jax.tree.map(kept, new_state.opt_state, state.opt_state),
            frozen=~healthy,
        )
    step_metrics = {
        'loss': mean_loss,  # the objective: weighted BCE + penalty, as tf.keras reports it
        'bce_sum': lax.psum(jnp.sum(bce_from_logits(logits, labels)), AXIS),
        'correct': lax.psum(jnp.sum((logits >= 0) == (labels > 0.5)), AXIS),
        'count': lax.psum(jnp.float32(local_batch), AXIS),
    }
    if state.frozen is not None:
        step_metrics['frozen'] = new_state.frozen
    return new_state, step_metrics


def eval_step(state: TrainState, batch: dict[str, jax.Array], *, model) -> dict[str, jax.Array]:
    """Logits of this device's part of an eval batch, gathered from every device (all processes included) so
    that each device holds the whole global batch: (global devices, b), for a population (global devices,
    members, b)."""

    def logits_of(variables):
        return model.apply(variables, batch['clips'], train=False)

    members = state.frozen is not None
    logits = jax.vmap(logits_of)(state.variables) if members else logits_of(state.variables)
    return lax.all_gather({'logits': logits, 'mask': batch['mask'], 'index': batch['index']}, AXIS)


def make_train_step(config, devices=None, frames: jax.Array | None = None, total_steps: int = 0) -> Callable:
    """The pmapped train step: (replicated state, sharded batch) → (state, metrics); for a population the
    step is vmapped over the member axis of the state, the batch shared.

    With `frames` (the device pipeline's placed split, `device.place_splits`), the batch holds 'target' and
    'flip' in place of 'clips', and the step cuts the clips from `frames`, passed to it as an argument.
    `total_steps` is the run's length, which a decaying learning-rate schedule needs.
    """
    step = functools.partial(
        train_step,
        model=models.build_model(config.model, axis_name=AXIS),
        optimizer_at=functools.partial(make_optimizer, config, total_steps=total_steps),
        clip_global_norm=float(config.clip_global_norm),
        regularized=tuple(config.regularized_kernels) if penalized(config) else (),
    )
    if population.is_population(config):
        step = jax.vmap(step, in_axes=(0, None))
    if frames is None:  # the host pipelines: the step as it is, no extra argument
        return jax.pmap(step, axis_name=AXIS, donate_argnums=(0,), devices=devices)
    return _with_frames(
        jax.pmap(_cutting(step, config), axis_name=AXIS, donate_argnums=(0,), devices=devices), frames
    )


def make_eval_step(config, devices=None, frames: jax.Array | None = None) -> Callable:
    """The pmapped eval step: (replicated state, sharded batch) → gathered logits; `frames` as in training."""
    step = functools.partial(eval_step, model=models.build_model(config.model))
    if frames is None:
        return jax.pmap(step, axis_name=AXIS, devices=devices)
    return _with_frames(jax.pmap(_cutting(step, config), axis_name=AXIS, devices=devices), frames)


def _cutting(step: Callable, config) -> Callable:
    """`step(state, batch)` as `(state, frames, batch)`: the clips cut from this device's frames first."""
    cut = functools.partial(
        device.with_clips, time_steps=config.data.time_steps, frames_per_step=config.data.frames_per_step
    )

    def step_with_frames(state, frames, batch):
        return step(state, cut(frames, batch))

    return step_with_frames


def _with_frames(p_step: Callable, frames: jax.Array) -> Callable:
    """The pmapped `(state, frames, batch)` called as `(state, batch)`: the frames are bound here, on the
    host, so they stay an argument of the compiled program (a constant closed over would be baked in)."""

    def call(state, batch):
        return p_step(state, frames, batch)

    return call


# --------------------------------------------------------------------------------------------------
# Checks, all before anything is written


@dataclasses.dataclass
class _Start:
    """What the checks found: how the run starts, and what it needs."""

    state: TrainState
    how: str
    broken: list[tuple[int, checkpoints.CheckpointError]]  # unreadable steps newer than the resumed one
    spec: dict[str, Any]
    splits: dict
    steps_per_epoch: int
    frames: dict[str, jax.Array]  # the device pipeline's splits on the local devices; empty for the others


def check_config_values(config) -> None:
    """Values the loop cannot run with, named in one line."""
    rules = [
        ('num_epochs', config.num_epochs >= 1, 'at least 1'),
        ('log_every_steps', config.log_every_steps >= 1, 'at least 1'),
        ('eval_every_steps', config.eval_every_steps >= 0, '0 (off) or more'),
        ('checkpoint_every_steps', config.checkpoint_every_steps >= 0, '0 (off) or more'),
        (
            'checkpoint_every_minutes',
            math.isfinite(config.checkpoint_every_minutes) and config.checkpoint_every_minutes >= 0,
            '0 (off) or a positive number',
        ),
        ('keep_checkpoints', config.keep_checkpoints >= 1, 'at least 1'),
        ('learning_rate', config.learning_rate > 0, 'positive'),
    ]
    for name, ok, expected in rules:
        if not ok:
            raise ValueError(f'config {name} must be {expected}, got {config[name]!r}')


def _check_and_plan(config, workdir: pathlib.Path, shown: str) -> _Start:
    """Every check that can fail, in the order a user would fix them; reads, never writes."""
    check_config_values(config)
    check_batch_size(config.batch_size, jax.device_count())
    check_batch_size(config.eval_batch_size, jax.device_count(), 'eval_batch_size')
    spec = workdir_layout.model_spec(config)
    if (workdir / workdir_layout.MODEL_JSON).is_file():
        found = checkpoints.read_spec(workdir / workdir_layout.MODEL_JSON)
        workdir_layout.check_same_architecture(found, spec, f'workdir {shown}')
    saved = workdir_layout.read_config(workdir)
    if saved is not None:
        workdir_layout.check_same_run(shown, saved, config)

    splits = dataset.load_splits(config.data)
    train_split = splits['train']
    steps_per_epoch = config.steps_per_epoch
    if steps_per_epoch <= 0:
        steps_per_epoch = pipeline.steps_per_epoch(train_split, config.batch_size)
    if steps_per_epoch <= 0:
        raise ValueError(
            f'the training split has {len(train_split.samples)} samples, fewer than one batch of '
            f'{config.batch_size}'
        )
    hparams = population.hparams(config, train_split.labels[train_split.samples])

    state, how, broken = _starting_state(config, workdir, shown, spec, hparams)
    check_regularized(config, state.params)
    frames = {}
    if config.data.pipeline == 'device':  # last: the memory check, then the frames placed (nothing written)
        used = {name: splits[name] for name in ('train', 'validation')}
        frames = device.place_splits(used, jax.local_devices(), reserve_bytes=model_bytes(state))
    return _Start(state, how, broken, spec, splits, steps_per_epoch, frames)


def model_bytes(state: TrainState) -> int:
    """What the model holds on each device between steps, plus one gradient: the device pipeline reserves it
    beside the frames (activations are left to its margin)."""
    leaves = jax.tree.leaves((state.params, state.batch_stats, state.opt_state, state.params))
    return int(sum(np.size(x) * np.dtype(x.dtype).itemsize for x in leaves))


def _starting_state(config, workdir: pathlib.Path, shown: str, spec: dict, hparams):
    """The state to start from: the workdir's newest readable checkpoint, `init_from`, or a fresh
    initialization; with the unreadable steps newer than the one resumed."""
    if (workdir / workdir_layout.CHECKPOINTS_DIR).is_dir():
        reader = checkpoints.TrainingCheckpoints(
            workdir, keep=config.keep_checkpoints, members=population.size(config), read_only=True
        )
        try:
            steps = sorted(reader.all_steps(), reverse=True)
            broken = []
            shapes = init_variables(config, 0)
            template = _initial_state(config, hparams, lambda _: shapes)
            for step in steps:
                try:
                    variables, train_state = reader.restore(step, *state_items(template))
                except checkpoints.CheckpointError as e:
                    broken.append((step, e))
                    continue
                state = state_from_items(variables, train_state, hparams)
                return state, f'resumed from step {step}', broken
        finally:
            reader.close()
        if broken:
            raise checkpoints.CheckpointError(
                f'no readable checkpoint in workdir {shown}, the newest: {broken[0][1]}; move '
                f'{workdir_layout.CHECKPOINTS_DIR}/ away to start afresh'
            )
    if config.init_from:
        found, variables = checkpoints.load_model(config.init_from)
        workdir_layout.check_same_architecture(
            found, spec, f'init_from {config.init_from}', 'another init_from'
        )
        template = init_variables(config, 0)
        variables = {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}
        if jax.tree.structure(variables) != jax.tree.structure(template):
            raise ValueError(
                f'init_from {config.init_from}: its variables do not match the model of the config'
            )
        state = _initial_state(config, hparams, lambda _: variables)
        return state, f'initialized from {config.init_from}', []

    return fresh_state(config, hparams), 'initialized randomly', []


def fresh_state(config, hparams) -> TrainState:
    """A random initialization: member i (a solo run's only model) from its init seed (population.py)."""

    def random_variables(init_rng):
        return init_variables(config, int(jax.random.randint(init_rng, [], 0, 2**31 - 1)))

    return _initial_state(config, hparams, random_variables)


def _initial_state(config, hparams, variables_of: Callable[[jax.Array], dict]) -> TrainState:
    """The step-0 state: member i (a solo run's only model) draws `variables_of(init_rng)` and its dropout
    key from its init seed (population.init_seeds); a population's members stacked on a leading axis."""
    members = []
    for seed in population.init_seeds(config):
        init_rng, state_rng = jax.random.split(jax.random.PRNGKey(seed))
        members.append(create_train_state(config, variables_of(init_rng), np.asarray(state_rng), None))
    if not population.is_population(config):
        return members[0].replace(hparams=hparams)
    return population.stack(members).replace(hparams=hparams, frozen=np.zeros(len(members), bool))


# --------------------------------------------------------------------------------------------------
# The run


def train_and_evaluate(
    config, workdir: str | pathlib.Path, *, devices_note: str | None = None
) -> dict[str, Any]:
    """Trains per `config` in `workdir` (resuming from its latest checkpoint) and returns a summary.

    Every check that can fail (config values, batch sizes, the workdir's architecture and config, the data,
    the class weights, the starting checkpoint, and for data.pipeline='device' whether the frames fit on the
    devices) runs before the workdir is created or anything is written.
    `devices_note` replaces "N device(s)" in the first line (e.g. '2 CPU devices (one per core)').
    """
    shown = str(workdir)
    workdir = pathlib.Path(workdir).absolute()
    is_writer = jax.process_index() == 0
    start = _check_and_plan(config, workdir, shown)
    previous_devices = workdir_layout.recorded_device_count(workdir)

    # Checks passed: from here on the workdir is written.
    if is_writer:
        workdir.mkdir(parents=True, exist_ok=True)
        workdir_layout.write_config(workdir, config)
        checkpoints.write_spec(workdir / workdir_layout.MODEL_JSON, start.spec)
        workdir_layout.write_summary(workdir, {'workdir': str(workdir), 'device_count': jax.device_count()})
        _move_broken_aside(workdir, start)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices('convlstm_jax: workdir ready')
    start_step = int(np.max(start.state.step))  # every member counts the same steps
    if is_writer:
        print(_first_line(config, start, shown, devices_note), flush=True)
        if start_step and previous_devices and previous_devices != jax.device_count():
            _warn(
                f'workdir {shown} trained on {previous_devices} device(s) so far and goes on with '
                f'{jax.device_count()}: its numbers will differ from then on (rounding in the reductions)'
            )

    manager = checkpoints.TrainingCheckpoints(
        workdir, keep=config.keep_checkpoints, members=population.size(config)
    )
    writer = MetricWriter(workdir, enabled=is_writer)
    try:
        state = replicate(start.state, jax.local_devices())
        total_steps = config.num_epochs * start.steps_per_epoch
        p_train_step = make_train_step(config, frames=start.frames.get('train'), total_steps=total_steps)
        p_eval_step = make_eval_step(config, frames=start.frames.get('validation'))
        loop = Loop(
            config,
            workdir,
            manager,
            writer,
            p_train_step,
            p_eval_step,
            start.splits['validation'],
            start.steps_per_epoch,
        )
        with StopRequest() as stop:
            state, stopped = loop.run(state, start_step, total_steps, stop, start.splits['train'])
        summary = loop.summary(start_step, stopped)
    finally:
        manager.close()
        writer.close()
    if is_writer:
        workdir_layout.write_summary(workdir, summary)
    return summary


def _first_line(config, start: _Start, shown: str, devices_note: str | None) -> str:
    """'workdir runs/x: initialized randomly; 66,849 parameters; 2 CPU devices × 4 clips; …'."""
    members = population.size(config)
    one_model = population.take(start.state.params, 0) if members > 1 else start.state.params
    num_params = sum(int(np.size(x)) for x in jax.tree.leaves(one_model))
    devices = devices_note or f'{jax.device_count()} device(s)'
    weights = np.asarray(start.state.hparams['class_weights']).reshape(-1, 2)
    if members > 1:
        seeds = population.init_seeds(config)
        models_part = f'{members} members of {num_params:,} parameters (init seeds {seeds[0]}–{seeds[-1]})'
    else:
        models_part = f'{num_params:,} parameters'
    shown_weights = '; '.join(f'{w0:.4g}, {w1:.4g}' for w0, w1 in np.unique(weights, axis=0))
    return (
        f'workdir {shown}: {start.how}; {models_part}; {devices} × '
        f'{config.batch_size // jax.device_count()} clips; {start.steps_per_epoch} steps per epoch; '
        f'class weights {shown_weights}'
    )


def _move_broken_aside(workdir: pathlib.Path, start: _Start) -> None:
    """Unreadable steps newer than the resumed one leave the managed folder, so that the run can save those
    steps again and retention never keeps one of them over a readable step."""
    for step, error in start.broken:
        target = checkpoints.move_aside(workdir, step)
        _warn(f'{error}; {start.how}, the newest readable one; step {step} moved to {target}')


def _warn(line: str) -> None:
    print(f'warning: {line}', file=sys.stderr, flush=True)
