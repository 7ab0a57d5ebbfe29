"""Shared test fixtures."""

from __future__ import annotations

import pathlib

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
REFERENCE_DIR = REPO_ROOT.parent / 'shared' / 'reference' / 'fish2021'


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
