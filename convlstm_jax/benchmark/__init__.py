"""Training and inference throughput of the ConvLSTM classifiers against Keras and PyTorch, on one machine.

    python -m convlstm_jax.benchmark --json bench.json
    python -m convlstm_jax.benchmark --models two_layer --frameworks convlstm_jax,tf_keras,torch

Every row (framework × model × mode × dtype × remat × devices × population × input) runs in a fresh
subprocess, because frameworks disturb each other (thread pools, allocators, XLA flags) and a process's peak
memory is only clean in a process of its own. All rows build the same model from `configs/<model>.py` at the
same clip shape and batch, and feed it the same in-memory data: a few seeded uint8 batches, regenerated
identically by every worker. Keras gets them scaled to float32 once, before timing, as the 2021 pipeline fed
it; this project and the torch twin get uint8 and scale on the device. The training step is the 2021 one,
class-weighted binary cross-entropy and Adam: for Keras `train_on_batch` after the 2021 `compile` (with its
BCE and AUC metrics), for torch the same loss and `torch.optim.Adam`, for this project the training step of
`convlstm_jax.train`, pmapped over `--devices` devices (on a CPU, the CPU split into that many: one per core
runs the shards side by side; 1 by default), and with `--population K` vmapped over K members as
`--config.population=K` trains them (clips/s then counts every member's clips, K × batch per step; the other
frameworks run one model). Separate `pipeline-*` rows time this project's training step fed by its own input
pipeline (`data/pipeline.py`) from a frame array, instead of from batches already in memory.

Step times are wall-clock times of finished steps (the result is waited for), after warm-up steps.
`compile_s` is the first step's time minus the median step time, one definition for every framework. Memory,
on CPU: the peak resident set size (VmHWM, reset after warm-up) during the timed steps, and its rise above the
process just before the model was built (`peak_mem_delta_bytes`: parameters, optimizer state, activations,
workspace); on a GPU: the device allocator's peak. FLOPs are an analytic count of the convolutions
(`flops_per_clip`); achieved GFLOP/s is that count times clips/s, so work recomputed by remat is not credited.

The rooms: `harness` (row spec, config, data, FLOPs, timing, memory), `jax_rows` (this project's rows and
their input modes), `peers` (tf_keras, Keras 3, torch), `keras_models` and `torch_models` (the 2021 models in
those frameworks), `runner` (planning, worker subprocesses), `table` (the report), `cli`. Importing the
package loads neither JAX, TensorFlow nor torch: each worker imports its framework in its own subprocess.
"""

from convlstm_jax.benchmark.cli import main, parse_args
from convlstm_jax.benchmark.harness import (
    DEFAULT_SHAPE,
    FRAMEWORKS,
    MODES,
    REPO_ROOT,
    RowSpec,
    flops_per_clip,
    load_config,
)
from convlstm_jax.benchmark.jax_rows import step_devices
from convlstm_jax.benchmark.runner import plan_rows, run_in_subprocess, run_rows
from convlstm_jax.benchmark.table import markdown_table

__all__ = [
    'DEFAULT_SHAPE',
    'FRAMEWORKS',
    'MODES',
    'REPO_ROOT',
    'RowSpec',
    'flops_per_clip',
    'load_config',
    'main',
    'markdown_table',
    'parse_args',
    'plan_rows',
    'run_in_subprocess',
    'run_rows',
    'step_devices',
]
