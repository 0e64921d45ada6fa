"""The README's test command is the project's whole gate: lint, format and types included.

Each tool runs from the repository root with the configuration in pyproject.toml (mypy:
strict, on src/), so a contribution that passes pytest passes CI.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]

CHECKS = {
    "ruff check": ["-m", "ruff", "check", "."],
    "ruff format": ["-m", "ruff", "format", "--check", "."],
    "mypy": ["-m", "mypy"],
}


@pytest.mark.timeout(600)  # a cold mypy cache on a small machine takes minutes
@pytest.mark.parametrize("name", sorted(CHECKS))
def test_the_tree_passes(name: str) -> None:
    done = subprocess.run(
        [sys.executable, *CHECKS[name]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=590,
        check=False,
    )
    assert done.returncode == 0, f"{name} failed:\n{done.stdout}\n{done.stderr}"
