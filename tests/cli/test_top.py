"""`lmteams top`: one frame of a running team (sim agents on gossip), as JSON and as a table."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import AsyncIterator

import anyio

from lmteams.agents import WorkerAgent, WorkerConfig, open_runtime
from lmteams.bus import Bus, EmbeddedServer
from lmteams.gossip import SwimConfig, open_membership
from lmteams.hardware import BackendConfig
from lmteams.testing import wait_until

from .conftest import lmteams

TEAM = "tp"
FAST = SwimConfig(period_s=0.1, suspicion_mult=4.0)
SIM = WorkerConfig(
    backend=BackendConfig(kind="sim", sim_device="rtx-4090-cuda", time_scale=0.001),
    heartbeat_s=0.2,
    fetch_timeout_s=0.2,
)


@contextlib.asynccontextmanager
async def _team(bus: Bus, *names: str) -> AsyncIterator[None]:
    """Simulated worker agents that are gossip members of the team, as daemons are."""
    async with (
        open_membership(bus, TEAM, config=FAST) as view,
        open_runtime(bus, TEAM, membership=view) as rt,
    ):
        for name in names:
            await rt.spawn(lambda: WorkerAgent(SIM), actor_id=name, roles=("worker",))
        await wait_until(lambda: set(view.live()) >= set(names), timeout=30)
        yield


async def _run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return await anyio.to_thread.run_sync(lambda: lmteams(*args, env=env))


async def test_top_once_json_lists_the_members_of_a_running_team(
    bus: Bus, nats_server: EmbeddedServer, home: dict[str, str]
) -> None:
    async with _team(bus, "a1", "a2"):
        where = ("--team", TEAM, "--nats", nats_server.url, "--wait", "0.5")
        done = await _run("top", "--once", "--json", *where, env=home)
        table = await _run("top", "--once", *where, env=home)
    assert done.returncode == 0, done.stderr
    frame = json.loads(done.stdout)  # one JSON object, nothing else on stdout
    assert frame["team"] == TEAM
    members = {m["name"]: m for m in frame["members"]}
    assert set(members) == {"a1", "a2"}
    assert {m["state"] for m in members.values()} == {"alive"}
    assert members["a1"]["facts"]["device"] == "sim:rtx-4090-cuda"
    assert frame["live"] == 2
    assert frame["tasks_in_flight"] == 0
    assert frame["jobs_in_flight"] == 0 and frame["jobs"] == []
    assert frame["tokens_per_s"] == sum(m["facts"]["tokens_per_s"] for m in members.values()) > 0
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert any(f"team {TEAM}: 2 live of 2" in line for line in lines)  # the title, whole
    header = next(line for line in lines if "member" in line)
    for column in ("state", "device", "model", "tok/s", "in flight", "served", "roles"):
        assert column in header
    a1 = next(line for line in lines if " a1 " in line)
    assert "alive" in a1 and "sim:rtx-4090-cuda" in a1 and "worker" in a1
    assert "…" not in table.stdout  # piped: nothing cut off or wrapped


async def test_top_once_of_an_empty_team_says_so(
    nats_server: EmbeddedServer, home: dict[str, str]
) -> None:
    done = await _run(
        "top", "--once", "--team", "nobody", "--nats", nats_server.url, "--wait", "0.3", env=home
    )
    assert done.returncode == 1
    assert "no gossip members answered" in done.stderr


def test_help_texts_name_top_and_the_metrics_options() -> None:
    assert "top" in lmteams("--help").stdout
    top = lmteams("top", "--help").stdout
    for option in ("--once", "--json", "--every", "--team", "--nats"):
        assert option in top
    for verb in (("agent", "start"), ("up",)):
        text = lmteams(*verb, "--help").stdout
        assert "--metrics-port" in text and "--metrics-host" in text
