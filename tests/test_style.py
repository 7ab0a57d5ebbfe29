"""The house style is checked, not hoped for: ruff lint and ruff format over the whole repository."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from conftest import REPO_ROOT


@pytest.mark.parametrize('command', [['check'], ['format', '--check']], ids=['lint', 'format'])
def test_ruff_is_clean(command: list[str]) -> None:
    ruff = shutil.which('ruff') or pytest.skip('ruff is not installed (pip install -e ".[test]")')
    result = subprocess.run([ruff, *command, '.'], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f'ruff {" ".join(command)} found problems:\n{result.stdout}{result.stderr}'
