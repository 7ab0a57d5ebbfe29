"""The benchmark's report: ratios against tf_keras, the markdown table and its header lines."""

from __future__ import annotations

import datetime
import os
import platform
from collections.abc import Sequence
from typing import Any

from convlstm_jax.benchmark.harness import REFERENCE_FRAMEWORK, RowSpec, flops_per_clip, load_config


def row_summary(row: dict[str, Any]) -> str:
    if 'error' in row:
        return 'failed: ' + _one_line(row['error'])
    if 'compiled_peak_bytes' in row:
        peak, temporaries = _mib(row['compiled_peak_bytes']), _mib(row['compiled_temp_bytes'])
        return f'compiled: peak {peak} MiB, temporaries {temporaries} MiB'
    return (
        f'{row["clips_per_s"]:.2f} clips/s, {row["step_s_median"]:.3f} s/step '
        f'({row["steps_measured"]} steps), compile {row["compile_s"]:.1f} s, '
        f'peak +{row["peak_mem_delta_bytes"] / 2**20:.0f} MiB'
    )


def add_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Speed and memory ratios against tf_keras on the same model, mode and batch, where that row exists."""
    reference = {_key(r): r for r in rows if r['framework'] == REFERENCE_FRAMEWORK and 'error' not in r}
    for row in rows:
        base = reference.get(_key(row))
        if base is None or 'error' in row or 'clips_per_s' not in row:
            continue
        row['speedup_vs_tf_keras'] = row['clips_per_s'] / base['clips_per_s']
        if base['peak_mem_delta_bytes'] > 0:
            row['mem_vs_tf_keras'] = row['peak_mem_delta_bytes'] / base['peak_mem_delta_bytes']
    return rows


def _key(row: dict[str, Any]) -> tuple[str, str, int]:
    return row['model'], row['mode'], row['batch']


def _mib(size: int) -> str:
    return f'{size / 2**20:.0f}'


TABLE_COLUMNS = (
    'model', 'mode', 'framework', 'dtype', 'remat', 'devices', 'input', 'batch', 'population', 'clips/s',
    'step s median (IQR)', 'compile s', 'GFLOP/s',
    'peak mem Δ MiB', '× tf_keras speed', '× tf_keras mem', 'load',
)  # fmt: skip


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """One line per row; clips/s counts every member's clips (population × batch / step time); ratios are
    against tf_keras on the same model, mode and batch; load: 1-minute average."""
    lines = ['| ' + ' | '.join(TABLE_COLUMNS) + ' |', '|' + '---|' * len(TABLE_COLUMNS)]
    for row in rows:
        cells = [row['model'], row['mode'], row['framework'], row['dtype'], 'on' if row['remat'] else 'off']
        cells += [str(row.get('devices', 1)), row['input'], str(row['batch']), str(row.get('population', 1))]
        if 'error' in row:
            cells.append('failed: ' + _one_line(row['error']))
        else:
            cells += [
                f'{row["clips_per_s"]:.2f}',
                f'{row["step_s_median"]:.3f} ({row["step_s_iqr"]:.3f})',
                f'{row["compile_s"]:.1f}',
                f'{row["gflop_per_s"]:.0f}',
                _mib(row['peak_mem_delta_bytes']),
                _ratio(row.get('speedup_vs_tf_keras')),
                _ratio(row.get('mem_vs_tf_keras')),
                _ratio(row.get('load_avg_1m'), digits=1),
            ]
        cells += [''] * (len(TABLE_COLUMNS) - len(cells))
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


COMPILED_COLUMNS = (
    'model', 'dtype', 'remat', 'devices', 'batch', 'population', 'peak MiB', 'temporaries MiB',
    'arguments MiB', 'outputs MiB', 'aliased MiB', 'code MiB',
)  # fmt: skip


def compiled_memory_table(rows: Sequence[dict[str, Any]]) -> str:
    """XLA's memory analysis of the compiled training steps, per device: peak = arguments + outputs −
    aliased (the donated state) + temporaries."""
    lines = ['| ' + ' | '.join(COMPILED_COLUMNS) + ' |', '|' + '---|' * len(COMPILED_COLUMNS)]
    for row in rows:
        cells = [
            row['model'],
            row['dtype'],
            'on' if row['remat'] else 'off',
            str(row['devices']),
            str(row['batch']),
            str(row.get('population', 1)),
        ]
        if 'error' in row:
            cells += ['failed: ' + _one_line(row['error'])] + [''] * (len(COMPILED_COLUMNS) - len(cells) - 1)
        else:
            names = ('peak', 'temp', 'argument', 'output', 'alias', 'generated_code')
            cells += [_mib(row[f'compiled_{name}_bytes']) for name in names]
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
    batches = ', '.join(str(b) for b in dict.fromkeys(s.batch for s in specs))
    if any(s.population > 1 for s in specs):
        lines.append(
            'population K: K models in one vmapped step (convlstm_jax only); clips/s counts every '
            "member's clips, K × batch / median step time"
        )
    for model in dict.fromkeys(s.model for s in specs):
        flops = flops_per_clip(load_config(model).model, spec.shape)
        lines.append(
            f'{model}: {flops["forward"] / 1e9:.2f} GFLOP forward, {flops["train"] / 1e9:.2f} GFLOP per '
            f'training step, per clip {tuple(spec.shape)}; batch {batches}'
        )
    return lines
