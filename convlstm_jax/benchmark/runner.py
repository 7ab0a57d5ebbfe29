"""Planning the rows of one benchmark, and running each in a fresh worker subprocess."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import pathlib
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

from convlstm_jax.benchmark.harness import (
    DEFAULT_BATCH,
    KERAS3_BACKENDS,
    REPO_ROOT,
    TORCH_FRAMEWORKS,
    RowSpec,
)
from convlstm_jax.benchmark.jax_rows import input_modes
from convlstm_jax.benchmark.table import add_ratios, row_summary

LOG_TAIL_CHARS = 3000


def run_row(spec: RowSpec) -> dict[str, Any]:
    """Measures one row in this process (a fresh subprocess started by `run_rows`)."""
    if spec.framework == 'convlstm_jax':
        from convlstm_jax.benchmark import jax_rows

        return (
            jax_rows.compiled_memory(spec) if spec.measure == 'compile' else jax_rows.run_convlstm_jax(spec)
        )
    if spec.measure != 'time':
        raise ValueError(f'only convlstm_jax rows measure compiled memory; got {spec.label()}')
    from convlstm_jax.benchmark import peers

    return peers.run_torch(spec) if spec.framework in TORCH_FRAMEWORKS else peers.run_keras(spec)


def plan_rows(
    *,
    models: Sequence[str],
    frameworks: Sequence[str],
    modes: Sequence[str],
    dtypes: Sequence[str],
    remat: Sequence[bool],
    pipelines: Sequence[str],
    devices: Sequence[int] = (1,),
    populations: Sequence[int] = (1,),
    batches: Sequence[int] = (DEFAULT_BATCH,),
    measure: str = 'time',
    **common: Any,
) -> list[RowSpec]:
    """Every row of one benchmark: per model, batch and mode, the frameworks in order, then the end-to-end
    rows.

    dtype, remat, devices and population vary for this project only (remat in training only); the peers run
    one float32 model. Pipeline rows are training steps, with the first remat setting, for each dtype, device
    count and population.
    measure='compile': only this project's training steps, compiled for their memory analysis, not run.
    """
    if measure == 'compile':
        frameworks, modes, pipelines = ['convlstm_jax'], [m for m in modes if m == 'train'], []
    rows = []
    for model, batch in itertools.product(models, batches):
        shared = {**common, 'batch': batch, 'measure': measure}
        for mode in modes:
            for framework in frameworks:
                if framework != 'convlstm_jax':
                    rows.append(RowSpec(framework, model, mode, **shared))
                    continue
                for count, dtype, size in itertools.product(devices, dtypes, populations):
                    for use_remat in remat if mode == 'train' else (False,):
                        members = {'devices': count, 'population': size}
                        rows.append(RowSpec(framework, model, mode, dtype, use_remat, **members, **shared))
        if 'train' in modes and 'convlstm_jax' in frameworks:
            planned = itertools.product(input_modes(pipelines), devices, dtypes, populations)
            for mode_name, count, dtype, size in planned:
                members = {'devices': count, 'population': size}
                rows.append(
                    RowSpec('convlstm_jax', model, 'train', dtype, remat[0], mode_name, **members, **shared)
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
            progress('    ' + row_summary(row))
            rows.append(row)
            on_rows(add_ratios(rows))
    return rows
