"""Shared test fixtures."""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
REFERENCE_DIR = REPO_ROOT.parent / 'shared' / 'reference' / 'fish2021'


# Most tests are single-threaded XLA compilations, so one pytest-xdist worker per core (`-n auto`) nearly
# divides the suite's time by the cores. Each worker holds JAX and TensorFlow (~2 GB) and runs XLA on every
# core, so more than this many workers only adds memory.
MAX_TEST_WORKERS = 4


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    return max(1, min(os.cpu_count() or 1, MAX_TEST_WORKERS))


def pytest_configure(config: pytest.Config) -> None:
    """One persistent XLA compilation cache for the session, shared through the environment with every
    subprocess the tests start (and every xdist worker, started after this runs in the controller): the many
    `:smoke` runs, workers and in-process tests compile the same programs again and again, and a cache hit
    gives the same executable (so the same numbers) in a fraction of the time. A fresh folder per session,
    removed at the end; a cache the caller set up is left alone."""
    if 'JAX_COMPILATION_CACHE_DIR' in os.environ:
        return
    cache = tempfile.mkdtemp(prefix='convlstm_jax_tests_xla_cache_')
    config.add_cleanup(lambda: shutil.rmtree(cache, ignore_errors=True))
    # Workers and subprocesses write entries concurrently. An entry read while another process still writes
    # it fails to decompress, and JAX then compiles anew. (A size limit would add JAX's file lock, but under
    # xdist its eviction failed on missing atime files, hundreds of times a run.)
    os.environ['JAX_COMPILATION_CACHE_DIR'] = cache
    os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'  # the default (1 s) skips most of them


@pytest.fixture(scope='session')
def reference_dir() -> pathlib.Path:
    """The 2021 artifacts beside the checkout; tests that need them skip where they are absent."""
    if not REFERENCE_DIR.is_dir():
        pytest.skip(
            f'reference artifacts not found at {REFERENCE_DIR} (they live in ../shared beside the repo)'
        )
    return REFERENCE_DIR


def fast_lane(values, fast) -> list:
    """Parametrize values with all but those in `fast` marked slow: the fast lane (`-m "not slow"`) keeps a
    representative case of each family, the full suite runs them all with the same assertions."""
    return [value if value in fast else pytest.param(value, marks=pytest.mark.slow) for value in values]


@pytest.fixture(scope='session')
def smoke_data_dir(tmp_path_factory) -> pathlib.Path:
    """One prepared `:smoke` dataset for the multi-process runs of test_launch and test_device_training."""
    return tmp_path_factory.mktemp('smoke_data')


@pytest.fixture(scope='session')
def two_device_reference(smoke_data_dir, tmp_path_factory) -> dict[tuple[str, int], dict]:
    """The metrics by (split, step) of `:smoke` (2 layers) in 1 process × 2 CPU devices, 2 epochs of 3 steps,
    with the numpy pipeline: the reference both 2-process runs (tfdata, device) must match, trained once."""
    from test_launch import metrics_by_step, train_one_process

    workdir = tmp_path_factory.mktemp('two_device_reference') / 'run'
    result = train_one_process(
        workdir, smoke_data_dir, '--config.num_epochs=2', '--config.data.pipeline=numpy', devices=2
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return metrics_by_step(workdir)
