"""Training and inference throughput of the ConvLSTM classifiers against Keras, on one machine.

    python -m convlstm_jax.benchmark --json bench.json
    python -m convlstm_jax.benchmark --models two_layer --frameworks convlstm_jax,tf_keras --dtypes bfloat16

Every row (framework × model × mode × dtype × remat × devices × input) runs in a fresh subprocess, because
frameworks disturb each other (thread pools, allocators, XLA flags) and a process's peak memory is only clean
in a process of its own. All rows build the same model from `configs/<model>.py` at the same clip shape and
batch, and feed it the same in-memory data: a few seeded uint8 batches, regenerated identically by every
worker. Keras gets them scaled to float32 once, before timing, as the 2021 pipeline fed it; this project gets
uint8 and scales on the device. The training step is the 2021 one, class-weighted binary cross-entropy and
Adam: for Keras `train_on_batch` after the 2021 `compile` (with its BCE and AUC metrics), for this project the
training step of `convlstm_jax.train`, pmapped over `--devices` devices (on a CPU, the CPU split into that
many: one per core runs the shards side by side; 1 by default). Separate `pipeline-*` rows time this
project's training step fed by its own input pipeline (`data/pipeline.py`) from a frame array, instead of
from batches already in memory.

Step times are wall-clock times of finished steps (the result is waited for), after warm-up steps.
`compile_s` is the first step's time minus the median step time, one definition for every framework. Memory,
on CPU: the peak resident set size (VmHWM, reset after warm-up) during the timed steps, and its rise above the
process just before the model was built (`peak_mem_delta_bytes`: parameters, optimizer state, activations,
workspace); on a GPU: the device allocator's peak. FLOPs are an analytic count of the convolutions
(`flops_per_clip`); achieved GFLOP/s is that count times clips/s, so work recomputed by remat is not credited.

This module imports nothing from TensorFlow: only the Keras and tf.data workers import it, with its GPUs
hidden, each in its own subprocess.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import datetime
import importlib.metadata
import importlib.util
import itertools
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from convlstm_jax import io

FRAMEWORKS = ('tf_keras', 'keras3-tensorflow', 'keras3-jax', 'keras3-torch', 'convlstm_jax')  # table order
KERAS3_BACKENDS = {'keras3-tensorflow': 'tensorflow', 'keras3-jax': 'jax', 'keras3-torch': 'torch'}
FRAMEWORK_PACKAGES = {
    'convlstm_jax': ('jax', 'flax', 'optax'),
    'tf_keras': ('tensorflow', 'tf_keras'),
    'keras3-tensorflow': ('keras', 'tensorflow'),
    'keras3-jax': ('keras', 'jax'),
    'keras3-torch': ('keras', 'torch'),
}
MODES = ('train', 'infer')
DTYPES = ('float32', 'bfloat16')
PIPELINE_BACKENDS = ('numpy', 'tfdata')
REFERENCE_FRAMEWORK = 'tf_keras'
DEFAULT_SHAPE = (30, 120, 160, 4)
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS_DIR = REPO_ROOT / 'configs'
DISTINCT_BATCHES = 2  # cycled through, so that no step sees the previous step's input
PIPELINE_MIN_FRAMES = 2000  # frames in the pipeline rows' array: clips are gathered from more than the cache
POSITIVE_FRACTION = 0.134  # of the labels, as in the 2021 training split
LOG_TAIL_CHARS = 3000


# ----------------------------------------------------------------------------------------------------------
# FLOPs


def flops_per_clip(model_config: Any, shape: Sequence[int]) -> dict[str, float]:
    """Analytic FLOPs (2 per multiply-add) of the convolutions per clip: `forward` and one `train` step.

    Each ConvLSTM2D layer runs, at every time step, its input convolution (the config's padding) and its
    recurrent convolution ('same'), both with 4·filters outputs (the fused gates); between layers a 2×2
    max-pool halves the image. Gate arithmetic, BatchNorm, pooling and the dense head are well under 1 % and
    not counted.
    A training step is the forward pass plus two products per convolution in the backward pass (the gradient
    of its input and of its weights), less the first layer's input gradient, which nothing needs.
    The 2021 2-layer model at (30, 120, 160, 4): 27.45 GFLOP forward, 79.8 GFLOP per training step.
    """
    steps, height, width, channels = (int(d) for d in shape)
    kh, kw = _pair(model_config.kernel_size)
    filters = tuple(model_config.filters)
    forward = 0.0
    first_input_conv = 0.0
    for index, count in enumerate(filters):
        if model_config.padding == 'valid':
            height, width = height - kh + 1, width - kw + 1
        if height <= 0 or width <= 0:
            raise ValueError(f'clip shape {tuple(shape)} is too small for {len(filters)} ConvLSTM layers')
        pixels = steps * height * width
        input_conv = 2.0 * pixels * kh * kw * channels * 4 * count
        forward += input_conv + 2.0 * pixels * kh * kw * count * 4 * count
        first_input_conv = first_input_conv or input_conv
        if index < len(filters) - 1:
            height, width = height // 2, width // 2
        channels = count
    return {'forward': forward, 'train': 3.0 * forward - first_input_conv}


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    first, second = value
    return int(first), int(second)


# ----------------------------------------------------------------------------------------------------------
# What a row measures, and the data every row shares


@dataclasses.dataclass(frozen=True)
class RowSpec:
    """One measurement, run by one worker process."""

    framework: str
    model: str
    mode: str
    dtype: str = 'float32'
    remat: bool = False
    input: str = 'memory'  # 'memory' (the shared in-memory batches) or 'pipeline-<numpy|tfdata>'
    batch: int = 4
    shape: tuple[int, ...] = DEFAULT_SHAPE
    warmup: int = 2
    steps: int = 10
    time_budget_s: float = 300.0
    seed: int = 0
    unroll: int | None = None
    devices: int = 1  # convlstm_jax: devices the step is pmapped over (on a CPU: the CPU split into these)

    def label(self) -> str:
        parts = [self.framework, self.model, self.mode, self.dtype]
        parts += ['remat'] if self.remat else []
        parts += [f'{self.devices} devices'] if self.devices > 1 else []
        parts += [self.input] if self.input != 'memory' else []
        return ' '.join(parts)


def load_config(model: str) -> Any:
    """`configs/<model>.py`'s get_config(), or that of the config file `model` (a path ending in .py)."""
    path = pathlib.Path(model) if model.endswith('.py') else CONFIGS_DIR / f'{model}.py'
    if not path.is_file():
        known = sorted(p.stem for p in CONFIGS_DIR.glob('*.py'))
        raise ValueError(f'unknown model {model!r}: expected one of {known} or the path of a config file')
    from convlstm_jax import config as config_lib

    return config_lib.load_config_file(str(path))  # the loader every --config goes through, checked


def row_config(spec: RowSpec) -> Any:
    """The model's config with the row's compute dtype, remat and unrolling."""
    config = load_config(spec.model)
    config.model.compute_dtype = spec.dtype
    config.model.remat = spec.remat
    if spec.unroll is not None:
        config.model.unroll = spec.unroll
    config.batch_size = spec.batch
    data = config.data
    data.time_steps, data.height, data.width, data.frames_per_step = spec.shape
    config.class_weights = class_weights(config)
    return config


def class_weights(config: Any) -> tuple[float, float]:
    """The config's class weights (0, 1); 'auto' (a rule over training labels) becomes the 2021 values."""
    if isinstance(config.class_weights, str):
        return 0.133, 0.866
    negative, positive = config.class_weights
    return float(negative), float(positive)


def make_batches(shape: Sequence[int], batch: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The benchmark's data: seeded uint8 clips and 0/1 float32 labels, the same in every worker."""
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(DISTINCT_BATCHES):
        clips = rng.integers(0, 256, size=(batch, *shape), dtype=np.uint8)
        labels = (rng.random(batch) < POSITIVE_FRACTION).astype(np.float32)
        labels[0] = 1.0  # both classes in every batch (AUC metric, class weights)
        labels[-1] = 0.0
        batches.append((clips, labels))
    return batches


# ----------------------------------------------------------------------------------------------------------
# Measuring


class HostMemory:
    """Resident set size of this process; its peak is reset through /proc/self/clear_refs (Linux ≥ 4.0)."""

    def __init__(self) -> None:
        self.method = 'host-rss'
        _release_free_heap()
        self.baseline = self.idle = _proc_status_bytes('VmRSS') or _ru_maxrss()

    def reset_peak(self) -> None:
        _release_free_heap()  # what compilation freed but malloc kept is not the step's memory
        self.idle = _proc_status_bytes('VmRSS') or self.baseline  # between steps, after warm-up
        try:
            with open('/proc/self/clear_refs', 'w') as clear_refs:
                clear_refs.write('5')
        except OSError:
            self.method = 'host-rss-lifetime'  # the whole process's peak, compilation included

    def peak(self) -> int:
        return _proc_status_bytes('VmHWM') or _ru_maxrss()


def _release_free_heap() -> None:
    """Returns the C heap's free pages to the system (glibc), so that resident memory is memory in use."""
    try:
        ctypes.CDLL('libc.so.6').malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _proc_status_bytes(key: str) -> int | None:
    try:
        with open('/proc/self/status') as status:
            for line in status:
                if line.startswith(key + ':'):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _ru_maxrss() -> int:
    import resource

    scale = 1 if sys.platform == 'darwin' else 1024  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


class JaxDeviceMemory:
    """The accelerator allocator's peak; not resettable, but warm-up allocates what the timed steps do."""

    def __init__(self, device: Any) -> None:
        self.method = 'device-peak'
        self.device = device
        self.baseline = self.idle = int(device.memory_stats().get('bytes_in_use', 0))

    def reset_peak(self) -> None:
        self.idle = int(self.device.memory_stats().get('bytes_in_use', 0))

    def peak(self) -> int:
        return int(self.device.memory_stats()['peak_bytes_in_use'])


class TorchCudaMemory:
    def __init__(self, torch: Any) -> None:
        self.method = 'device-peak'
        self.torch = torch
        self.baseline = self.idle = int(torch.cuda.memory_allocated())

    def reset_peak(self) -> None:
        self.idle = int(self.torch.cuda.memory_allocated())
        self.torch.cuda.reset_peak_memory_stats()

    def peak(self) -> int:
        return int(self.torch.cuda.max_memory_allocated())


def jax_memory_probe() -> HostMemory | JaxDeviceMemory:
    """Device peak where jax runs on an accelerator that reports one, else host RSS."""
    import jax

    device = jax.local_devices()[0]
    stats = device.memory_stats() if device.platform != 'cpu' else None
    return JaxDeviceMemory(device) if stats and 'peak_bytes_in_use' in stats else HostMemory()


def time_steps(step: Callable[[int], None], spec: RowSpec, memory: Any) -> dict[str, Any]:
    """Runs `step(i)`, which returns once its work is done, for the warm-up then the timed steps.

    Each phase stops early once it has used the row's time budget (after one step at least), so that a
    framework taking minutes per step still gives a row.
    """
    phase_start = time.perf_counter()
    for i in range(max(spec.warmup, 1)):
        step(i)
        if i == 0:
            first_step_s = time.perf_counter() - phase_start
        if time.perf_counter() - phase_start > spec.time_budget_s:
            break
    memory.reset_peak()
    times: list[float] = []
    phase_start = time.perf_counter()
    while len(times) < spec.steps:
        start = time.perf_counter()
        step(spec.warmup + len(times))
        times.append(time.perf_counter() - start)
        if time.perf_counter() - phase_start > spec.time_budget_s:
            break
    return {'first_step_s': first_step_s, 'step_times_s': times}


def measurements(timing: dict[str, Any], memory: Any, spec: RowSpec, model_config: Any) -> dict[str, Any]:
    """The row's numbers from its step times and memory probe."""
    times = np.asarray(timing['step_times_s'])
    median = float(np.median(times))
    q25, q75 = np.percentile(times, [25, 75])
    clips_per_s = spec.batch / median
    gflop_per_clip = (
        flops_per_clip(model_config, spec.shape)['train' if spec.mode == 'train' else 'forward'] / 1e9
    )
    peak = memory.peak()
    return {
        'clips_per_s': clips_per_s,
        'step_s_median': median,
        'step_s_iqr': float(q75 - q25),
        'step_s_min': float(times.min()),
        'step_s_max': float(times.max()),
        'steps_measured': int(times.size),
        'first_step_s': timing['first_step_s'],
        'compile_s': max(timing['first_step_s'] - median, 0.0),
        'gflop_per_clip': gflop_per_clip,
        'gflop_per_s': gflop_per_clip * clips_per_s,
        'peak_mem_bytes': peak,
        'peak_mem_delta_bytes': max(peak - memory.baseline, 0),
        'mem_baseline_bytes': memory.baseline,
        'peak_mem_above_idle_bytes': max(peak - memory.idle, 0),
        'mem_method': memory.method,
        'load_avg_1m': _load_average(),
    }


def _load_average() -> float | None:
    """The machine's 1-minute load average when the timed steps end: other work competing for the cores."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _versions(*modules: str) -> dict[str, str]:
    """Versions of the given modules that this process has imported."""
    versions = {'python': platform.python_version()}
    for name in modules:
        if name in sys.modules:
            versions[name] = str(getattr(sys.modules[name], '__version__', '?'))
    return versions


# ----------------------------------------------------------------------------------------------------------
# convlstm_jax workers


def _jax_device_name() -> str:
    import jax

    device = jax.local_devices()[0]
    return f'{device.platform}:{device.device_kind}'


def jax_train_step(config: Any, seed: int, devices: Sequence[Any]) -> tuple[Callable, Any]:
    """`convlstm_jax.train`'s pmapped training step over `devices`, and its initial state on them."""
    import jax

    from convlstm_jax import parallel, train

    variables = train.init_variables(config, seed)
    state = train.create_train_state(config, variables, jax.random.PRNGKey(seed))
    p_train_step = train.make_train_step(config, config.class_weights, devices=devices)
    return p_train_step, parallel.replicate(state, devices)


def jax_infer_step(config: Any, seed: int, devices: Sequence[Any]) -> tuple[Callable, Any]:
    """The forward pass (BatchNorm in inference mode) pmapped over `devices`, and the model's variables."""
    import jax

    from convlstm_jax import models, parallel, train

    model = models.build_model(config.model)
    forward = jax.pmap(lambda variables, clips: model.apply(variables, clips, train=False), devices=devices)

    def infer_step(variables, batch):
        return variables, forward(variables, batch['clips'])

    return infer_step, parallel.replicate(train.init_variables(config, seed), devices)


def step_devices(spec: RowSpec) -> list[Any]:
    """The first `spec.devices` local devices; the batch must split evenly over them."""
    import jax

    from convlstm_jax import parallel

    devices = jax.local_devices()[: spec.devices]
    if len(devices) < spec.devices:
        raise ValueError(f'{spec.devices} devices requested, {len(devices)} found: {devices}')
    parallel.check_batch_size(spec.batch, spec.devices, name='batch')
    return devices


def run_convlstm_jax(spec: RowSpec, batches: Callable[[list[Any]], Iterator[dict]]) -> dict[str, Any]:
    """Times this project's pmapped step over `batches(devices)`: dicts of 'clips' and 'labels' with a
    leading device axis."""
    import jax

    config = row_config(spec)
    devices = step_devices(spec)
    memory = jax_memory_probe()
    make_step = jax_train_step if spec.mode == 'train' else jax_infer_step
    step_fn, carry = make_step(config, spec.seed, devices)
    source = batches(devices)
    state = {'carry': carry}

    def step(i: int) -> None:
        del i
        state['carry'], output = step_fn(state['carry'], next(source))
        jax.block_until_ready(output)

    timing = time_steps(step, spec, memory)
    return {
        **measurements(timing, memory, spec, config.model),
        'device': _jax_device_name(),
        'versions': _versions('jax', 'jaxlib', 'flax', 'optax'),
    }


def run_convlstm_jax_memory(spec: RowSpec) -> dict[str, Any]:
    """This project's step on the shared in-memory batches."""

    def shard(x: np.ndarray) -> np.ndarray:
        return x.reshape(spec.devices, -1, *x.shape[1:])

    batches = [
        {'clips': shard(clips), 'labels': shard(labels)}
        for clips, labels in make_batches(spec.shape, spec.batch, spec.seed)
    ]
    return run_convlstm_jax(spec, lambda devices: itertools.cycle(batches))


def run_convlstm_jax_pipeline(spec: RowSpec) -> dict[str, Any]:
    """This project's training step fed as its training loop feeds it: `pipeline.train_batches` over a frame
    array (seeded noise), moved to the device two batches ahead by `pipeline.prefetch_to_devices`."""
    from convlstm_jax.data import clips, pipeline

    time_steps_, height, width, frames_per_step = spec.shape
    clip_length = clips.clip_length(time_steps_, frames_per_step)
    num_steps = max(spec.warmup, 1) + spec.steps
    num_frames = max(PIPELINE_MIN_FRAMES, clip_length + num_steps * spec.batch)
    split = pipeline.synthetic_split(num_frames, height, width, seed=spec.seed, clip_length=clip_length)
    config = row_config(spec)

    def batches(devices: list[Any]) -> Iterator[dict]:
        host_batches = pipeline.train_batches(
            split,
            global_batch=spec.batch,
            seed=spec.seed,
            epoch=0,
            num_steps=num_steps,
            local_device_count=len(devices),
            flips=config.data.flips,
            backend=spec.input.removeprefix('pipeline-'),
            time_steps=time_steps_,
            frames_per_step=frames_per_step,
        )
        inputs = ({'clips': b['clips'], 'labels': b['labels']} for b in host_batches)
        return pipeline.prefetch_to_devices(inputs, size=2, devices=devices)

    return run_convlstm_jax(spec, batches)


# ----------------------------------------------------------------------------------------------------------
# Keras workers


def import_keras(framework: str) -> Any:
    """tf_keras (Keras 2) or Keras 3 on the framework's backend; TensorFlow always with its GPUs hidden."""
    if framework in ('tf_keras', 'keras3-tensorflow'):
        from convlstm_jax.tf_cpu import import_tensorflow

        import_tensorflow()
    if framework == 'tf_keras':
        import tf_keras

        return tf_keras
    backend = KERAS3_BACKENDS[framework]
    if os.environ.get('KERAS_BACKEND') != backend:
        raise RuntimeError(f'{framework} needs KERAS_BACKEND={backend} set before keras is imported')
    import keras

    return keras


def build_keras_model(keras: Any, model_config: Any, shape: Sequence[int]) -> Any:
    """The 2021 model from a config.model: ConvLSTM2D layers with a TimeDistributed 2×2 max-pool and
    BatchNorm between them, BatchNorm after the last where configured, GlobalMaxPool2D, Dense(1, sigmoid)."""
    layers = keras.layers
    recurrent_activation: Any = model_config.recurrent_activation
    if recurrent_activation == 'hard_sigmoid' and keras.__version__.startswith('3'):
        # Keras 3's hard_sigmoid is relu6(x + 3) / 6; the 2021 (Keras 2) one is clip(0.2x + 0.5, 0, 1).
        def recurrent_activation(x):
            return keras.ops.clip(0.2 * x + 0.5, 0.0, 1.0)

    filters = tuple(model_config.filters)
    inputs = keras.Input(tuple(shape))
    x = inputs
    for index, count in enumerate(filters):
        last = index == len(filters) - 1
        x = layers.ConvLSTM2D(
            count,
            _pair(model_config.kernel_size),
            padding=model_config.padding,
            activation=model_config.activation,
            recurrent_activation=recurrent_activation,
            use_bias=model_config.use_bias,
            dropout=model_config.dropout,
            recurrent_dropout=model_config.recurrent_dropout,
            return_sequences=not last,
        )(x)
        if not last:
            x = layers.TimeDistributed(layers.MaxPooling2D((2, 2)))(x)
            x = layers.TimeDistributed(layers.BatchNormalization(center=False, scale=False))(x)
    if model_config.batchnorm_last:
        x = layers.BatchNormalization(center=False, scale=False)(x)
    x = layers.GlobalMaxPooling2D()(x)
    outputs = layers.Dense(1, activation='sigmoid')(x)
    return keras.Model(inputs, outputs)


def compile_keras_model(keras: Any, model: Any, config: Any) -> None:
    """The 2021 compile: Adam, binary cross-entropy on probabilities, BCE and ROC-AUC metrics."""
    optimizer = keras.optimizers.Adam(
        learning_rate=config.learning_rate,
        beta_1=config.adam_b1,
        beta_2=config.adam_b2,
        epsilon=config.adam_eps,
    )
    metrics = [keras.metrics.BinaryCrossentropy(), keras.metrics.AUC(num_thresholds=200)]
    model.compile(optimizer=optimizer, loss=keras.losses.BinaryCrossentropy(), metrics=metrics)


def keras_memory_probe(framework: str) -> Any:
    if framework == 'keras3-torch':
        import torch

        if torch.cuda.is_available():
            return TorchCudaMemory(torch)
    if framework == 'keras3-jax':
        return jax_memory_probe()
    return HostMemory()


def keras_device(framework: str) -> str:
    if framework == 'keras3-jax':
        return _jax_device_name()
    if framework == 'keras3-torch':
        import torch

        return 'cuda:' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'
    return 'cpu'  # TensorFlow always runs with its GPUs hidden here


def run_keras(spec: RowSpec) -> dict[str, Any]:
    if spec.dtype != 'float32' or spec.remat or spec.input != 'memory':
        raise ValueError(f'{spec.framework} rows are float32, without remat, from memory; got {spec.label()}')
    keras = import_keras(spec.framework)
    # Scaled once, before timing, as the 2021 pipeline fed Keras; labels (B, 1) like the model's output.
    batches = [
        (clips.astype(np.float32) / 255.0, labels[:, None])
        for clips, labels in make_batches(spec.shape, spec.batch, spec.seed)
    ]
    config = row_config(spec)
    memory = keras_memory_probe(spec.framework)
    model = build_keras_model(keras, config.model, spec.shape)
    compile_keras_model(keras, model, config)
    negative_weight, positive_weight = config.class_weights
    weights = {0: negative_weight, 1: positive_weight}

    def step(i: int) -> None:
        clips, labels = batches[i % len(batches)]
        if spec.mode == 'train':
            model.train_on_batch(clips, labels, class_weight=weights)
        else:
            model.predict_on_batch(clips)

    timing = time_steps(step, spec, memory)
    return {
        **measurements(timing, memory, spec, config.model),
        'jit_compile': str(getattr(model, 'jit_compile', None)),
        'device': keras_device(spec.framework),
        'versions': _versions('tensorflow', 'tf_keras', 'keras', 'jax', 'torch'),
    }


def run_row(spec: RowSpec) -> dict[str, Any]:
    """Measures one row in this process (a fresh subprocess started by `run_rows`)."""
    if spec.framework != 'convlstm_jax':
        return run_keras(spec)
    if spec.input == 'memory':
        return run_convlstm_jax_memory(spec)
    return run_convlstm_jax_pipeline(spec)


# ----------------------------------------------------------------------------------------------------------
# Planning and running rows


def available_frameworks() -> list[str]:
    """Frameworks whose packages are installed here (Keras 3 rows need keras ≥ 3)."""
    found = []
    for framework, packages in FRAMEWORK_PACKAGES.items():
        if all(importlib.util.find_spec(p) is not None for p in packages):
            if 'keras' not in packages or _keras_major() >= 3:
                found.append(framework)
    return found


def _keras_major() -> int:
    try:
        return int(importlib.metadata.version('keras').split('.')[0])
    except importlib.metadata.PackageNotFoundError:
        return 0


def plan_rows(
    *,
    models: Sequence[str],
    frameworks: Sequence[str],
    modes: Sequence[str],
    dtypes: Sequence[str],
    remat: Sequence[bool],
    pipelines: Sequence[str],
    devices: Sequence[int] = (1,),
    **common: Any,
) -> list[RowSpec]:
    """Every row of one benchmark: per model and mode, the frameworks in order, then the pipeline rows.

    dtype, remat and devices vary for this project only (remat in training only); Keras runs float32.
    Pipeline rows are training steps, with the first remat setting, for each dtype and device count.
    """
    rows = []
    for model in models:
        for mode in modes:
            for framework in frameworks:
                if framework != 'convlstm_jax':
                    rows.append(RowSpec(framework, model, mode, **common))
                    continue
                for count, dtype in itertools.product(devices, dtypes):
                    for use_remat in remat if mode == 'train' else (False,):
                        rows.append(
                            RowSpec(framework, model, mode, dtype, use_remat, devices=count, **common)
                        )
        if 'train' in modes and 'convlstm_jax' in frameworks:
            for backend, count, dtype in itertools.product(pipelines, devices, dtypes):
                rows.append(
                    RowSpec(
                        'convlstm_jax',
                        model,
                        'train',
                        dtype,
                        remat[0],
                        input=f'pipeline-{backend}',
                        devices=count,
                        **common,
                    )
                )
    return rows


def worker_environment(spec: RowSpec) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
    # The worker imports this package as the parent process did, installed or not.
    env['PYTHONPATH'] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get('PYTHONPATH')]))
    if spec.framework in KERAS3_BACKENDS:
        env['KERAS_BACKEND'] = KERAS3_BACKENDS[spec.framework]
    if spec.devices > 1:
        from convlstm_jax import cli

        cli.use_cpu_devices(spec.devices, env)
    return env


def run_in_subprocess(spec: RowSpec, workdir: pathlib.Path, index: int, timeout_s: float) -> dict[str, Any]:
    """Runs one row in a fresh `python -m convlstm_jax.benchmark --worker` process; failures become rows."""
    spec_path = workdir / f'row{index}.spec.json'
    result_path = workdir / f'row{index}.result.json'
    log_path = workdir / f'row{index}.log'
    spec_path.write_text(json.dumps(dataclasses.asdict(spec)))
    command = [sys.executable, '-m', 'convlstm_jax.benchmark', '--worker', str(spec_path), str(result_path)]
    row: dict[str, Any] = {**dataclasses.asdict(spec), 'shape': list(spec.shape)}
    with open(log_path, 'w') as log:
        try:
            process = subprocess.run(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=worker_environment(spec),
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return {**row, 'error': f'timed out after {timeout_s:.0f} s'}
    if process.returncode != 0 or not result_path.is_file():
        tail = log_path.read_text(errors='replace')[-LOG_TAIL_CHARS:]
        return {**row, 'error': f'worker exited with status {process.returncode}:\n{tail}'}
    return {**row, **json.loads(result_path.read_text())}


def run_rows(
    specs: Sequence[RowSpec],
    *,
    timeout_s: float,
    progress: Callable[[str], None],
    on_rows: Callable[[list[dict]], None] = lambda rows: None,
) -> list[dict]:
    """Runs the rows one after the other; `on_rows` sees the rows so far after each (to save them)."""
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix='convlstm_jax_benchmark_') as tmp:
        for index, spec in enumerate(specs):
            progress(f'[{index + 1}/{len(specs)}] {spec.label()} …')
            row = run_in_subprocess(spec, pathlib.Path(tmp), index, timeout_s)
            progress('    ' + _row_summary(row))
            rows.append(row)
            on_rows(add_ratios(rows))
    return rows


def _row_summary(row: dict[str, Any]) -> str:
    if 'error' in row:
        return 'failed: ' + _one_line(row['error'])
    return (
        f'{row["clips_per_s"]:.2f} clips/s, {row["step_s_median"]:.3f} s/step '
        f'({row["steps_measured"]} steps), compile {row["compile_s"]:.1f} s, '
        f'peak +{row["peak_mem_delta_bytes"] / 2**20:.0f} MiB'
    )


def add_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Speed and memory ratios against tf_keras on the same model and mode, where that row exists."""
    reference = {
        (r['model'], r['mode']): r for r in rows if r['framework'] == REFERENCE_FRAMEWORK and 'error' not in r
    }
    for row in rows:
        base = reference.get((row['model'], row['mode']))
        if base is None or 'error' in row:
            continue
        row['speedup_vs_tf_keras'] = row['clips_per_s'] / base['clips_per_s']
        if base['peak_mem_delta_bytes'] > 0:
            row['mem_vs_tf_keras'] = row['peak_mem_delta_bytes'] / base['peak_mem_delta_bytes']
    return rows


# ----------------------------------------------------------------------------------------------------------
# Reporting


TABLE_COLUMNS = (
    'model', 'mode', 'framework', 'dtype', 'remat', 'devices', 'input', 'clips/s', 'step s median (IQR)',
    'compile s', 'GFLOP/s', 'peak mem Δ MiB', '× tf_keras speed', '× tf_keras mem', 'load',
)  # fmt: skip


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """One line per row; ratios are against tf_keras on the same model and mode; load: 1-minute average."""
    lines = ['| ' + ' | '.join(TABLE_COLUMNS) + ' |', '|' + '---|' * len(TABLE_COLUMNS)]
    for row in rows:
        cells = [row['model'], row['mode'], row['framework'], row['dtype'], 'on' if row['remat'] else 'off']
        cells += [str(row.get('devices', 1)), row['input']]
        if 'error' in row:
            cells.append('failed: ' + _one_line(row['error']))
        else:
            cells += [
                f'{row["clips_per_s"]:.2f}',
                f'{row["step_s_median"]:.3f} ({row["step_s_iqr"]:.3f})',
                f'{row["compile_s"]:.1f}',
                f'{row["gflop_per_s"]:.0f}',
                f'{row["peak_mem_delta_bytes"] / 2**20:.0f}',
                _ratio(row.get('speedup_vs_tf_keras')),
                _ratio(row.get('mem_vs_tf_keras')),
                _ratio(row.get('load_avg_1m'), digits=1),
            ]
        cells += [''] * (len(TABLE_COLUMNS) - len(cells))
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def _ratio(value: float | None, digits: int = 2) -> str:
    return '' if value is None else f'{value:.{digits}f}'


def _one_line(text: str) -> str:
    """The exception line of a worker's log tail (the last line naming an error), for a table cell."""
    lines = text.strip().splitlines()
    errors = [line for line in lines if 'Error' in line or 'Exception' in line or 'timed out' in line]
    return (errors or lines)[-1].strip().replace('|', '/')[:160]


def header_lines(rows: Sequence[dict[str, Any]], specs: Sequence[RowSpec]) -> list[str]:
    """Date, machine, versions and the model FLOPs, for the top of the table."""
    versions: dict[str, str] = {}
    devices = set()
    for row in rows:
        versions.update(row.get('versions', {}))
        devices.update([row['device']] if 'device' in row else [])
    lines = [
        f'{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, '
        f'{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), devices: '
        + ', '.join(sorted(devices)),
        'versions: ' + ', '.join(f'{k} {v}' for k, v in sorted(versions.items())),
    ]
    spec = specs[0]
    for model in dict.fromkeys(s.model for s in specs):
        flops = flops_per_clip(load_config(model).model, spec.shape)
        lines.append(
            f'{model}: {flops["forward"] / 1e9:.2f} GFLOP forward, {flops["train"] / 1e9:.2f} GFLOP per '
            f'training step, per clip {tuple(spec.shape)}; batch {spec.batch}'
        )
    return lines


# ----------------------------------------------------------------------------------------------------------
# Command line


def _choices(valid: Sequence[str], *, special: Sequence[str] = ()) -> Callable[[str], list[str]]:
    """An argparse type: a comma list of `valid` names, or one of the `special` words alone (as a 1-list)."""

    def parse(text: str) -> list[str]:
        if text in special:
            return [text]
        values = [v.strip() for v in text.split(',') if v.strip()]
        if not values or any(v not in valid for v in values):
            words = ''.join(f' or {w}' for w in special)
            raise argparse.ArgumentTypeError(
                f'expected a comma list of {", ".join(valid)}{words}; got {text!r}'
            )
        return values

    return parse


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(d) for d in text.split(','))
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f'expected T,H,W,C positive integers; got {text!r}')
    return shape


def _device_counts(text: str) -> list[int]:
    try:
        counts = [int(v) for v in text.split(',')]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f'expected positive device counts like 1,2; got {text!r}')
    return counts


def _remat(text: str) -> list[bool]:
    return [v == 'on' for v in _choices(('off', 'on'))(text)]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog='python -m convlstm_jax.benchmark',
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        '--models', default='one_layer,two_layer', help='config names in configs/ or .py paths'
    )
    parser.add_argument(
        '--frameworks',
        default='all',
        type=_choices(FRAMEWORKS, special=('all',)),
        help=f'comma list of {", ".join(FRAMEWORKS)}; all: those installed here',
    )
    parser.add_argument('--modes', default='train,infer', type=_choices(MODES), help='train, infer or both')
    parser.add_argument(
        '--dtypes',
        default='float32,bfloat16',
        type=_choices(DTYPES),
        help='compute dtypes of the convlstm_jax rows (parameters, BatchNorm and loss stay float32)',
    )
    parser.add_argument(
        '--remat', default='on', type=_remat, help='convlstm_jax training rows: off, on or off,on'
    )
    parser.add_argument(
        '--devices',
        default='1',
        type=_device_counts,
        help='convlstm_jax rows: devices the step is pmapped over, e.g. 1,2; on a CPU each row splits the '
        'CPU into that many devices (--cpu_devices of the training job)',
    )
    parser.add_argument('--unroll', type=int, default=None, help="scan unrolling (None: the config's)")
    parser.add_argument(
        '--pipeline',
        default='auto',
        type=_choices(PIPELINE_BACKENDS, special=('auto', 'none')),
        help='input pipeline backends of the end-to-end rows; auto: tfdata where TensorFlow is installed, '
        'else numpy',
    )
    parser.add_argument('--shape', default=DEFAULT_SHAPE, type=_shape, help='clip shape T,H,W,C')
    parser.add_argument('--batch', type=int, default=4)
    parser.add_argument('--steps', type=int, default=10, help='timed steps per row')
    parser.add_argument('--warmup', type=int, default=2, help='untimed steps first (the first one compiles)')
    parser.add_argument(
        '--time-budget-s',
        type=float,
        default=300.0,
        help='per row, warm-up and timed steps each stop early after this long (one step at least)',
    )
    parser.add_argument('--row-timeout-s', type=float, default=3600.0, help='a row running longer is killed')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--json', type=pathlib.Path, default=None, help='write the rows to this JSON file')
    parser.add_argument('--worker', nargs=2, metavar=('SPEC', 'RESULT'), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.batch < 1 or args.steps < 1 or args.warmup < 0:
        parser.error(
            f'expected --batch ≥ 1, --steps ≥ 1, --warmup ≥ 0; got {args.batch}, {args.steps}, {args.warmup}'
        )
    uneven = [count for count in args.devices if args.batch % count]
    if uneven:
        parser.error(f'--batch {args.batch} does not split evenly over {uneven} devices')
    return args


def resolve_frameworks(requested: list[str]) -> list[str]:
    """The requested frameworks in table order; 'all' means those installed, others must be installed."""
    installed = available_frameworks()
    if requested == ['all']:
        return [f for f in FRAMEWORKS if f in installed]
    missing = [f for f in requested if f not in installed]
    if missing:
        needs = '; '.join(f'{f} needs {", ".join(FRAMEWORK_PACKAGES[f])}' for f in missing)
        raise SystemExit(f'error: not installed here: {needs}')
    return [f for f in FRAMEWORKS if f in requested]


def resolve_pipelines(requested: list[str]) -> list[str]:
    if requested == ['none']:
        return []
    if requested == ['auto']:
        return ['tfdata' if importlib.util.find_spec('tensorflow') is not None else 'numpy']
    return requested


def worker_main(spec_path: str, result_path: str) -> None:
    fields = json.loads(pathlib.Path(spec_path).read_text())
    spec = RowSpec(**{**fields, 'shape': tuple(fields['shape'])})
    result = run_row(spec)
    io.write_json(result_path, result)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    if args.worker:
        worker_main(*args.worker)
        return []
    models = [m.strip() for m in args.models.split(',') if m.strip()]
    for model in models:
        load_config(model)  # unknown names fail here, before any row runs
    specs = plan_rows(
        models=models,
        frameworks=resolve_frameworks(args.frameworks),
        modes=args.modes,
        dtypes=args.dtypes,
        remat=args.remat,
        pipelines=resolve_pipelines(args.pipeline),
        devices=args.devices,
        batch=args.batch,
        shape=args.shape,
        warmup=args.warmup,
        steps=args.steps,
        time_budget_s=args.time_budget_s,
        seed=args.seed,
        unroll=args.unroll,
    )
    if not specs:
        raise SystemExit('error: no rows to run (check --frameworks and --modes)')
    rows = run_rows(
        specs,
        timeout_s=args.row_timeout_s,
        progress=lambda message: print(message, file=sys.stderr, flush=True),
        on_rows=(lambda rows: io.write_json(args.json, list(rows))) if args.json else (lambda rows: None),
    )
    print('\n'.join(header_lines(rows, specs)) + '\n\n' + markdown_table(rows))
    return rows


if __name__ == '__main__':
    main()
