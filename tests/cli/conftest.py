"""Running the `lmteams` command: in a subprocess (as a user does) or in-process for speed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lmteams.cli import app


def lmteams(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """The command as a user runs it, stdout and stderr piped (not a terminal)."""
    return subprocess.run(
        [sys.executable, "-m", "lmteams", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    """An environment with its own LMTEAMS_HOME and no bus URL inherited from the caller."""
    return {**os.environ, "LMTEAMS_HOME": str(tmp_path / "home"), "LMTEAMS_NATS_URL": ""}


@pytest.fixture
def invoke(home: dict[str, str], monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Run the command in this process (fast) with the isolated environment."""
    for key in ("LMTEAMS_HOME", "LMTEAMS_NATS_URL"):
        monkeypatch.setenv(key, home[key])

    def run(*args: str):  # type: ignore[no-untyped-def]
        return CliRunner().invoke(app, list(args))

    return run
