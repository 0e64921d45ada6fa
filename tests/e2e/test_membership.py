"""One membership view, end to end: agent processes (``lmteams agent start``, simulated
backend) on a real nats-server, and every consumer of the view looking at them at once.

The consumers are those the issue names: a strategy (the coordinator of a vote runs in an
agent process and chooses from *its* view: a vote asking for every agent fails while one is
dead there), a dispatcher in this test process (``open_dispatcher`` over a
``GossipMembership`` observer) and ``lmteams status --json`` (its own observer, in its own
process). SWIM runs at the daemon's default period (1 s, so dead after about 7 s for three
members); every wait is a deadline against hangs, never a claim about speed. A partition and
its heal (a cut route between two servers) are in ``tests/gossip/test_partition.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import anyio
import pytest

from lmteams.agents import Dispatcher, Result, TeamClient, open_dispatcher
from lmteams.bus import Bus, EmbeddedServer, open_bus
from lmteams.gossip import GossipMembership, open_membership
from lmteams.testing import stop_processes, wait_until

TEAM = "e2e-members"
DEADLINE = 90.0  # suspicion + refutation at the default period is ~7 s; a loaded CI box is slow


def start_agent(url: str, name: str, *, replicas: int = 1) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "lmteams", "agent", "start", "--team", TEAM]
    argv += ["--name", name, "--backend", "sim", "--nats", url, "--replicas", str(replicas)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.fixture
def agents(nats_server: EmbeddedServer) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    procs = {name: start_agent(nats_server.url, name) for name in ("a1", "a2", "a3")}
    try:
        yield procs
    finally:
        for proc in procs.values():  # a stopped process cannot take SIGTERM
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
        stop_processes(procs.values())


@contextlib.asynccontextmanager
async def watched(url: str) -> AsyncIterator[tuple[GossipMembership, Dispatcher]]:
    """The test process's view (an observer) and a dispatcher placing by it (not a fixture:
    its task groups must end in the test's task)."""
    async with (
        open_bus(url, name="e2e-dispatch") as bus,
        open_membership(bus, TEAM) as view,
        open_dispatcher(bus, TEAM, membership=view) as dispatcher,
    ):
        yield view, dispatcher


async def status(url: str) -> dict[str, str]:
    """``lmteams status --json``, in its own process: member -> state."""
    argv = [sys.executable, "-m", "lmteams", "status", "--team", TEAM, "--nats", url, "--json"]
    done = await anyio.to_thread.run_sync(
        lambda: subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    )
    assert done.returncode == 0, done.stderr
    return {m["name"]: m["state"] for m in json.loads(done.stdout)["members"]}


def state_in(view: GossipMembership, name: str) -> str:
    info = view.member(name)
    return info.state if info is not None else ""


async def vote_of_all(bus: Bus) -> Result:
    """A vote that asks for all three agents: its coordinator's view decides if it may."""
    client = TeamClient(bus, TEAM)
    return await client.submit("Say yes.", strategy="vote", agents=3, max_tokens=8, timeout=60)


async def settles(check: Callable[[], bool | Awaitable[bool]]) -> None:
    await wait_until(check, timeout=DEADLINE, interval=0.2)


async def team_up(
    view: GossipMembership, dispatcher: Dispatcher, url: str, names: set[str]
) -> None:
    await settles(lambda: set(view.live()) == names)
    await dispatcher.wait_for_agents(len(names), timeout=DEADLINE)

    async def in_status() -> bool:
        return set((await status(url)).items()) >= {(n, "alive") for n in names}

    await settles(in_status)


async def test_a_paused_agent_is_dead_in_every_view_then_alive_in_all(
    nats_server: EmbeddedServer,
    agents: dict[str, subprocess.Popen[bytes]],
) -> None:
    async with watched(nats_server.url) as (view, dispatcher):
        url = nats_server.url
        await team_up(view, dispatcher, url, set(agents))
        async with open_bus(url, name="e2e-client") as bus:
            assert (await vote_of_all(bus)).ok

            os.kill(agents["a3"].pid, signal.SIGSTOP)  # past the suspicion timeout: dead
            await settles(lambda: state_in(view, "a3") == "dead")
            # dispatch: no longer placed on
            assert {load.agent for load in dispatcher.agents()} == {"a1", "a2"}

            async def status_says(state: str) -> bool:
                return (await status(url)).get("a3") == state

            await settles(lambda: status_says("dead"))

            async def strategy_refuses() -> bool:
                result = await vote_of_all(bus)
                return not result.ok and result.error_kind == "agents"

            await settles(strategy_refuses)  # the coordinator, in a1 or a2, sees it dead too

            os.kill(agents["a3"].pid, signal.SIGCONT)  # it refutes with a new incarnation
            await settles(lambda: state_in(view, "a3") == "alive")
            revived = view.member("a3")
            assert revived is not None and revived.incarnation > 0
            await dispatcher.wait_for_agents(3, timeout=DEADLINE)
            await settles(lambda: status_says("alive"))

            async def strategy_asks_all() -> bool:
                result = await vote_of_all(bus)
                return result.ok and {a.agent for a in result.answers} == set(agents)

            await settles(strategy_asks_all)


async def test_a_drained_agent_is_left_everywhere(
    nats_server: EmbeddedServer,
    agents: dict[str, subprocess.Popen[bytes]],
) -> None:
    async with watched(nats_server.url) as (view, dispatcher):
        url = nats_server.url
        await team_up(view, dispatcher, url, set(agents))
        agents["a3"].send_signal(signal.SIGTERM)
        assert await anyio.to_thread.run_sync(lambda: agents["a3"].wait(60)) == 0
        await settles(lambda: state_in(view, "a3") == "left")
        assert {load.agent for load in dispatcher.agents()} == {"a1", "a2"}
        assert (await status(url))["a3"] == "left"
        async with open_bus(url, name="e2e-client") as bus:
            result = await vote_of_all(bus)
        assert not result.ok and result.error_kind == "agents"
        assert "2 are available" in result.error
