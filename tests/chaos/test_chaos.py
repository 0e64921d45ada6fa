"""The chaos run in short form: kill -9 agents and a NATS node mid-run; nothing lost or doubled.

The same harness, with longer counts, is ``benchmarks/chaos.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
from chaos import ChaosSpec, chaos_run


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_every_task_answered_once_through_agent_and_node_kills(tmp_path: Path) -> None:
    spec = ChaosSpec(tasks=200, agents=3, agent_kills=3, node_kills=1, ack_wait_s=5.0)
    report = await chaos_run(spec, base_dir=tmp_path)
    assert report["sent"] == spec.tasks
    assert report["lost"] == 0, report
    assert report["duplicated"] == 0, report
    assert report["answered"] == spec.tasks, report
    assert report["tasks_left_in_queue"] == 0, report
    assert report["node_kills"] == 1 and report["agent_kills"] >= 2, report
