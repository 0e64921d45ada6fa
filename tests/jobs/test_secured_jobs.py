"""Jobs on a secured bus: agents run them with agent credentials, a client only submits,
reads and cancels, and cannot forge what only agents may say."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import nats
import nats.errors
import pytest

from lmteams.agents import WorkerAgent, open_runtime
from lmteams.bus import (
    Bus,
    EmbeddedServer,
    ServerConfig,
    Subjects,
    open_bus,
    provision_team,
    run_server,
    team_security,
    write_credentials,
)
from lmteams.jobs import JobClient, JobStatus, job_service
from lmteams.jobs._graph import Subtask, TaskGraph
from lmteams.jobs._messages import Report
from lmteams.testing import wait_until

from .conftest import SIM

TEAM = "secjobs"
GRAPH = TaskGraph(
    name="pair",
    subtasks=(
        Subtask(id="x", title="one", work_tokens=10),
        Subtask(id="y", title="two", work_tokens=10),
        Subtask(id="z", title="both", deps=("x", "y"), work_tokens=10),
    ),
)


@contextlib.asynccontextmanager
async def secured(tmp_path: Path) -> AsyncIterator[tuple[EmbeddedServer, dict[str, Path]]]:
    security = team_security(TEAM, ["a1", "a2"], clients=("client",))
    files = write_credentials(security, tmp_path / "creds")
    async with run_server(ServerConfig(extra=security.server_config())) as server:
        async with open_bus(server.url, name="admin", nkey_seed=str(files["admin"])) as admin:
            await provision_team(admin, Subjects(TEAM))
        yield server, files


@contextlib.asynccontextmanager
async def agents(server: EmbeddedServer, files: dict[str, Path]) -> AsyncIterator[list[Bus]]:
    async with (
        open_bus(server.url, name="a1", nkey_seed=str(files["a1"])) as b1,
        open_bus(server.url, name="a2", nkey_seed=str(files["a2"])) as b2,
        open_runtime(b1, TEAM, worker_services=[job_service()]) as r1,
        open_runtime(b2, TEAM, worker_services=[job_service()]) as r2,
    ):
        await r1.spawn(lambda: WorkerAgent(SIM), actor_id="a1", roles=("worker",))
        await r2.spawn(lambda: WorkerAgent(SIM), actor_id="a2", roles=("worker",))
        yield [b1, b2]


@pytest.mark.parametrize("architecture", ["centralized", "decentralized"])
async def test_agents_run_a_clients_job_on_a_secured_bus(tmp_path: Path, architecture: str) -> None:
    async with (
        secured(tmp_path) as (server, files),
        agents(server, files),
        open_bus(server.url, name="client", nkey_seed=str(files["client"])) as cb,
    ):
        client = JobClient(cb, TEAM)
        result = await client.run_job(GRAPH, architecture=architecture, timeout=60)  # type: ignore[arg-type]
        assert result.status is JobStatus.DONE, result.error
        view = await client.job(result.job_id)  # the client reads the board
        assert view is not None and view.complete
        assert [r.spec.id for r in await client.jobs()] == [result.job_id]


async def test_a_client_cannot_forge_reports_results_or_board_writes(tmp_path: Path) -> None:
    async with secured(tmp_path) as (server, files):
        subjects = Subjects(TEAM)
        refused: list[Exception] = []

        async def on_error(err: Exception) -> None:
            refused.append(err)

        nc = await nats.connect(
            server.url, nkeys_seed=str(files["client"]), error_cb=on_error,
            inbox_prefix=b"_INBOX_client",
        )  # fmt: skip
        try:
            forged = msgspec.json.encode(
                Report(job_id="j1", index=0, claim_rev=1, agent="a1", ok=True, output="forged")
            )
            targets = [
                subjects.job_report("j1"),
                subjects.job_result("j1"),
                subjects.job_agent("a1"),
                subjects.job_lease("j1"),
                f"$KV.{subjects.kv_bucket('jobs')}.j1.s.0",
            ]
            for subject in targets:
                await nc.publish(subject, forged)
            await nc.flush()
            await wait_until(lambda: len(refused) >= len(targets), timeout=10)
        finally:
            await nc.close()
        text = " ".join(str(e) for e in refused).lower()
        assert "permissions violation" in text
        for subject in targets:
            assert subject.lower() in text, subject
