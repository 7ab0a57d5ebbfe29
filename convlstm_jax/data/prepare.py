"""Builds a prepared dataset (.npy arrays; TFDS if asked) from a source; lists and clears the cache.

    python -m convlstm_jax.data.prepare --config.data.data_dir=~/data/fish
    python -m convlstm_jax.data.prepare --config configs/two_layer.py:quick --tfds
    python -m convlstm_jax.data.prepare --config.data.source=frames --config.data.path=/data/fish2021
    python -m convlstm_jax.data.prepare --config.data.source=video --config.data.path=tank.mp4 \\
        --config.data.resize=area --config.data.horizon_seconds=1.5
    python -m convlstm_jax.data.prepare --list                   # entries, what they hold, sizes
    python -m convlstm_jax.data.prepare --clear synthetic-0123456789abcdef   # one entry; --clear alone: all

The data settings are the config's `data` fields, from `--config FILE[:variant]` (default: the base recipe,
convlstm_jax/config.py) with `--config.data.FIELD=VALUE` overrides; training with the same config finds the
dataset in the cache instead of building it again.
"""

from __future__ import annotations

import pathlib
import sys
from collections.abc import Sequence
from typing import Any

from absl import flags

from convlstm_jax import cli
from convlstm_jax import config as config_lib
from convlstm_jax.data import cache, dataset


def define_flags(flag_values: flags.FlagValues, argv: Sequence[str]) -> None:
    """The options of the command, in `flag_values` (see cli.run)."""
    config_lib.define_config_flag(flag_values=flag_values, argv=argv, default=config_lib.__file__)
    cli.define_common_flags(flag_values, cpu_devices=False)
    f = flag_values
    flags.DEFINE_bool(
        'tfds', False, 'Also write the TFDS dataset (tfds.load), also into a built entry.', flag_values=f
    )
    flags.DEFINE_bool('list', False, 'List the cache: entries, contents, sizes.', flag_values=f)
    flags.DEFINE_bool(
        'clear', False, 'Remove the cache entry named after the options, or all (none named).', flag_values=f
    )


def run(f: flags.FlagValues, entry: str | None) -> None:
    config = cli.load_config_or_exit(cli.config_holder(f))
    cli.print_config_and_exit_if_asked(config, f)
    if entry is not None and not f.clear:
        sys.exit(f'error: unexpected argument {entry!r}: only --clear takes one (a cache entry)')
    data = config.data
    root = cache.cache_root(data)
    try:
        if f.list or f.clear:
            if f.clear:
                for removed in cache.clear(root, entry or 'all'):
                    print(f'removed {removed.path} ({removed.size_mb:.1f} MB)')
            if f.list:
                print_cache(root)
            return
        folder = dataset.prepare(data, progress=True, write_tfds=f.tfds)
        splits = dataset.read_splits(folder, data)
    except ValueError as error:
        sys.exit(f'error: {error}')
    print(f'prepared dataset: {folder}')
    for name, split in splits.items():
        positives = split.labels[split.samples].mean() if len(split.samples) else float('nan')
        print(
            f'  {name}: {len(split.frames)} frames {split.frames.shape[1:]}, {len(split.samples)} samples, '
            f'{positives:.1%} positive, {split.recording.max() + 1} recording(s)'
        )
    if (folder / 'tfds').is_dir():
        print(
            f"TFDS: tfds.load('convlstm_frames', data_dir='{folder / 'tfds'}') after importing "
            'convlstm_jax.data.tfds_builder'
        )


def print_cache(root: pathlib.Path) -> None:
    found = cache.entries(root)
    total = sum(entry.size_bytes for entry in found) / 1e6
    print(f'cache {root}: {len(found)} entr{"y" if len(found) == 1 else "ies"}, {total:.1f} MB')
    for entry in found:
        print(f'  {entry.name}  {entry.size_mb:9.1f} MB  {entry.description}')


def main(argv: Sequence[str] | None = None) -> Any:
    """The command with `argv` (the arguments, without the program name; default sys.argv[1:])."""
    return cli.run(run, __doc__, define_flags, argv, positional=('[ENTRY]',))


if __name__ == '__main__':
    sys.exit(main())
