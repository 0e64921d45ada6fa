"""A team of real agent processes (`lmteams agent start`, simulated models) for job fault tests.

Every agent is its own OS process, so a test can kill -9 it, or SIGSTOP and SIGCONT it, and
watch the rest of the team carry the job through. Each agent logs JSON to its own file
under the test's tmp dir (``logs/<name>.log``): what a failing test prints.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest

from lmteams.agents import WorkerConfig
from lmteams.bus import KV, Bus, EmbeddedServer, Subjects, open_bus, open_kv
from lmteams.gossip import open_membership
from lmteams.hardware import BackendConfig
from lmteams.jobs import JobBoard, JobClient, JobView, open_board
from lmteams.testing import stop_processes, wait_until

SIM = WorkerConfig(
    backend=BackendConfig(kind="sim", sim_device="h100-cuda", time_scale=0.01),
    fetch_timeout_s=0.2,
    heartbeat_s=0.5,
)
"""A fast simulated worker for in-process job tests."""

COORDINATOR_LEASE_S = 2.0
"""The coordinator lease TTL of every agent: a killed coordinator is replaced within it."""


@dataclass
class AgentTeam:
    """Agent processes of one team on one nats-server, and a client bus to watch them."""

    url: str
    team: str
    home: Path
    bus: Bus
    client: JobClient
    board: JobBoard
    leases: KV
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _logs: list[IO[bytes]] = field(default_factory=list)

    def start(self, name: str, *, device: str = "rpi5-cpu") -> None:
        argv = [
            sys.executable, "-m", "lmteams", "agent", "start", "--team", self.team,
            "--name", name, "--nats", self.url, "--backend", "sim", "--sim-device", device,
            "--lease-ttl", str(COORDINATOR_LEASE_S), "--json-logs",
        ]  # fmt: skip
        log = (self.home / "logs" / f"{name}.log").open("ab")
        self._logs.append(log)
        env = {**os.environ, "LMTEAMS_HOME": str(self.home)}
        self.procs[name] = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log, env=env)

    async def start_all(self, devices: dict[str, str]) -> None:
        """Start these agents and return once each is serving in the team's view."""
        for name, device in devices.items():
            self.start(name, device=device)
        # the view's task group must end in the test's task, so it is opened here
        async with open_membership(self.bus, self.team) as view:

            def serving() -> bool:
                for name, proc in self.procs.items():
                    assert proc.poll() is None, f"agent {name} exited:\n{self.log(name)}"
                up = {m.name for m in view.members() if m.available}
                return up >= set(devices)

            await wait_until(serving, timeout=90, interval=0.2)
        await wait_until(self.coordinator, timeout=30, interval=0.1)

    async def coordinator(self) -> str:
        """Who holds the coordinator lease now ("" while nobody does)."""
        entry = await self.leases.get("coordinator")
        return entry.value.decode() if entry and entry.value else ""

    def signal(self, name: str, sig: signal.Signals) -> None:
        self.procs[name].send_signal(sig)
        if sig is signal.SIGKILL:
            self.procs[name].wait(timeout=30)

    async def view(self, job_id: str) -> JobView | None:
        return await self.board.view(job_id)

    def log(self, name: str, lines: int = 40) -> str:
        text = (self.home / "logs" / f"{name}.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def logs(self) -> str:
        return "\n".join(f"--- {name}\n{self.log(name)}" for name in self.procs)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)  # a stopped process cannot drain
        stop_processes(self.procs.values(), timeout=30)
        for log in self._logs:
            log.close()


@pytest.fixture
async def agent_team(nats_server: EmbeddedServer, tmp_path: Path) -> AsyncIterator[AgentTeam]:
    """An empty team on a fresh server: the test calls ``start_all``."""
    home = tmp_path / "home"
    (home / "logs").mkdir(parents=True)
    team_name = "faults"
    async with open_bus(nats_server.url, name="fault-watch") as bus:
        board = await open_board(bus, team_name)
        leases = await open_kv(bus, Subjects(team_name).kv_bucket("leases"))
        team = AgentTeam(
            url=nats_server.url,
            team=team_name,
            home=home,
            bus=bus,
            client=JobClient(bus, team_name),
            board=board,
            leases=leases,
        )
        try:
            yield team
        finally:
            team.stop()
            print(team.logs())  # pytest shows it when the test failed
