"""Training: the tf.keras Adam, the class-weighted loss, the pmapped train and eval steps, and the loop.

The 2021 recipe is reproduced step for step (tests/test_train.py checks three steps against tf_keras
`train_on_batch`): Adam with tf.keras's epsilon placement, binary cross-entropy from logits with per-class
weights and tf.keras's reduction (sum of weighted per-sample losses / batch size), plus an L1L2 penalty on the
kernels Keras regularizes. The train step is `jax.pmap`ped over the local devices with `axis_name='batch'`;
gradients are averaged, BatchNorm statistics are global (the model reduces them), metrics are sums and counts
reduced across devices and normalized on the host.
"""

from __future__ import annotations

import fnmatch
import functools
import logging
import math
import pathlib
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from convlstm_jax import checkpoints, distributed, io, metrics, models, progress
from convlstm_jax.data import dataset, pipeline
from convlstm_jax.data import labels as labels_lib
from convlstm_jax.metric_writer import MetricWriter
from convlstm_jax.parallel import AXIS, check_batch_size, replicate, unreplicate

PyTree = Any


# --------------------------------------------------------------------------------------------------
# Optimizer


class KerasAdamState(NamedTuple):
    count: jax.Array  # int32: updates applied so far (tf.keras `iterations`)
    mu: optax.Updates
    nu: optax.Updates


def keras_adam(learning_rate: float, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-7):
    """Adam exactly as tf.keras 2 applies it (OptimizerV2 and the 2.11+ optimizer agree).

    lr_t = lr·sqrt(1 − β2^t) / (1 − β1^t);  m += (g − m)(1 − β1);  v += (g² − v)(1 − β2);
    w −= (m·lr_t) / (sqrt(v) + ε). ε is added to sqrt(v) *before* the bias correction is undone, unlike
    `optax.adam`, so with ε = 1e-7 the two differ wherever sqrt(v) is small. Arithmetic in float32 like Keras.
    """

    def init_fn(params):
        return KerasAdamState(
            count=jnp.zeros([], jnp.int32),
            mu=jax.tree.map(jnp.zeros_like, params),
            nu=jax.tree.map(jnp.zeros_like, params),
        )

    def update_fn(grads, state, params=None):
        del params
        count = state.count + 1
        t = count.astype(jnp.float32)
        alpha = jnp.float32(learning_rate) * jnp.sqrt(1 - jnp.float32(b2) ** t) / (1 - jnp.float32(b1) ** t)
        mu = jax.tree.map(lambda m, g: m + (g - m) * jnp.float32(1 - b1), state.mu, grads)
        nu = jax.tree.map(lambda v, g: v + (g * g - v) * jnp.float32(1 - b2), state.nu, grads)
        updates = jax.tree.map(lambda m, v: -(m * alpha) / (jnp.sqrt(v) + jnp.float32(eps)), mu, nu)
        return updates, KerasAdamState(count, mu, nu)

    return optax.GradientTransformation(init_fn, update_fn)


# --------------------------------------------------------------------------------------------------
# Loss


def bce_from_logits(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-sample binary cross-entropy in TensorFlow's `sigmoid_cross_entropy_with_logits` form (what
    tf.keras computes for a sigmoid output): max(x, 0) − x·z + log(1 + exp(−|x|))."""
    return jax.nn.relu(logits) - logits * labels + jnp.log1p(jnp.exp(-jnp.abs(logits)))


def class_weighted_loss(
    logits: jax.Array, labels: jax.Array, class_weights: tuple[float, float], normalizer: int
) -> jax.Array:
    """Σ w[y]·BCE / normalizer; with normalizer = batch size this is tf.keras's SUM_OVER_BATCH_SIZE."""
    weights = jnp.where(labels > 0.5, jnp.float32(class_weights[1]), jnp.float32(class_weights[0]))
    return jnp.sum(weights * bce_from_logits(logits, labels)) / normalizer


def param_path(path: Sequence[Any]) -> str:
    """'convlstm_0/kernel' for a pytree key path."""
    return '/'.join(str(getattr(key, 'key', getattr(key, 'name', key))) for key in path)


def regularized_paths(params: PyTree, patterns: Sequence[str]) -> list[str]:
    """The '/'-joined parameter paths matching any glob pattern (e.g. 'convlstm_*/kernel')."""
    paths = [param_path(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    return [path for path in paths if any(fnmatch.fnmatchcase(path, pattern) for pattern in patterns)]


def l1l2_penalty(params: PyTree, l1: float, l2: float, patterns: Sequence[str]) -> jax.Array:
    """Keras's L1L2 regularizer summed over the matching kernels: l1·Σ|w| + l2·Σw²."""
    total = jnp.float32(0)
    if not (l1 or l2):
        return total
    for path, w in jax.tree_util.tree_flatten_with_path(params)[0]:
        if any(fnmatch.fnmatchcase(param_path(path), pattern) for pattern in patterns):
            if l1:
                total += jnp.float32(l1) * jnp.sum(jnp.abs(w))
            if l2:
                total += jnp.float32(l2) * jnp.sum(jnp.square(w))
    return total


def resolve_class_weights(setting: Any, train_labels: np.ndarray) -> tuple[float, float]:
    """(w0, w1) from the config: a pair, or 'auto' — the 2021 rule w0 = p, w1 = 1 − p with p the positive rate
    of the training samples."""
    if isinstance(setting, str):
        if setting != 'auto':
            raise ValueError(f"class_weights must be a pair (w0, w1) or 'auto', got {setting!r}")
        positive_rate = float(np.mean(train_labels))
        return positive_rate, 1.0 - positive_rate
    weights = tuple(float(w) for w in setting)
    if len(weights) != 2 or any(not math.isfinite(w) or w < 0 for w in weights):
        raise ValueError(
            f"class_weights must be two non-negative numbers (w0, w1) or 'auto', got {setting!r}"
        )
    return weights


# --------------------------------------------------------------------------------------------------
# State and steps


@flax.struct.dataclass
class TrainState:
    params: PyTree
    batch_stats: PyTree
    opt_state: KerasAdamState
    step: jax.Array  # int32 scalar: training steps done
    rng: jax.Array  # uint32 (2,) key; step s draws its dropout masks from fold_in(rng, s)

    @property
    def variables(self) -> dict[str, PyTree]:
        return {'params': self.params, 'batch_stats': self.batch_stats}


def state_items(state: TrainState) -> tuple[dict, dict]:
    """The two checkpoint items of a state: the model's variables, and what exact resumption adds."""
    train_state = {'opt_state': state.opt_state._asdict(), 'step': state.step, 'rng': state.rng}
    return state.variables, train_state


def state_from_items(variables: dict, train_state: dict) -> TrainState:
    return TrainState(
        params=variables['params'],
        batch_stats=variables.get('batch_stats', {}),
        opt_state=KerasAdamState(**train_state['opt_state']),
        step=train_state['step'],
        rng=train_state['rng'],
    )


def make_optimizer(config) -> optax.GradientTransformation:
    return keras_adam(config.learning_rate, config.adam_b1, config.adam_b2, config.adam_eps)


def input_shape(data_config) -> tuple[int, int, int, int]:
    """(T, H, W, C) of one clip."""
    return (data_config.time_steps, data_config.height, data_config.width, data_config.frames_per_step)


def init_variables(config, seed: int) -> dict[str, PyTree]:
    """Freshly initialized model variables (Keras initializers), as numpy arrays."""
    model = models.build_model(config.model)
    clips = jnp.zeros((1, *input_shape(config.data)), jnp.uint8)
    variables = model.init(jax.random.PRNGKey(seed), clips, train=False)
    variables = flax.core.unfreeze(variables)
    variables.setdefault('batch_stats', {})
    return jax.device_get(variables)


def create_train_state(config, variables: dict[str, PyTree], rng: jax.Array) -> TrainState:
    """A host (numpy) TrainState at step 0 from model variables."""
    params = variables['params']
    return jax.device_get(
        TrainState(
            params=params,
            batch_stats=variables.get('batch_stats', {}),
            opt_state=make_optimizer(config).init(params),
            step=jnp.zeros([], jnp.int32),
            rng=rng,
        )
    )


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    model,
    optimizer: optax.GradientTransformation,
    class_weights: tuple[float, float],
    l1: float,
    l2: float,
    regularized: Sequence[str],
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One step on this device's part of the global batch; call it through `jax.pmap(axis_name=AXIS)`.

    Each device normalizes its weighted loss by its own batch b = B/D, so the mean over devices is tf.keras's
    loss on the global batch B, and the pmean of the gradients is its gradient. The penalty is added on every
    device, so its mean is the penalty itself.
    """
    clips, labels = batch['clips'], batch['labels'].astype(jnp.float32)
    local_batch = labels.shape[0]
    dropout_rng = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), lax.axis_index(AXIS))

    def loss_fn(params):
        logits, updates = model.apply(
            {'params': params, 'batch_stats': state.batch_stats},
            clips,
            train=True,
            mutable=['batch_stats'],
            rngs={'dropout': dropout_rng},
        )
        loss = class_weighted_loss(logits, labels, class_weights, local_batch)
        loss += l1l2_penalty(params, l1, l2, regularized)
        return loss, (logits, updates.get('batch_stats', {}))

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads = lax.pmean(grads, AXIS)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    new_state = state.replace(
        params=optax.apply_updates(state.params, updates),
        batch_stats=batch_stats,
        opt_state=opt_state,
        step=state.step + 1,
    )
    step_metrics = {
        'loss': lax.pmean(loss, AXIS),  # the objective: weighted BCE + penalty, as tf.keras reports it
        'bce_sum': lax.psum(jnp.sum(bce_from_logits(logits, labels)), AXIS),
        'correct': lax.psum(jnp.sum((logits >= 0) == (labels > 0.5)), AXIS),
        'count': lax.psum(jnp.float32(local_batch), AXIS),
    }
    return new_state, step_metrics


def eval_step(state: TrainState, batch: dict[str, jax.Array], *, model) -> dict[str, jax.Array]:
    """Logits of this device's part of an eval batch, gathered from every device (all processes included) so
    that each device holds the whole global batch: (global devices, b)."""
    logits = model.apply(state.variables, batch['clips'], train=False)
    return lax.all_gather({'logits': logits, 'mask': batch['mask'], 'index': batch['index']}, AXIS)


def make_train_step(config, class_weights: tuple[float, float], devices=None) -> Callable:
    """The pmapped train step: (replicated state, sharded batch) → (state, metrics)."""
    step = functools.partial(
        train_step,
        model=models.build_model(config.model, axis_name=AXIS),
        optimizer=make_optimizer(config),
        class_weights=class_weights,
        l1=float(config.l1),
        l2=float(config.l2),
        regularized=tuple(config.regularized_kernels),
    )
    return jax.pmap(step, axis_name=AXIS, donate_argnums=(0,), devices=devices)


def make_eval_step(config, devices=None) -> Callable:
    step = functools.partial(eval_step, model=models.build_model(config.model))
    return jax.pmap(step, axis_name=AXIS, devices=devices)


# --------------------------------------------------------------------------------------------------
# Evaluation


def _pipeline_options(config) -> dict[str, Any]:
    """What training and evaluation batches share: this process's slice of each batch, and the clip layout."""
    return dict(
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        local_device_count=jax.local_device_count(),
        backend=config.data.pipeline,
        time_steps=config.data.time_steps,
        frames_per_step=config.data.frames_per_step,
    )


def evaluate(p_eval_step: Callable, state: TrainState, split, config) -> dict[str, float]:
    """Every sample of `split` once; metrics of the model and of the trivial ỹ baselines on those frames."""
    logits, index = [], []
    batches = pipeline.eval_batches(split, global_batch=config.eval_batch_size, **_pipeline_options(config))
    for batch in batches:
        out = jax.device_get(p_eval_step(state, batch))
        real = out['mask'][0].reshape(-1) > 0.5  # [0]: every local device holds the same gathered batch
        logits.append(out['logits'][0].reshape(-1)[real])
        index.append(out['index'][0].reshape(-1)[real])
    return eval_metrics(split, np.concatenate(index), np.concatenate(logits))


def eval_metrics(split, index: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """Validation metrics from the logits of the samples `index` of `split`."""
    labels = split.labels[index].astype(np.float64)
    probs = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    result = {
        'num_samples': int(index.size),
        'loss': metrics.binary_cross_entropy(labels, probs),
        'accuracy': metrics.accuracy(labels, probs),
    }
    if 0 < labels.sum() < labels.size:  # ROC metrics need both classes
        youden = metrics.youden(labels, probs)
        result.update(
            auc=metrics.roc_auc(labels, probs),
            auc_keras200=metrics.roc_auc_keras(labels, probs),
            youden_threshold=youden['threshold'],
            youden_tpr=youden['tpr'],
            youden_fpr=youden['fpr'],
        )
        for name, scores in labels_lib.trivial_baselines(split.y_tilde).items():
            result[f'baseline_auc/{name}'] = metrics.roc_auc(labels, scores[index])
    return result


# --------------------------------------------------------------------------------------------------
# Stopping on a signal


class StopRequest:
    """SIGTERM / SIGINT ask the loop to stop after the current step (clusters preempt jobs with SIGTERM).

    In a multi-process run the processes agree through a collective, so all stop at the same step.
    """

    def __init__(self):
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame) -> None:
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: the user means it
        self.signal_name = signal.Signals(signum).name
        logging.warning('%s received: stopping after this step and saving a checkpoint', self.signal_name)

    def agreed(self) -> bool:
        """True once any process has been asked to stop."""
        return distributed.should_stop(self.signal_name is not None)


# --------------------------------------------------------------------------------------------------
# The loop


def check_finite(tree: PyTree, what: str) -> None:
    bad = [
        param_path(p) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0] if not np.all(np.isfinite(x))
    ]
    if bad:
        raise FloatingPointError(f'{what} holds NaN or Inf in {", ".join(bad[:5])}')


def check_same_architecture(
    found: dict, expected: dict, where: str, remedy: str = 'another --workdir'
) -> None:
    """Parameters of `found` (a model.json) fit the model `expected` (from the config), or a clear error."""
    keys = models.PARAMETER_FIELDS

    def describe(spec):
        fields = {key: spec['model'].get(key) for key in keys}
        fields['filters'] = [int(f) for f in np.atleast_1d(fields['filters'])]
        fields['kernel_size'] = list(np.broadcast_to(fields['kernel_size'], (2,)).tolist())  # 3 ≡ [3, 3]
        fields['frames_per_step'] = spec['input'].get('frames_per_step')
        return fields

    if describe(found) != describe(expected):
        raise ValueError(
            f'{where} holds a checkpoint of another architecture: {_fmt(describe(found))}; the config asks '
            f'for {_fmt(describe(expected))}. Use {remedy}, or a config that matches.'
        )


def _fmt(fields: dict) -> str:
    return ', '.join(f'{key}={value}' for key, value in fields.items())


class _TrainMetrics:
    """Per-step metrics kept on device until read, so reading never waits for the step just dispatched."""

    def __init__(self):
        self._pending: list[tuple[int, dict]] = []
        self._sums: dict[str, float] = {}
        self._steps = 0
        self.last_loss = math.nan

    def add(self, step: int, step_metrics: dict) -> None:
        self._pending.append((step, step_metrics))

    def read(self, keep_last: int = 0) -> None:
        """Fetches all but the last `keep_last` pending steps; a non-finite loss raises FloatingPointError."""
        ready = self._pending[: len(self._pending) - keep_last]
        self._pending = self._pending[len(ready) :]
        for step, step_metrics in ready:
            values = {key: float(value[0]) for key, value in jax.device_get(step_metrics).items()}
            if not math.isfinite(values['loss']):
                raise FloatingPointError(f'the training loss is {values["loss"]} at step {step}')
            self.last_loss = values['loss']
            self._steps += 1
            for key, value in values.items():
                self._sums[key] = self._sums.get(key, 0.0) + value

    def summary(self) -> dict[str, float]:
        """Means since the last summary (scenic style: sums and counts, normalized on the host)."""
        self.read()
        sums, steps = self._sums, self._steps
        self._sums, self._steps = {}, 0
        if not steps:
            return {}
        return {
            'loss': sums['loss'] / steps,
            'bce': sums['bce_sum'] / sums['count'],
            'accuracy': sums['correct'] / sums['count'],
        }


def model_spec(config) -> dict[str, Any]:
    """The workdir's model.json: what every command needs to rebuild the model and feed it."""
    source = {'trained_by': 'convlstm_jax.train', 'data_source': config.data.source}
    if config.init_from:
        source['init_from'] = str(config.init_from)
    return {
        'format': checkpoints.MODEL_FORMAT,
        'model': checkpoints.model_fields(config.model),
        'input': checkpoints.input_contract(config.data),
        'source': source,
    }


def _starting_state(config, workdir: pathlib.Path, manager, spec: dict):
    """The state to start from: the workdir's latest checkpoint, `init_from`, or a fresh initialization."""
    rng = jax.random.PRNGKey(config.seed)
    init_rng, state_rng = jax.random.split(rng)
    latest = manager.latest_step()
    if latest is not None:
        found = checkpoints.read_spec(workdir / checkpoints.MODEL_JSON)
        check_same_architecture(found, spec, f'workdir {workdir}')
        template = create_train_state(config, init_variables(config, 0), np.asarray(state_rng))
        variables, train_state = manager.restore(latest, *state_items(template))
        return state_from_items(variables, train_state), f'resumed from step {latest}'
    if config.init_from:
        found, variables = checkpoints.load_model(config.init_from)
        check_same_architecture(found, spec, f'init_from {config.init_from}', 'another init_from')
        template = init_variables(config, 0)
        variables = {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}
        if jax.tree.structure(variables) != jax.tree.structure(template):
            raise ValueError(
                f'init_from {config.init_from}: its variables do not match the model of the config'
            )
        state = create_train_state(config, variables, np.asarray(state_rng))
        return state, f'initialized from {config.init_from}'
    variables = init_variables(config, int(jax.random.randint(init_rng, [], 0, 2**31 - 1)))
    return create_train_state(config, variables, np.asarray(state_rng)), 'initialized randomly'


def _check_regularized(config, params: PyTree) -> None:
    """A penalty that would silently apply to nothing is a configuration error."""
    if (config.l1 or config.l2) and not regularized_paths(params, config.regularized_kernels):
        paths = [param_path(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
        raise ValueError(
            f'regularized_kernels {tuple(config.regularized_kernels)} match no parameter; the parameters are '
            f'{", ".join(paths)}'
        )


def train_and_evaluate(
    config, workdir: str | pathlib.Path, *, devices_note: str | None = None
) -> dict[str, Any]:
    """Trains per `config` in `workdir` (resuming from its latest checkpoint) and returns a summary.
    `devices_note` (e.g. '2 CPU devices (one per core)') leads the first printed line."""
    workdir = pathlib.Path(workdir).absolute()
    is_writer = jax.process_index() == 0
    check_batch_size(config.batch_size, jax.device_count())
    check_batch_size(config.eval_batch_size, jax.device_count(), 'eval_batch_size')

    splits = dataset.load_splits(config.data)
    train_split, validation = splits['train'], splits['validation']
    steps_per_epoch = config.steps_per_epoch
    if steps_per_epoch <= 0:
        steps_per_epoch = pipeline.steps_per_epoch(train_split, config.batch_size)
    if steps_per_epoch <= 0:
        raise ValueError(
            f'the training split has {len(train_split.samples)} samples, fewer than one batch of '
            f'{config.batch_size}'
        )
    total_steps = config.num_epochs * steps_per_epoch
    class_weights = resolve_class_weights(config.class_weights, train_split.labels[train_split.samples])

    spec = model_spec(config)
    manager = checkpoints.TrainingCheckpoints(workdir, keep=config.keep_checkpoints)
    writer = MetricWriter(workdir, enabled=is_writer)
    try:
        host_state, how = _starting_state(config, workdir, manager, spec)
        _check_regularized(config, host_state.params)
        if is_writer:
            checkpoints.write_spec(workdir / checkpoints.MODEL_JSON, spec)
            io.write_json(workdir / 'config.json', io.jsonable(config.to_dict()), sort_keys=True)
        start_step = int(host_state.step)
        num_params = sum(int(np.size(x)) for x in jax.tree.leaves(host_state.params))
        if is_writer:
            lead = f'{devices_note}; ' if devices_note else ''
            print(
                f'{lead}{how}; {num_params:,} parameters; {jax.device_count()} device(s) × '
                f'{config.batch_size // jax.device_count()} clips; {steps_per_epoch} steps per epoch; '
                f'class weights {class_weights[0]:.4g}, {class_weights[1]:.4g}',
                flush=True,
            )
        state = replicate(host_state, jax.local_devices())
        p_train_step = make_train_step(config, class_weights)
        p_eval_step = make_eval_step(config)

        loop = _Loop(config, workdir, manager, writer, p_train_step, p_eval_step, validation, steps_per_epoch)
        with StopRequest() as stop:
            state, stopped = loop.run(state, start_step, total_steps, stop, train_split)
        summary = loop.summary(start_step, stopped)
    finally:
        manager.close()
        writer.close()
    if is_writer:
        io.write_json(workdir / 'summary.json', summary, sort_keys=True)
    return summary


class _Loop:
    """The epochs: train steps, logging, evaluation, checkpoints."""

    def __init__(
        self, config, workdir, manager, writer, p_train_step, p_eval_step, validation, steps_per_epoch
    ):
        self.config, self.workdir, self.manager, self.writer = config, workdir, manager, writer
        self.p_train_step, self.p_eval_step = p_train_step, p_eval_step
        self.validation, self.steps_per_epoch = validation, steps_per_epoch
        self.evaluations: list[dict] = []
        self.train_seconds = 0.0
        self.clips_trained = 0
        self.wall_start = time.time()
        self.first_step = 0

    def run(self, state, step: int, total_steps: int, stop: StopRequest, train_split):
        """Trains from `step` to `total_steps`; returns (state, the signal that stopped it or None)."""
        train_metrics = _TrainMetrics()
        self.first_step = step
        try:
            for epoch in range(step // self.steps_per_epoch, self.config.num_epochs):
                state, step, stopped = self._run_epoch(
                    state, step, epoch, total_steps, stop, train_split, train_metrics
                )
                if stopped:
                    return state, stopped
        except FloatingPointError as e:
            raise self._diverged(e) from None
        return state, None

    def _run_epoch(self, state, step, epoch, total_steps, stop, train_split, train_metrics):
        config = self.config
        first = step - epoch * self.steps_per_epoch
        batches = pipeline.train_batches(
            train_split,
            global_batch=config.batch_size,
            seed=config.seed,
            epoch=epoch,
            start_step=first,
            num_steps=self.steps_per_epoch - first,
            flips=config.data.flips,
            **_pipeline_options(config),
        )
        bar = progress.bar(
            total=self.steps_per_epoch,
            initial=first,
            desc=f'epoch {epoch + 1}/{config.num_epochs}',
            unit='step',
            disable=jax.process_index() != 0,
            dynamic_ncols=True,
        )
        with bar:
            tick = time.perf_counter()
            for batch in _device_batches(batches):
                state, step_metrics = self.p_train_step(state, batch)
                step += 1
                train_metrics.add(step, step_metrics)
                train_metrics.read(keep_last=1)  # the previous step: done by now, or nearly
                now = time.perf_counter()
                if step > self.first_step + 1:  # the first step of a run includes compilation
                    self.train_seconds += now - tick
                    self.clips_trained += config.batch_size
                tick = now
                bar.update(1)
                if math.isfinite(train_metrics.last_loss):  # known one step late
                    bar.set_postfix(
                        loss=f'{train_metrics.last_loss:.4f}', clips_per_s=f'{self._clips_per_s():.1f}'
                    )
                if step % config.log_every_steps == 0 or step == total_steps:
                    self._log_train(step, train_metrics)
                end_of_epoch = step % self.steps_per_epoch == 0
                if end_of_epoch or (config.eval_every_steps and step % config.eval_every_steps == 0):
                    if end_of_epoch:
                        bar.close()
                    self._evaluate_and_save(state, step, train_metrics)
                    tick = time.perf_counter()
                elif config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0:
                    self._save(state, step, None, train_metrics)
                if stop.agreed():  # after an evaluation that was due, so that a resumed run never lacks it
                    bar.close()
                    self._save(state, step, None, train_metrics)  # a no-op if this step is saved already
                    return state, step, stop.signal_name or 'a stop request from another process'
        return state, step, None

    def _clips_per_s(self) -> float:
        return self.clips_trained / self.train_seconds if self.train_seconds else 0.0

    def _diverged(self, error: FloatingPointError) -> FloatingPointError:
        self.manager.wait_until_finished()
        latest = self.manager.latest_step()
        kept = (
            f'the last good checkpoint is step {latest} in {self.workdir}'
            if latest
            else 'no checkpoint was saved'
        )
        return FloatingPointError(
            f'{error}: training diverged; {kept}. Try a lower learning_rate or check the data.'
        )

    def _log_train(self, step: int, train_metrics: _TrainMetrics) -> None:
        record = train_metrics.summary()
        if record and self.train_seconds:
            record['clips_per_s'] = self._clips_per_s()
        if record:
            self.writer.write({'step': step, 'split': 'train', **record})

    def _evaluate_and_save(self, state, step: int, train_metrics: _TrainMetrics) -> None:
        start = time.perf_counter()
        result = evaluate(self.p_eval_step, state, self.validation, self.config)
        result['eval_seconds'] = time.perf_counter() - start
        self.evaluations.append({'step': step, **result})
        self.writer.write({'step': step, 'split': 'validation', **result})
        if jax.process_index() == 0:
            progress.write(_eval_line(step, result))
        self._save(state, step, result, train_metrics)

    def _save(self, state, step: int, result: dict | None, train_metrics: _TrainMetrics) -> None:
        """Saves a checkpoint once the losses up to `step` are known to be finite."""
        train_metrics.read()
        host_state = unreplicate(state)
        check_finite(host_state.variables, f'the model at step {step}')
        ranking = None
        if result is not None and 'auc' in result:
            ranking = {'val_loss': result['loss'], 'val_auc': result['auc']}
        self.manager.save(step, *state_items(host_state), ranking)

    def summary(self, start_step: int, stopped: str | None) -> dict[str, Any]:
        self.manager.wait_until_finished()
        summary: dict[str, Any] = {
            'workdir': str(self.workdir),
            'steps': self.manager.latest_step(),
            'steps_this_run': (self.manager.latest_step() or 0) - start_step,
            'stopped_by': stopped,
            'wall_seconds': time.time() - self.wall_start,
            'train_clips_per_s': self._clips_per_s(),
        }
        scored = [e for e in self.evaluations if 'auc' in e]
        if scored:
            best_auc = max(scored, key=lambda e: e['auc'])
            best_loss = min(scored, key=lambda e: e['loss'])
            summary['best_auc'] = {'step': best_auc['step'], 'auc': best_auc['auc']}
            summary['best_loss'] = {'step': best_loss['step'], 'loss': best_loss['loss']}
            summary['last_validation'] = scored[-1]
        return summary


def _train_inputs(batch: dict) -> dict:
    return {'clips': batch['clips'], 'labels': batch['labels']}


def _device_batches(batches: Iterator[dict]) -> Iterator[dict]:
    """Batches already on the local devices, two ahead, so host→device copies overlap the steps."""
    return pipeline.prefetch_to_devices((_train_inputs(b) for b in batches), size=2)


def _eval_line(step: int, result: dict) -> str:
    parts = [f'step {step}: validation loss {result["loss"]:.4f}']
    if 'auc' in result:
        parts.append(f'AUC {result["auc"]:.4f} (Keras 200-bucket {result["auc_keras200"]:.4f})')
        baselines = [
            f'{k.split("/", 1)[1]} {v:.4f}' for k, v in result.items() if k.startswith('baseline_auc/')
        ]
        parts.append('baselines ' + ', '.join(baselines))
    parts.append(f'accuracy {result["accuracy"]:.4f}')
    return '; '.join(parts)
