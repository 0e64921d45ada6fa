"""Piped output is for scripts too: tables keep whole cells instead of wrapping at 80 columns."""

from __future__ import annotations

from .conftest import lmteams


def test_a_piped_table_keeps_its_cells_whole(home: dict[str, str]) -> None:
    done = lmteams(
        "plan", "mixed-p05", "--devices", "cpu-x86,rtx-4090-cuda", "--max-agents", "2", env=home
    )
    assert done.returncode == 0, done.stderr
    header = next(line for line in done.stdout.splitlines() if "architecture" in line)
    assert "speedup vs 1x rtx-4090-cuda" in header  # one cell, one line: not cut at 80 columns
    assert any("centralized-preassigned" in line for line in done.stdout.splitlines())
