"""The training loop: epochs of pmapped steps, logging, validation, checkpoints (at evaluations, every
`checkpoint_every_steps`, every `checkpoint_every_minutes` and on a stop signal), and the run's summary."""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from convlstm_jax import checkpoints, distributed, metrics, population, progress
from convlstm_jax.data import labels as labels_lib
from convlstm_jax.data import pipeline
from convlstm_jax.losses import param_path
from convlstm_jax.parallel import unreplicate
from convlstm_jax.state import TrainState, state_items

PyTree = Any


def pipeline_options(config) -> dict[str, Any]:
    """What training and evaluation batches share: this process's slice of each batch, and the clip layout."""
    return dict(
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        local_device_count=jax.local_device_count(),
        backend=config.data.pipeline,
        time_steps=config.data.time_steps,
        frames_per_step=config.data.frames_per_step,
    )


def validate(p_eval_step: Callable, state: TrainState, split, config) -> list[dict[str, float]]:
    """Every sample of `split` once; metrics of each model (one, or each population member, on the same
    frames) and of the trivial ỹ baselines on those frames."""
    logits, index = [], []
    batches = pipeline.eval_batches(split, global_batch=config.eval_batch_size, **pipeline_options(config))
    for batch in batches:
        out = jax.device_get(p_eval_step(state, batch))
        real = out['mask'][0].reshape(-1) > 0.5  # [0]: every local device holds the same gathered batch
        # (devices, [members,] b) → (members, devices·b)
        gathered = out['logits'][0]
        member_logits = np.moveaxis(gathered, -2, 0) if gathered.ndim == 3 else gathered[None]
        logits.append(member_logits.reshape(member_logits.shape[0], -1)[:, real])
        index.append(out['index'][0].reshape(-1)[real])
    index_all, logits_all = np.concatenate(index), np.concatenate(logits, axis=1)
    return [eval_metrics(split, index_all, member_logits) for member_logits in logits_all]


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


class CheckpointTimer:
    """`checkpoint_every_minutes` of training since the last save (0: never), so that a hard kill loses at
    most that. Due on every process if due on any, so that all enter the collective save at the same step."""

    def __init__(self, minutes: float):
        self.seconds = 60.0 * float(minutes)
        self.restart()

    def restart(self) -> None:
        self._since = time.monotonic()

    def due(self) -> bool:
        if not self.seconds:  # the same config everywhere: no process calls the collective
            return False
        # should_stop is the any-process vote that stopping uses; here it votes on the clock.
        return distributed.should_stop(time.monotonic() - self._since >= self.seconds)


def check_finite(tree: PyTree, what: str) -> None:
    bad = [
        param_path(p) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0] if not np.all(np.isfinite(x))
    ]
    if bad:
        raise FloatingPointError(f'{what} holds NaN or Inf in {", ".join(bad[:5])}')


class TrainMetrics:
    """Per-step metrics kept on device until read, so reading never waits for the step just dispatched.

    Sums are kept per member (one for a solo run). A solo run's non-finite loss raises FloatingPointError; a
    population member's only freezes that member (train.train_step), and is reported once, by `newly_frozen`;
    the error comes when every member is frozen.
    """

    def __init__(self, members: int = 1):
        self._pending: list[tuple[int, dict]] = []
        self._sums: dict[str, np.ndarray] = {}
        self._steps = np.zeros(members)
        self.last_loss = np.full(members, math.nan)
        self.frozen = np.zeros(members, bool)
        self.newly_frozen: list[tuple[int, int, float]] = []  # (member, step, loss), until taken

    def add(self, step: int, step_metrics: dict) -> None:
        self._pending.append((step, step_metrics))

    def read(self, keep_last: int = 0) -> None:
        """Fetches all but the last `keep_last` pending steps."""
        ready = self._pending[: len(self._pending) - keep_last]
        self._pending = self._pending[len(ready) :]
        for step, step_metrics in ready:
            values = {key: np.atleast_1d(value[0]) for key, value in jax.device_get(step_metrics).items()}
            loss = values['loss'].astype(np.float64)
            frozen = values.pop('frozen', ~np.isfinite(loss))
            if frozen.size == 1 and frozen[0]:
                raise FloatingPointError(f'the training loss is {loss[0]} at step {step}')
            for member in np.flatnonzero(frozen & ~self.frozen):
                self.newly_frozen.append((int(member), step, float(loss[member])))
            self.frozen |= frozen
            if self.frozen.all():
                raise FloatingPointError(f'every member has diverged (the last at step {step})')
            healthy = ~self.frozen
            self.last_loss = np.where(healthy, loss, np.nan)
            self._steps += healthy
            for key, value in values.items():
                self._sums[key] = self._sums.get(key, 0.0) + np.where(healthy, value, 0.0)

    def summary(self) -> list[dict[str, float]]:
        """Means since the last summary, one record per member with steps in it (scenic style: sums and
        counts, normalized on the host)."""
        self.read()
        sums, steps = self._sums, self._steps
        self._sums, self._steps = {}, np.zeros_like(self._steps)
        records = []
        for member in np.flatnonzero(steps):
            count = sums['count'][member]
            records.append(
                {
                    'member': int(member),
                    'loss': float(sums['loss'][member] / steps[member]),
                    'bce': float(sums['bce_sum'][member] / count),
                    'accuracy': float(sums['correct'][member] / count),
                }
            )
        return records


class Loop:
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
        self.timer = CheckpointTimer(config.checkpoint_every_minutes)
        self.members = population.size(config)
        self.frozen_at: dict[int, int] = {}  # member → the step whose update made it diverge

    def run(self, state, step: int, total_steps: int, stop: StopRequest, train_split):
        """Trains from `step` to `total_steps`; returns (state, the signal that stopped it or None)."""
        train_metrics = TrainMetrics(self.members)
        if self.members > 1:  # members frozen before a resume stay frozen, and are not reported again
            train_metrics.frozen = np.asarray(jax.device_get(state.frozen[0]), bool).copy()
        self.first_step = step
        self.timer.restart()
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
            **pipeline_options(config),
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
                self._read_metrics(train_metrics, keep_last=1)  # the previous step: done by now, or nearly
                now = time.perf_counter()
                if step > self.first_step + 1:  # the first step of a run includes compilation
                    self.train_seconds += now - tick
                    self.clips_trained += config.batch_size
                tick = now
                bar.update(1)
                losses = train_metrics.last_loss[np.isfinite(train_metrics.last_loss)]
                if losses.size:  # known one step late
                    bar.set_postfix(  # drawn with the next update: a refresh here would defeat the throttle
                        loss=_spread(losses),
                        clips_per_s=f'{self._clips_per_s():.1f}',
                        refresh=False,
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
                elif self.timer.due():
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

    def _read_metrics(self, train_metrics: TrainMetrics, keep_last: int = 0) -> None:
        """Fetches the finished steps' metrics (all but the last `keep_last`), with one warning per member
        whose loss turned NaN or Inf in them: it is frozen at its last good step."""
        train_metrics.read(keep_last)
        for member, step, loss in train_metrics.newly_frozen:
            self.frozen_at[member] = step
            going_on = int((~train_metrics.frozen).sum())
            logging.warning(
                'member %d: training loss %s at step %d: frozen with its parameters of step %d; %d member(s) '
                'go on',
                member,
                loss,
                step,
                step - 1,
                going_on,
            )
        train_metrics.newly_frozen.clear()

    def _rows(self, step: int, split: str, records: list[dict]) -> None:
        """metrics.jsonl rows: one per member in a population (with 'member'), one without it solo."""
        for record in records:
            if self.members == 1:
                record = {k: v for k, v in record.items() if k != 'member'}
            self.writer.write({'step': step, 'split': split, **record})

    def _log_train(self, step: int, train_metrics: TrainMetrics) -> None:
        self._read_metrics(train_metrics)
        records = train_metrics.summary()
        for record in records:
            if self.train_seconds:
                record['clips_per_s'] = self._clips_per_s()
        self._rows(step, 'train', records)

    def _evaluate_and_save(self, state, step: int, train_metrics: TrainMetrics) -> None:
        self._read_metrics(train_metrics)  # every step's losses known: which members are frozen at this one
        start = time.perf_counter()
        results = validate(self.p_eval_step, state, self.validation, self.config)
        seconds = time.perf_counter() - start
        for member, result in enumerate(results):
            result.update(member=member, eval_seconds=seconds)
            if train_metrics.frozen[member]:  # frozen in this run or before a resume
                result['frozen'] = True
        self.evaluations.append({'step': step, 'members': results})
        self._rows(step, 'validation', results)
        if jax.process_index() == 0:
            progress.write(_eval_line(step, results))
        self._save(state, step, results, train_metrics)

    def _save(self, state, step: int, results: list[dict] | None, train_metrics: TrainMetrics) -> None:
        """Saves a checkpoint once the losses up to `step` are known to be finite."""
        self._read_metrics(train_metrics)
        host_state = unreplicate(state)
        check_finite(host_state.variables, f'the model at step {step}')
        self.manager.save(step, *state_items(host_state), checkpoints.ranking(results or []))
        self.timer.restart()

    def summary(self, start_step: int, stopped: str | None) -> dict[str, Any]:
        self.manager.wait_until_finished()
        summary: dict[str, Any] = {
            'workdir': str(self.workdir),
            'steps': self.manager.latest_step(),
            'steps_this_run': (self.manager.latest_step() or 0) - start_step,
            'stopped_by': stopped,
            'wall_seconds': time.time() - self.wall_start,
            'train_clips_per_s': self._clips_per_s(),
            'device_count': jax.device_count(),
        }
        members = []
        for member in range(self.members):
            scored = [{'step': e['step'], **e['members'][member]} for e in self.evaluations]
            scored = [e for e in scored if 'auc' in e]
            found: dict[str, Any] = {}
            if scored:
                best_auc = max(scored, key=lambda e: e['auc'])
                best_loss = min(scored, key=lambda e: e['loss'])
                found['best_auc'] = {'step': best_auc['step'], 'auc': best_auc['auc']}
                found['best_loss'] = {'step': best_loss['step'], 'loss': best_loss['loss']}
                found['last_validation'] = {k: v for k, v in scored[-1].items() if k != 'member'}
            members.append(found)
        if self.members == 1:
            summary.update(members[0])
            return summary
        summary['members'] = [
            {**population.describe(self.config, i), 'frozen_at_step': self.frozen_at.get(i), **found}
            for i, found in enumerate(members)
        ]
        ranked = [(m['best_auc']['auc'], i) for i, m in enumerate(members) if 'best_auc' in m]
        if ranked:
            best = max(ranked, key=lambda pair: (pair[0], -pair[1]))[1]  # ties: the lowest member
            summary['best_auc'] = {'member': best, **members[best]['best_auc']}
            lowest = min((m['best_loss']['loss'], i) for i, m in enumerate(members) if 'best_loss' in m)[1]
            summary['best_loss'] = {'member': lowest, **members[lowest]['best_loss']}
        return summary


def _train_inputs(batch: dict) -> dict:
    """What the train step reads: 'clips' from a host pipeline, or 'target' and 'flip' from the device one."""
    return {key: value for key, value in batch.items() if key in ('clips', 'target', 'flip', 'labels')}


def _device_batches(batches: Iterator[dict]) -> Iterator[dict]:
    """Batches already on the local devices, two ahead, so host→device copies overlap the steps."""
    return pipeline.prefetch_to_devices((_train_inputs(b) for b in batches), size=2)


def _spread(values: np.ndarray) -> str:
    """One value as it is; a population's as its median and range."""
    if values.size == 1:
        return f'{values[0]:.4f}'
    return f'{np.median(values):.4f} [{values.min():.4f}–{values.max():.4f}]'


def _eval_line(step: int, results: list[dict]) -> str:
    if len(results) > 1:
        return _population_eval_line(step, results)
    result = results[0]
    parts = [f'step {step}: validation loss {result["loss"]:.4f}']
    if 'auc' in result:
        parts.append(f'AUC {result["auc"]:.4f} (Keras 200-bucket {result["auc_keras200"]:.4f})')
        baselines = [
            f'{k.split("/", 1)[1]} {v:.4f}' for k, v in result.items() if k.startswith('baseline_auc/')
        ]
        parts.append('baselines ' + ', '.join(baselines))
    parts.append(f'accuracy {result["accuracy"]:.4f}')
    return '; '.join(parts)


def _population_eval_line(step: int, results: list[dict]) -> str:
    """'step 200: validation AUC 0.7012 [0.5503–0.8010] over 5 members, best member 3; …'."""
    losses = np.array([r['loss'] for r in results])
    parts = [f'step {step}: validation loss {_spread(losses)}']
    aucs = np.array([r.get('auc', np.nan) for r in results])
    if np.isfinite(aucs).any():
        best = int(np.nanargmax(aucs))
        spread = _spread(aucs[np.isfinite(aucs)])
        parts.append(f'AUC {spread} over {len(results)} members, best member {best}')
        baselines = [
            f'{k.split("/", 1)[1]} {v:.4f}' for k, v in results[best].items() if k.startswith('baseline_auc/')
        ]
        parts.append('baselines ' + ', '.join(baselines))
    frozen = [str(r['member']) for r in results if r.get('frozen')]
    if frozen:
        parts.append(f'frozen member(s) {", ".join(frozen)}')
    return '; '.join(parts)
