"""What a benchmark row is and how it is measured: the row spec, its config and data, FLOPs, timing, memory.

Every worker, whatever its framework, builds its row from these, so that all rows measure the same thing.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import pathlib
import platform
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

FRAMEWORKS = (  # in table order
    'tf_keras',
    'keras3-tensorflow',
    'keras3-jax',
    'keras3-torch',
    'torch',
    'torch-compile',
    'convlstm_jax',
)
KERAS3_BACKENDS = {'keras3-tensorflow': 'tensorflow', 'keras3-jax': 'jax', 'keras3-torch': 'torch'}
FRAMEWORK_PACKAGES = {
    'convlstm_jax': ('jax', 'flax', 'optax'),
    'tf_keras': ('tensorflow', 'tf_keras'),
    'keras3-tensorflow': ('keras', 'tensorflow'),
    'keras3-jax': ('keras', 'jax'),
    'keras3-torch': ('keras', 'torch'),
    'torch': ('torch',),
    'torch-compile': ('torch',),
}
TORCH_FRAMEWORKS = ('torch', 'torch-compile')
MODES = ('train', 'infer')
DTYPES = ('float32', 'bfloat16')
REFERENCE_FRAMEWORK = 'tf_keras'
DEFAULT_SHAPE = (30, 120, 160, 4)
DEFAULT_BATCH = 4
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIGS_DIR = REPO_ROOT / 'configs'
DISTINCT_BATCHES = 2  # cycled through, so that no step sees the previous step's input
POSITIVE_FRACTION = 0.134  # of the labels, as in the 2021 training split
CLIPS_COUNTED = 'per member: population × batch / median step time'  # what clips_per_s counts


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
    input: str = 'memory'  # 'memory' (in-memory batches), 'pipeline-<numpy|tfdata>', 'device': INPUT_MODES
    batch: int = DEFAULT_BATCH
    shape: tuple[int, ...] = DEFAULT_SHAPE
    warmup: int = 2
    steps: int = 10
    time_budget_s: float = 300.0
    seed: int = 0
    unroll: int | None = None
    devices: int = 1  # convlstm_jax: devices the step is pmapped over (on a CPU: the CPU split into these)
    population: int = 1  # convlstm_jax: models in one vmapped step (config.population)
    measure: str = 'time'  # 'time' the steps, or 'compile' only: the compiled program's memory analysis

    def label(self) -> str:
        parts = [self.framework, self.model, self.mode, self.dtype]
        parts += ['remat'] if self.remat else []
        parts += [f'{self.devices} devices'] if self.devices > 1 else []
        parts += [f'population {self.population}'] if self.population > 1 else []
        parts += [self.input] if self.input != 'memory' else []
        parts += [f'batch {self.batch}'] if self.batch != DEFAULT_BATCH else []
        parts += ['compiled memory'] if self.measure == 'compile' else []
        return ' '.join(parts)


def load_config(model: str) -> Any:
    """`configs/<model>.py`, or the config file `model` (a path ending in .py), loaded and checked by the
    loader every `--config` goes through."""
    path = pathlib.Path(model) if model.endswith('.py') else CONFIGS_DIR / f'{model}.py'
    if not path.is_file():
        known = sorted(p.stem for p in CONFIGS_DIR.glob('*.py'))
        raise ValueError(f'unknown model {model!r}: expected one of {known} or the path of a config file')
    from convlstm_jax import config as config_lib

    return config_lib.load_config_file(str(path))


def row_config(spec: RowSpec) -> Any:
    """The model's config with the row's compute dtype, remat and unrolling."""
    config = load_config(spec.model)
    config.model.compute_dtype = spec.dtype
    config.model.remat = spec.remat
    if spec.unroll is not None:
        config.model.unroll = spec.unroll
    config.batch_size = spec.batch
    config.population = spec.population
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
    """The row's numbers from its step times and memory probe. A population's clips/s counts every member's
    clips (each member trains on, or runs, every clip of the batch): population × batch / step time."""
    times = np.asarray(timing['step_times_s'])
    median = float(np.median(times))
    q25, q75 = np.percentile(times, [25, 75])
    clips_per_s = spec.population * spec.batch / median
    gflop_per_clip = (
        flops_per_clip(model_config, spec.shape)['train' if spec.mode == 'train' else 'forward'] / 1e9
    )
    peak = memory.peak()
    return {
        'clips_per_s': clips_per_s,
        'clips_counted': CLIPS_COUNTED,
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


def versions(*modules: str) -> dict[str, str]:
    """Versions of the given modules that this process has imported."""
    found = {'python': platform.python_version()}
    for name in modules:
        if name in sys.modules:
            found[name] = str(getattr(sys.modules[name], '__version__', '?'))
    return found
