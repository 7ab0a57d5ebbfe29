"""The 2021 recipe as one ml_collections config, the variants every model config shares, and the one loader
every command uses.

`configs/one_layer.py` and `configs/two_layer.py` start from `base_config()`, set the model, and call
`apply_variant(config, arg)` so that `--config configs/two_layer.py:quick` works for both.

The loader is ml_collections' `config_flags`, as in the Flax examples: `define_config_flag()` gives
`--config FILE[:variant]` plus `--config.FIELD=VALUE` overrides (`config_from_flag` returns the result,
checked);
`define_config_flag(from_workdir=True)` gives the overrides alone, for commands that read a workdir, and
`config_from_workdir(DIR, holder)` applies them to the workdir's config.json, refusing any that would change
the architecture the checkpoint was trained with.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
from absl import flags
from ml_collections import config_flags

from convlstm_jax.config_checks import (  # noqa: F401 (commands use them as config.X)
    ARCHITECTURE_FIELDS,
    DROPOUT_FIELDS,
    PER_MEMBER_FIELDS,
    ConfigError,
    check,
    is_architecture,
)

WORKDIR_CONFIG = 'config.json'
_FILE_HELP = (
    'Config file, with an optional variant after a colon: configs/two_layer.py, configs/two_layer.py:quick '
    '(or :smoke). Override any field with --config.FIELD=VALUE; --print_config lists them.'
)
_WORKDIR_HELP = (
    "The training config comes from the workdir's config.json. Override data fields (and others that do not "
    'change the architecture) with --config.FIELD=VALUE, e.g. --config.data.path=other.mp4.'
)


# Errors met while defining the config flag (before flag parsing could report them), for cli.flags_parser.
definition_errors: list[Exception] = []


def base_config() -> ml_collections.ConfigDict:
    """Defaults: the 2021 training recipe (reference-system.md) on the built-in synthetic tank."""
    c = ml_collections.ConfigDict()
    c.seed = 0  # the data order (shuffles, flips); and the initialisation unless init_seed says otherwise
    # A population (population.py): K members trained in one step, member i initialised from init_seed + i
    # (-1: config.seed), sharing every batch. member_overrides: {field: K values} for the fields in
    # PER_MEMBER_FIELDS, e.g. {'learning_rate': (1e-3, 3e-4)}.
    c.population = 1
    c.init_seed = -1
    c.member_overrides = ml_collections.FieldReference({}, field_type=object)

    # The classifier (models.py). `filters` has one entry per ConvLSTM2D layer.
    c.model = ml_collections.ConfigDict()
    c.model.filters = (16,)
    c.model.kernel_size = 3
    c.model.padding = 'valid'
    c.model.activation = 'tanh'
    c.model.recurrent_activation = 'hard_sigmoid'
    c.model.use_bias = False
    c.model.dropout = 0.0
    c.model.recurrent_dropout = 0.0
    c.model.batchnorm_last = True  # BatchNorm after the last ConvLSTM (the 1-layer model has it).
    c.model.compute_dtype = 'float32'  # 'bfloat16': bf16 convolutions, fp32 params, BatchNorm and loss.
    c.model.remat = True  # Recompute the gates in the backward pass: less memory, and faster on XLA:CPU.
    c.model.unroll = 1  # Time steps per scan iteration.

    # Data (convlstm_jax/data). With source 'synthetic' a deterministic tank is generated locally.
    c.data = ml_collections.ConfigDict()
    c.data.source = 'synthetic'  # 'synthetic' | 'frames' (a folder per split) | 'video' | 'tfds'
    c.data.path = ''  # frames root or video file(s) for the non-synthetic sources
    c.data.data_dir = ''  # where prepared datasets are cached ('' = ~/.cache/convlstm_jax)
    c.data.height = 120
    c.data.width = 160
    c.data.time_steps = 30  # n: time steps per clip
    c.data.frames_per_step = 4  # frames stacked as channels per time step (1 = single-channel form)
    c.data.horizon = 45  # h: frames ahead in which a burst must start
    c.data.label_b = 0.1
    c.data.label_c = 0.001
    c.data.resize = 'nearest'  # 'nearest' (as PIL, reproduces 2021) | 'area'
    c.data.pipeline = 'tfdata'  # 'tfdata' | 'numpy' (TensorFlow-free) | 'device' (clips cut in the step)
    c.data.flips = True
    c.data.synthetic = ml_collections.ConfigDict()
    c.data.synthetic.seed = 0
    c.data.synthetic.num_fish = 6
    c.data.synthetic.split_frames = (44956, 3593, 5367)  # train / validation / test, as in 2021
    # Sources and storage (data/sources.py, data/dataset.py; the data helper's fields).
    c.data.fps = 30.0  # frame rate of a frames folder (videos and the synthetic tank carry their own)
    c.data.horizon_seconds = 0.0  # > 0: the horizon in seconds, converted with the source's frame rate
    c.data.split_fractions = (0.834, 0.067, 0.099)  # a video cut chronologically, in the 2021 proportions
    c.data.label_file = ''  # '' = the ỹ rule; else per-frame 0/1 labels (.npy/.csv) beside each recording
    c.data.memmap_bytes = 2**31  # a split with more frame bytes is memory-mapped from its cached .npy
    c.data.write_tfds = False  # True: load_splits also writes the TFDS dataset (or `prepare --tfds`)

    # Training (train.py).
    c.batch_size = 4  # global batch over all devices and processes
    c.eval_batch_size = 16
    c.num_epochs = 5
    c.steps_per_epoch = -1  # -1: one pass over the training samples
    c.learning_rate = 8e-5
    c.adam_b1 = 0.9
    c.adam_b2 = 0.999
    c.adam_eps = 1e-7  # tf.keras semantics: added to sqrt(v) before bias correction
    # The learning rate's schedule (optim.py): a linear warm-up over warmup_steps, then 'constant' or a
    # 'cosine' decay to final_learning_rate_fraction × learning_rate at the run's last step. 2021: constant.
    c.lr_schedule = 'constant'
    c.warmup_steps = 0
    c.final_learning_rate_fraction = 0.0
    c.clip_global_norm = 0.0  # > 0: gradients clipped to this global norm before Adam (0: off, as in 2021)
    # Weights of class 0 and 1, or 'auto' (2021 rule from train labels). A FieldReference of type object, so
    # that a pair and 'auto' are both accepted (a plain tuple field rejects a string override).
    c.class_weights = ml_collections.FieldReference((0.133, 0.866), field_type=object)
    c.l1 = 0.0
    c.l2 = 0.0
    # Parameters the L1L2 penalty applies to, as glob patterns over '/'-joined parameter paths. Keras's
    # `kernel_regularizer` on ConvLSTM2D covers the input kernels only (recurrent_regularizer is separate).
    c.regularized_kernels = ('convlstm_*/kernel',)
    c.checkpoint_every_steps = 0  # 0: checkpoints at evaluations (and on a stop signal) only
    # Also a checkpoint after this many minutes of training since the last one (0: never), so that a hard kill
    # (kill -9, out of memory) loses at most that.
    c.checkpoint_every_minutes = 10.0
    c.eval_every_steps = 0  # 0: evaluate at the end of each epoch only
    c.log_every_steps = 50
    c.keep_checkpoints = 2  # latest N, besides the best by validation loss and by validation AUC
    c.init_from = ''  # a model directory (e.g. an imported Keras checkpoint) to start from
    return c


def apply_variant(c: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
    """`quick`: learns the synthetic tank on a 2-core CPU in ~10 minutes. `smoke`: a few steps, for tests."""
    if not arg:
        return c
    if arg == 'quick':
        # Frames at 0.3× the 2021 size; 10 time steps of 8 frames: 80 frames of history (enough to see two
        # fish stay together before a chase) at half the recurrent steps of 20 × 4, so 2.3× the clips/s.
        # Measured over seeds (docs/reproduction.md): biases, a 12.5× higher peak learning rate with a warm-up
        # and a cosine decay, global-norm clipping, 1,500 steps of batch 8 on a 60,000-frame recording. The
        # small validation split is for selection; score on a fresh tank.
        c.data.height, c.data.width = 36, 48
        c.data.time_steps = 10
        c.data.frames_per_step = 8
        c.data.synthetic.split_frames = (60000, 2000, 2000)
        c.model.use_bias = True
        c.batch_size = 8
        c.num_epochs = 5
        c.steps_per_epoch = 300
        c.learning_rate = 1e-3
        c.lr_schedule = 'cosine'
        c.warmup_steps = 50
        c.clip_global_norm = 1.0
        c.class_weights = 'auto'
        c.eval_every_steps = 0
    elif arg == 'smoke':
        c.data.height, c.data.width = 16, 20
        c.data.time_steps = 4
        c.data.horizon = 6
        c.data.synthetic.split_frames = (120, 60, 60)
        c.data.write_tfds = False  # importing TensorFlow alone takes seconds
        c.batch_size = 4
        c.eval_batch_size = 8
        c.num_epochs = 1
        c.steps_per_epoch = 3
        c.log_every_steps = 1
    else:
        raise ValueError(f'unknown config variant {arg!r}: expected one of quick, smoke')
    return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """This file as a config file: the base recipe with a variant (`--config convlstm_jax/config.py:quick`),
    the default of commands whose config only needs the data fields (data.prepare)."""
    return apply_variant(base_config(), arg)


# ---------------------------------------------------------------------------------------------------------
# The loader


def define_config_flag(
    *,
    from_workdir: bool = False,
    flag_values: flags.FlagValues = flags.FLAGS,
    argv: Sequence[str] | None = None,
    default: str | None = None,
) -> flags.FlagHolder:
    """`--config FILE[:variant]` with `--config.FIELD=VALUE` overrides; with `from_workdir`, the overrides
    alone, typed by `base_config()`, for `config_from_workdir`. config_flags finds the overrides in `argv`
    (the whole command line, program name first; default sys.argv)."""
    argv = None if argv is None else list(argv)
    if not from_workdir:
        return config_flags.DEFINE_config_file(
            'config', default, _FILE_HELP, flag_values=flag_values, sys_argv=argv
        )
    try:  # an inline config takes its overrides from the command line here, at definition
        holder = config_flags.DEFINE_config_dict(
            'config', base_config(), _WORKDIR_HELP, flag_values=flag_values, sys_argv=argv
        )
    except (AttributeError, KeyError) as e:  # an override naming no field: reported by cli's flag parsing
        definition_errors.append(e)
        program = sys.argv[:1] if argv is None else argv[:1]
        holder = config_flags.DEFINE_config_dict(
            'config', base_config(), _WORKDIR_HELP, flag_values=flag_values, sys_argv=program
        )
    flag_values['config'].default_as_str = None  # --help: not the whole base config as YAML
    return holder


def load_config_file(argument: str) -> ml_collections.ConfigDict:
    """`FILE[:variant]` (e.g. 'configs/two_layer.py:quick') through the same loader as `--config`, checked;
    ConfigError in one line (for the commands that load configs by name, such as the benchmark)."""
    values = flags.FlagValues()
    argv = ['load_config_file', f'--config={argument}']
    holder = define_config_flag(flag_values=values, argv=argv)
    try:
        values(argv)
    except flags.Error as e:
        lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
        raise ConfigError(f'cannot load the config file {argument}: {lines[-1] if lines else e}') from None
    except Exception as e:  # a config file that does not run (SyntaxError, NameError, …)
        raise ConfigError(f'cannot load the config file {argument}: {type(e).__name__}: {e}') from None
    return config_from_flag(holder)


def config_from_flag(holder: flags.FlagHolder) -> ml_collections.ConfigDict:
    """The config `--config FILE[:variant]` loaded, overrides applied, checked; ConfigError in one line."""
    config = holder.value
    if config is None:
        raise ConfigError('no config given: pass --config FILE[:variant], e.g. --config configs/two_layer.py')
    try:
        config.keys()  # config_flags defers a file's load error to first use
    except OSError as e:
        reason = str(e).strip().splitlines()[-1].strip()
        raise ConfigError(f'cannot load the config file {config_file_argument(holder)}: {reason}') from None
    check(config)
    return config


def overrides_given(holder: flags.FlagHolder) -> dict[str, Any]:
    """The `--config.FIELD=VALUE` overrides on the command line, {dotted field: value}."""
    return dict(config_flags.get_override_values(holder._flagvalues[holder.name]))  # noqa: SLF001


def config_file_argument(holder: flags.FlagHolder) -> str:
    """What `--config` was given, e.g. 'configs/two_layer.py:quick'."""
    return holder._flagvalues[holder.name].config_filename  # noqa: SLF001 (absl keeps flags there)


def default_workdir(config_argument: str) -> pathlib.Path:
    """runs/<config file stem>, with _<variant> for a colon variant: runs/two_layer, runs/two_layer_quick."""
    path, _, variant = config_argument.partition(':')
    stem = pathlib.Path(path).stem
    return pathlib.Path('runs') / (f'{stem}_{variant}' if variant else stem)


def find_workdir_config(path: str | os.PathLike) -> pathlib.Path | None:
    """config.json of the workdir at `path`, or of the workdir holding the checkpoint step at `path`."""
    path = pathlib.Path(path)
    for folder in (path, path.parent, path.parent.parent):
        if (folder / WORKDIR_CONFIG).is_file():
            return folder / WORKDIR_CONFIG
    return None


def config_from_workdir(
    path: str | os.PathLike,
    holder: flags.FlagHolder | None = None,
    *,
    spec: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> ml_collections.ConfigDict:
    """The training config of the workdir (or checkpoint step) at `path`, with the overrides `holder` parsed
    (or `overrides`, flat 'data.path' keys). Without a config.json, `spec` (a model.json) supplies the model
    and input fields. Overrides of ARCHITECTURE_FIELDS are refused: the checkpoint fixes them."""
    config = base_config()
    found = find_workdir_config(path)
    if found is not None:
        try:
            values = json.loads(found.read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f'cannot read {found}: {e}') from None
        merge(config, values, str(found))
    elif spec is not None:
        merge(config.model, dict(spec.get('model', {})), f'{path} model.json model')
        contract = {k: v for k, v in dict(spec.get('input', {})).items() if k in config.data}
        merge(config.data, contract, f'{path} model.json input')
    else:
        raise ConfigError(f'no {WORKDIR_CONFIG} in {path} or the workdir above it: is it a training workdir?')
    given = dict(overrides or {})
    if holder is not None:
        given.update(overrides_given(holder))
    refused = [name for name in given if is_architecture(name)]
    if refused:
        raise ConfigError(
            f'--config.{refused[0]} would change the architecture of the checkpoint in {path}: the model '
            'fields and data.height, width, time_steps and frames_per_step are fixed by it (train a new '
            'workdir to change them)'
        )
    for name, value in given.items():
        set_field(config, name, value)
    check(config)
    return config


def merge(config: ml_collections.ConfigDict, values: Mapping[str, Any], where: str) -> None:
    """Sets nested `values` (from JSON) into `config`, lists back to tuples; unknown fields are refused."""
    for key, value in values.items():
        if key not in config:
            raise ConfigError(f'{where}: unknown config field {key!r}')
        if isinstance(value, Mapping) and isinstance(config[key], ml_collections.ConfigDict):
            merge(config[key], value, f'{where}.{key}')
        else:
            set_field(config, key, value)


def set_field(config: ml_collections.ConfigDict, name: str, value: Any) -> None:
    """`config[name] = value` for a dotted name, with JSON lists as tuples and one-line errors."""
    *parents, leaf = name.split('.')
    target = config
    for part in parents:
        target = target[part]
    if leaf not in target:
        raise ConfigError(f'unknown config field {name!r}')
    value = _tuples(value)
    try:
        target[leaf] = value
    except TypeError as e:
        raise ConfigError(f'config field {name}: {e}') from None


def _tuples(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _tuples(v) for key, v in value.items()}
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value
