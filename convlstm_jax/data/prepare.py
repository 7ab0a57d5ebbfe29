"""Builds a prepared dataset (.npy arrays; TFDS if asked) from a source; lists and clears the cache.

    python -m convlstm_jax.data.prepare --source synthetic --data_dir ~/data/fish
    python -m convlstm_jax.data.prepare --source synthetic --variant quick --data_dir ~/data/fish --tfds
    python -m convlstm_jax.data.prepare --source frames --path /data/fish2021 --height 120 --width 160
    python -m convlstm_jax.data.prepare --source video --path tank.mp4 --resize area --horizon_seconds 1.5
    python -m convlstm_jax.data.prepare --list                   # entries, what they hold, sizes
    python -m convlstm_jax.data.prepare --clear synthetic-0123456789abcdef   # one entry; --clear alone: all

The defaults are those of `config.base_config().data` (after `--variant`); training with the same data
settings finds the dataset in the cache instead of building it again.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from convlstm_jax import config as config_lib
from convlstm_jax.data import cache, dataset


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog='python -m convlstm_jax.data.prepare', description=__doc__.split('\n')[0]
    )
    parser.add_argument('--source', choices=('synthetic', 'frames', 'video', 'tfds'), default='synthetic')
    parser.add_argument(
        '--path', default='', help='frames root (train/ validation/ test/), video file(s), folder'
    )
    parser.add_argument('--data_dir', default='', help='cache root (default ~/.cache/convlstm_jax)')
    parser.add_argument('--variant', default='', help="config variant: 'quick' or 'smoke'")
    parser.add_argument('--height', type=int)
    parser.add_argument('--width', type=int)
    parser.add_argument('--resize', choices=('nearest', 'area'))
    parser.add_argument('--time_steps', type=int, help='n (history = n · frames_per_step frames)')
    parser.add_argument('--frames_per_step', type=int)
    parser.add_argument('--horizon', type=int, help='h in frames')
    parser.add_argument('--horizon_seconds', type=float, help='h in seconds (converted with the frame rate)')
    parser.add_argument('--fps', type=float, help='frame rate of a frames folder')
    parser.add_argument('--split_fractions', type=float, nargs=3, metavar=('TRAIN', 'VALIDATION', 'TEST'))
    parser.add_argument('--label_file', help='per-frame labels beside each recording, instead of the ỹ rule')
    parser.add_argument('--synthetic_frames', type=int, nargs=3, metavar=('TRAIN', 'VALIDATION', 'TEST'))
    parser.add_argument('--seed', type=int, help='synthetic tank seed')
    parser.add_argument(
        '--tfds', action='store_true', help='also write the TFDS dataset (tfds.load), also into a built entry'
    )
    parser.add_argument('--list', action='store_true', help='list the cache: entries, contents, sizes')
    parser.add_argument(
        '--clear', nargs='?', const='all', metavar='ENTRY', help='remove one cache entry, or all (no ENTRY)'
    )
    return parser.parse_args(argv)


def data_config(args: argparse.Namespace):
    data = config_lib.apply_variant(config_lib.base_config(), args.variant or None).data
    data.source, data.path, data.data_dir = args.source, args.path, args.data_dir
    for field in (
        'height',
        'width',
        'resize',
        'time_steps',
        'frames_per_step',
        'horizon',
        'horizon_seconds',
        'fps',
        'label_file',
    ):
        if getattr(args, field) is not None:
            setattr(data, field, getattr(args, field))
    if args.split_fractions:
        data.split_fractions = tuple(args.split_fractions)
    if args.synthetic_frames:
        data.synthetic.split_frames = tuple(args.synthetic_frames)
    if args.seed is not None:
        data.synthetic.seed = args.seed
    return data


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    data = data_config(args)
    root = cache.cache_root(data)
    try:
        if args.list or args.clear:
            if args.clear:
                for entry in cache.clear(root, args.clear):
                    print(f'removed {entry.path} ({entry.size_mb:.1f} MB)')
            if args.list:
                print_cache(root)
            return
        folder = dataset.prepare(data, progress=True, write_tfds=args.tfds)
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


if __name__ == '__main__':
    main()
