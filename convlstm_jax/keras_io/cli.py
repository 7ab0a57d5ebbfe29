"""Import a Keras checkpoint into a model directory (see checkpoints.py), the format every command reads.

    python -m convlstm_jax.keras_io SRC --out DIR [--config configs/one_layer.py[:variant]] [--config.FIELD=V]

SRC is one of
- a tf.keras 2 SavedModel directory (the two 2021 checkpoints), read with tf_keras;
- a Keras 2 `.h5` (a whole model, or weights only with --config), read with h5py;
- a Keras 3 `.keras` archive, read with zipfile + h5py;
- a Keras 3 `.weights.h5` (weights only: needs --config), read with h5py.
Only the SavedModel needs TensorFlow. The architecture comes from the file where the file holds it and must be
one this project builds: ConvLSTM2D → (2×2 max pooling per step → BatchNorm → ConvLSTM2D)* → [BatchNorm] →
GlobalMaxPooling2D → Dense(1, sigmoid), the ConvLSTM layers sharing one kernel size, padding and activations.
`hard_sigmoid` means clip(0.2x + 0.5, 0, 1) in Keras 2 files and relu6(x + 3) / 6 in Keras 3 files
('hard_sigmoid_keras3' here); with a Keras 3 file the --config's 'hard_sigmoid' is read the Keras 3 way too.
--config also sets the input contract (frame size, time steps, frames per step, resize, horizon) and the
compute options; without it the contract is the file's input shape with the 2021 conventions (pixels / 255,
nearest-neighbour resize, horizon 45).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import jax
import numpy as np
from absl import flags

from convlstm_jax import checkpoints, cli
from convlstm_jax import config as config_lib
from convlstm_jax.keras_io.convert import import_keras


def define_flags(flag_values: flags.FlagValues, argv: Sequence[str]) -> None:
    """The options of the command, in `flag_values` (see cli.run)."""
    config_lib.define_config_flag(flag_values=flag_values, argv=argv)
    cli.define_common_flags(flag_values, cpu_devices=False)
    flags.DEFINE_string(
        'out',
        None,
        'Model directory to write (replaced if it exists).',
        flag_values=flag_values,
        required=True,
    )


def run(f: flags.FlagValues, src: str) -> int:
    """Imports SRC into --out; returns 2, saying why, when SRC does not fit (nothing is written then)."""
    config = cli.load_config_or_exit(cli.config_holder(f)) if f['config'].value is not None else None
    if config is not None:
        cli.print_config_and_exit_if_asked(config, f)
    elif f.print_config:
        sys.exit('error: --print_config needs --config')
    try:
        spec, variables = import_keras(src, config)
    except (ValueError, FileNotFoundError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    out = checkpoints.save_model_dir(f.out, spec, variables)
    count = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(variables['params']))
    print(f'wrote {out}: {spec["model"]["filters"]} filters, {count:,} parameters, input {spec["input"]}')
    return 0


def main(argv: list[str] | None = None) -> int:
    """The command with `argv` (SRC and the options, without the program name; default sys.argv[1:])."""
    return cli.run(run, __doc__, define_flags, argv, positional=('SRC',))
