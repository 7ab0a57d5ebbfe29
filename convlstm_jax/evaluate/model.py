"""A model from a checkpoint, scored on a split of its data beside the baselines, thresholds chosen on
validation."""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from convlstm_jax import progress
from convlstm_jax.evaluate.core import (
    REPORT_FORMAT,
    BootstrapOptions,
    Predictor,
    ScoredFrames,
    auc_differences,
    baseline_predictors,
    frames_summary,
    score_predictors,
)

SELECTION_SPLIT = 'validation'


def predict_split(model, variables: dict, split, data_config, *, batch_size: int) -> np.ndarray:
    """Probabilities for every sample of `split`, in order, through the eval pipeline and a jitted apply.

    A checkpoint trained with data.pipeline='device' is scored through 'numpy' (`host_backend`).
    """

    from convlstm_jax import inference
    from convlstm_jax.data import pipeline

    apply = inference.make_apply(model, variables)
    logits, index = [], []
    with progress.bar(total=len(split.samples), unit='clip', desc=f'predict {split.name}') as bar:
        batches = pipeline.eval_batches(
            split,
            global_batch=batch_size,
            backend=host_backend(data_config.pipeline),
            time_steps=data_config.time_steps,
            frames_per_step=data_config.frames_per_step,
        )
        for batch in batches:
            real = batch['mask'][0] > 0.5
            logits.append(apply(batch['clips'][0])[real])
            index.append(batch['index'][0][real])
            bar.update(int(real.sum()))
    index_all = np.concatenate(index) if index else np.zeros(0, np.int64)
    if not np.array_equal(index_all, split.samples):
        raise RuntimeError(f'the eval pipeline did not return every sample of {split.name} once, in order')
    return inference.sigmoid(np.concatenate(logits)).astype(np.float64)


def host_backend(pipeline_name: str) -> str:
    """The pipeline that scores a split: the training's, but 'numpy' in place of 'device'.

    Scoring is one pass over each split on one device: placing a split there (and checking that it fits) would
    cost about what cutting its clips once on the host does, and 'numpy' gives the same clips (tested batch
    for batch), needs no TensorFlow, reads memory-mapped frames in place and cannot run out of device memory.
    """
    return 'numpy' if pipeline_name == 'device' else pipeline_name


def model_evaluation(
    checkpoint: str | os.PathLike,
    *,
    select: str = 'best_auc',
    member: int | str | None = None,
    split: str = 'test',
    data_config=None,
    batch_size: int = 16,
    bootstrap: BootstrapOptions | None = None,
) -> tuple[dict, ScoredFrames, list[Predictor]]:
    """The model's predictions on `split` beside the baselines, thresholds chosen on validation.
    `data_config` (config.data) defaults to the data the model was trained on (cli.model_config); `member`
    picks one member of a population (checkpoints.load_model: an index, or 'best', the default)."""
    from convlstm_jax import checkpoints, cli, models
    from convlstm_jax.data import dataset, sources

    bootstrap = bootstrap or BootstrapOptions()
    sources.check_split_name(split)
    if data_config is None:
        data_config = cli.model_config(checkpoint).data
    spec, variables = checkpoints.load_model(checkpoint, select=select, member=member)
    splits = dataset.load_splits(data_config)
    needed = [split] if split == SELECTION_SPLIT else [split, SELECTION_SPLIT]
    missing = [name for name in needed if name not in splits]
    if missing:
        raise ValueError(f'the data has no split(s) {missing}: found {sorted(splits)}')
    model = models.build_model(spec['model'])

    def scored_frames(name: str) -> tuple[ScoredFrames, np.ndarray]:
        data = splits[name]
        if len(data.samples) == 0:
            raise ValueError(f'split {name!r} has no valid samples')
        probs = predict_split(model, variables, data, data_config, batch_size=batch_size)
        return ScoredFrames(name, data.samples, data.labels[data.samples], data.y_tilde), probs

    scored, scores = scored_frames(split)
    if split == SELECTION_SPLIT:
        selection, select_scores = None, None
    else:
        selection, select_scores = scored_frames(SELECTION_SPLIT)
    optimistic = f'{split} (the scored split itself: no other split to choose on)'
    predictors = [Predictor('model', scores, select_scores, kind='model', chosen_on_scored=optimistic)]
    predictors += [
        dataclasses.replace(p, chosen_on_scored=optimistic) for p in baseline_predictors(scored, selection)
    ]
    results = score_predictors(scored, predictors, selection, bootstrap)
    report = {
        'format': REPORT_FORMAT,
        'source': {
            'checkpoint': str(checkpoint),
            'select': select,
            'member': spec.get('member'),  # None: a solo model
            'member_asked': 'best' if member is None else str(member),
            'model': spec['model'],
            'model_source': spec.get('source', {}),
            'data': data_config.to_dict(),
        },
        'frames': frames_summary(scored, 'every valid sample of the split'),
        'selection': frames_summary(selection, 'every valid sample') if selection else None,
        'predictors': results,
        'auc_differences': auc_differences(scored, predictors, bootstrap),
        'bootstrap': dataclasses.asdict(bootstrap),
    }
    return report, scored, predictors
