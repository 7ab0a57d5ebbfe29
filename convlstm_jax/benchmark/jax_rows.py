"""The convlstm_jax rows: this project's pmapped training step or forward pass, fed by an input mode.

An input mode turns a row into a source of device batches (`INPUT_MODES`): 'memory' cycles the shared
in-memory batches, 'pipeline-<backend>' runs `data/pipeline.py` over a frame array as the training loop does,
and 'device' does so with data.pipeline='device': the frame array placed on the devices once, the step fed
target indices and flip codes, cutting the clips itself (training's own step with `frames`).
A new mode is one function `(spec) -> (devices -> iterator of batch dicts)` added to `INPUT_MODES` (and to
`input_modes`, which plans the rows); step, timing and memory stay as they are.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from convlstm_jax.benchmark.harness import (
    RowSpec,
    jax_memory_probe,
    make_batches,
    measurements,
    row_config,
    time_steps,
    versions,
)

# The --pipeline choices: 'device' plans the input mode 'device', the others 'pipeline-<backend>'.
PIPELINE_BACKENDS = ('numpy', 'tfdata', 'device')
PIPELINE_MIN_FRAMES = 2000  # frames in the pipeline rows' array: clips are gathered from more than the cache

Batches = Callable[[list[Any]], Iterator[dict]]  # devices -> batch dicts with a leading device axis


def jax_device_name() -> str:
    import jax

    device = jax.local_devices()[0]
    return f'{device.platform}:{device.device_kind}'


def jax_train_step(
    config: Any, seed: int, devices: Sequence[Any], frames: Any = None
) -> tuple[Callable, Any]:
    """`convlstm_jax.train`'s pmapped training step over `devices` (vmapped over the members of a
    config.population > 1, as training builds it), and its initial state on them; with `frames` (placed by
    `device_frames`), the device pipeline's step, which cuts its clips from them."""
    from convlstm_jax import parallel, train

    p_train_step = train.make_train_step(config, devices=devices, frames=frames)
    return p_train_step, parallel.replicate(initial_state(config, seed), devices)


def initial_state(config: Any, seed: int) -> Any:
    """The step-0 training state of the config's members, member i initialised from seed + i (a population:
    stacked on a leading member axis, with its per-member hyper-parameters, none frozen)."""
    from convlstm_jax import population, train

    config = config.copy_and_resolve_references()
    config.init_seed = seed
    # The row's class weights are a pair (row_config), so no training labels are needed to resolve them.
    return train.fresh_state(config, population.hparams(config, np.zeros(0, np.float32)))


def jax_infer_step(config: Any, seed: int, devices: Sequence[Any]) -> tuple[Callable, Any]:
    """The forward pass (BatchNorm in inference mode) pmapped over `devices`, vmapped over the members of a
    population (each runs every clip), and the model's variables."""
    import jax

    from convlstm_jax import models, parallel, population, state

    model = models.build_model(config.model)

    def apply(variables, clips):
        return model.apply(variables, clips, train=False)

    members = [state.init_variables(config, seed + i) for i in range(population.size(config))]
    if population.is_population(config):
        apply = jax.vmap(apply, in_axes=(0, None))
        variables = population.stack(members)
    else:
        variables = members[0]
    forward = jax.pmap(apply, devices=devices)

    def infer_step(variables, batch):
        return variables, forward(variables, batch['clips'])

    return infer_step, parallel.replicate(variables, devices)


def step_devices(spec: RowSpec) -> list[Any]:
    """The first `spec.devices` local devices; the batch must split evenly over them."""
    import jax

    from convlstm_jax import parallel

    devices = jax.local_devices()[: spec.devices]
    if len(devices) < spec.devices:
        raise ValueError(f'{spec.devices} devices requested, {len(devices)} found: {devices}')
    parallel.check_batch_size(spec.batch, spec.devices, name='batch')
    return devices


def run_convlstm_jax(spec: RowSpec) -> dict[str, Any]:
    """Times this project's pmapped step over the row's input mode: dicts of 'clips' and 'labels' with a
    leading device axis."""
    import jax

    batches = input_batches(spec)  # before the memory baseline: the input's arrays are not the step's memory
    config = row_config(spec)
    devices = step_devices(spec)
    frames = None
    if spec.input == 'device':  # placed before the memory baseline too
        if spec.mode != 'train':
            raise ValueError(f"input 'device' feeds training steps only; got {spec.label()}")
        frames = device_frames(spec, devices)
    memory = jax_memory_probe()
    if spec.mode == 'train':
        step_fn, carry = jax_train_step(config, spec.seed, devices, frames)
    else:
        step_fn, carry = jax_infer_step(config, spec.seed, devices)
    source = batches(devices)
    state = {'carry': carry}

    def step(i: int) -> None:
        del i
        state['carry'], output = step_fn(state['carry'], next(source))
        jax.block_until_ready(output)

    timing = time_steps(step, spec, memory)
    return {
        **measurements(timing, memory, spec, config.model),
        'device': jax_device_name(),
        'versions': versions('jax', 'jaxlib', 'flax', 'optax'),
    }


def memory_batches(spec: RowSpec) -> Batches:
    """The shared in-memory batches, cycled."""

    def shard(x: np.ndarray) -> np.ndarray:
        return x.reshape(spec.devices, -1, *x.shape[1:])

    batches = [
        {'clips': shard(clips), 'labels': shard(labels)}
        for clips, labels in make_batches(spec.shape, spec.batch, spec.seed)
    ]
    return lambda devices: itertools.cycle(batches)


@functools.cache
def pipeline_split(spec: RowSpec) -> tuple[Any, int]:
    """The pipeline rows' frame array (seeded noise) as a split, and the steps a row takes from it."""
    from convlstm_jax.data import clips, pipeline

    time_steps_, height, width, frames_per_step = spec.shape
    clip_length = clips.clip_length(time_steps_, frames_per_step)
    num_steps = max(spec.warmup, 1) + spec.steps
    num_frames = max(PIPELINE_MIN_FRAMES, clip_length + num_steps * spec.batch)
    split = pipeline.synthetic_split(num_frames, height, width, seed=spec.seed, clip_length=clip_length)
    return split, num_steps


def device_frames(spec: RowSpec, devices: list[Any]) -> Any:
    """The 'device' row's frame array on every device (after the device pipeline's memory check)."""
    from convlstm_jax.data import device

    split, _ = pipeline_split(spec)
    return device.place_splits({'train': split}, devices)['train']


def pipeline_batches(spec: RowSpec) -> Batches:
    """The training step fed as the training loop feeds it: `pipeline.train_batches` over a frame
    array (seeded noise), moved to the device two batches ahead by `pipeline.prefetch_to_devices`.
    Input 'device': backend 'device', whose batches hold 'target' and 'flip' in place of 'clips'."""
    from convlstm_jax.data import pipeline

    time_steps_, _, _, frames_per_step = spec.shape
    split, num_steps = pipeline_split(spec)
    config = row_config(spec)
    backend = 'device' if spec.input == 'device' else spec.input.removeprefix('pipeline-')
    keys = ('target', 'flip', 'labels') if backend == 'device' else ('clips', 'labels')

    def batches(devices: list[Any]) -> Iterator[dict]:
        host_batches = pipeline.train_batches(
            split,
            global_batch=spec.batch,
            seed=spec.seed,
            epoch=0,
            num_steps=num_steps,
            local_device_count=len(devices),
            flips=config.data.flips,
            backend=backend,
            time_steps=time_steps_,
            frames_per_step=frames_per_step,
        )
        inputs = ({key: b[key] for key in keys} for b in host_batches)
        return pipeline.prefetch_to_devices(inputs, size=2, devices=devices)

    return batches


def input_mode(backend: str) -> str:
    """The input mode of a --pipeline backend."""
    return backend if backend == 'device' else f'pipeline-{backend}'


INPUT_MODES: dict[str, Callable[[RowSpec], Batches]] = {
    'memory': memory_batches,
    **{input_mode(backend): pipeline_batches for backend in PIPELINE_BACKENDS},
}


def input_modes(pipelines: Sequence[str]) -> list[str]:
    """The end-to-end input modes planned beside 'memory' for the given pipeline backends."""
    return [input_mode(backend) for backend in pipelines]


def input_batches(spec: RowSpec) -> Batches:
    try:
        return INPUT_MODES[spec.input](spec)
    except KeyError:
        raise ValueError(f'unknown input {spec.input!r}: expected one of {sorted(INPUT_MODES)}') from None


def compiled_memory(spec: RowSpec) -> dict[str, Any]:
    """XLA's memory analysis of this project's compiled training step, per device, without running it.

    For shapes whose step does not fit in host memory: `compiled_peak_bytes` = arguments + outputs − aliased
    (the donated state) + temporaries, what the program needs at its peak besides its code.
    """
    if spec.mode != 'train':
        raise ValueError(f'compiled memory is measured for training steps; got {spec.label()}')
    config = row_config(spec)
    devices = step_devices(spec)
    step_fn, state = jax_train_step(config, spec.seed, devices)
    batch = next(memory_batches(spec)(devices))
    analysis = step_fn.lower(state, batch).compile().memory_analysis()
    analysis = analysis[0] if isinstance(analysis, list | tuple) else analysis  # per device, where a list
    sizes = {
        f'compiled_{name}_bytes': int(getattr(analysis, f'{name}_size_in_bytes'))
        for name in ('argument', 'output', 'alias', 'temp', 'generated_code')
    }
    peak = sizes['compiled_argument_bytes'] + sizes['compiled_output_bytes'] - sizes['compiled_alias_bytes']
    return {
        **sizes,
        'compiled_peak_bytes': peak + sizes['compiled_temp_bytes'],
        'device': jax_device_name(),
        'versions': versions('jax', 'jaxlib', 'flax', 'optax'),
    }
