"""The supervisor's restart loop, with real child processes standing in for agents."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import pytest

from lmteams.agents._supervisor import Supervisor, SupervisorConfig
from lmteams.testing import wait_until


class _Scripted(Supervisor):
    """Runs a tiny Python child instead of ``lmteams agent start``."""

    code = "raise SystemExit(3)"

    def argv(self, name: str, model: str) -> list[str]:
        return [sys.executable, "-c", self.code]


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMTEAMS_HOME", str(tmp_path / "home"))


async def test_a_crashing_agent_is_restarted_again_and_again() -> None:
    config = SupervisorConfig(agents=1, restart_backoff_s=0.01, restart_backoff_max_s=0.02)
    async with anyio.create_task_group() as tg:
        sup = _Scripted(config, "nats://127.0.0.1:1", tg)
        await sup.start_agents("model")
        await wait_until(lambda: sup.processes()[0].restarts >= 3, timeout=60)
        await sup.stop()
        tg.cancel_scope.cancel()


async def test_an_agent_that_left_cleanly_is_not_restarted() -> None:
    config = SupervisorConfig(agents=1, restart_backoff_s=0.01)
    with anyio.fail_after(60):  # against a hang: a restarted child would keep the group open
        async with anyio.create_task_group() as tg:
            sup = _Scripted(config, "nats://127.0.0.1:1", tg)
            sup.code = "pass"
            await sup.start_agents("model")
    # the task group ended, so the keep-alive loop returned after the child's exit 0
    (info,) = sup.processes()
    assert info.restarts == 0 and not info.running
