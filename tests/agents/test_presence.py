"""The membership publisher and the agent's key: what the team's view learns of a worker.

A worker's facts (device, model, key, load, counts, draining) reach its runtime's membership,
a stopped worker is ``left`` there, and its signing key is the same across an actor restart
and a daemon restart (the team binds the first key it sees to the name and refuses another).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import ClassVar

import anyio
import pytest
from test_worker import TEAM, SimWorker

from lmteams.agents import (
    AgentIdentity,
    DaemonConfig,
    LocalMembership,
    Ping,
    Pong,
    Task,
    TeamClient,
    daemon_identity,
    identity_path,
    open_runtime,
)
from lmteams.bus import Bus, BusAuth, Subjects, new_nkey
from lmteams.errors import ConfigError
from lmteams.testing import wait_until


async def test_a_workers_facts_reach_its_runtimes_membership(bus: Bus) -> None:
    view = LocalMembership()
    worker = SimWorker(slow=20.0)  # generations of seconds: longer than a heartbeat
    async with open_runtime(bus, TEAM, membership=view) as rt:
        await rt.spawn(worker, actor_id="w1", roles=("worker", "judge"))
        assert rt.membership is view
        await wait_until(lambda: view.member("w1") is not None)  # it joins once it serves
        info = view.member("w1")
        assert info is not None and info.available
        assert info.facts.public_key == worker.identity.public_key == view.public_key("w1")
        assert (info.facts.device, info.facts.model) == (
            worker.backend.device,
            worker.backend.model,
        )  # type: ignore[union-attr]
        assert info.facts.roles == ("worker", "judge") and info.facts.pid == os.getpid()
        await TeamClient(bus, TEAM).publish(Task(id="fact-1", prompt="long", max_tokens=400))

        def load(n: int) -> bool:
            member = view.member("w1")
            return member is not None and member.facts.in_flight == n

        await wait_until(lambda: load(1), timeout=15)
        async with anyio.create_task_group() as tg:
            tg.start_soon(rt.stop, "w1")  # drains: finishes the task in flight, then leaves

            def draining() -> bool:
                member = view.member("w1")
                return member is not None and member.facts.serving == "draining"

            await wait_until(draining, timeout=15)
            member = view.member("w1")
            assert member is not None and member.live and not member.available
        left = view.member("w1")
        assert left is not None and left.state == "left" and not left.live
        assert left.facts.served == 1 and view.live() == []


async def test_served_and_load_are_updated_while_it_serves(bus: Bus) -> None:
    view = LocalMembership()
    async with open_runtime(bus, TEAM, membership=view) as rt:
        await rt.spawn(SimWorker(), actor_id="w1")
        result = await TeamClient(bus, TEAM).submit("hi", max_tokens=4, timeout=30)
        assert result.ok

        def counted() -> bool:
            member = view.member("w1")
            return member is not None and (member.facts.served, member.facts.in_flight) == (1, 0)

        await wait_until(counted, timeout=15)


class CrashAfterJoin(SimWorker):
    """Its first life crashes once it has joined; the restart must sign with the same key."""

    lives: ClassVar[int] = 0
    keys: ClassVar[list[str]] = []

    async def on_start(self) -> None:
        await super().on_start()
        type(self).lives += 1
        type(self).keys.append(self.identity.public_key)

    async def run(self) -> None:
        if type(self).lives == 1:
            raise RuntimeError("first life fails")
        await super().run()


async def test_an_actor_restart_keeps_the_agents_key(bus: Bus) -> None:
    CrashAfterJoin.lives, CrashAfterJoin.keys = 0, []
    view = LocalMembership()
    async with open_runtime(bus, TEAM, membership=view) as rt:
        await rt.spawn(CrashAfterJoin, actor_id="phoenix")
        await wait_until(lambda: CrashAfterJoin.lives == 2 and view.live() == ["phoenix"])
        pong = await bus.request(Subjects(TEAM).agent("phoenix"), Ping(), expect=Pong, timeout=10)
    first, second = CrashAfterJoin.keys
    assert first == second == view.public_key("phoenix")
    assert pong.restarts == 1


def test_a_daemon_signs_with_its_nkey_credential(tmp_path: Path) -> None:
    seed, public = new_nkey()
    path = tmp_path / "a1.nk"
    path.write_text(seed + "\n")
    config = DaemonConfig(team="t", name="a1", auth=BusAuth(nkey_seed=str(path)))
    assert daemon_identity(config).public_key == public


def test_an_unreadable_nkey_credential_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "a1.nk"
    path.write_text("not a seed\n")
    with pytest.raises(ConfigError, match="nkey seed"):
        daemon_identity(DaemonConfig(team="t", name="a1", auth=BusAuth(nkey_seed=str(path))))


def test_a_daemon_without_credential_keeps_one_key_per_team_and_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LMTEAMS_HOME", str(tmp_path))
    first = daemon_identity(DaemonConfig(team="t", name="a1"))
    path = identity_path("t", "a1")
    assert path.is_relative_to(tmp_path) and path.exists()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert AgentIdentity(path.read_bytes().strip()).public_key == first.public_key
    # a restart reads the same key; another name or team gets its own
    assert daemon_identity(DaemonConfig(team="t", name="a1")).public_key == first.public_key
    others = {
        daemon_identity(DaemonConfig(team="t", name="a2")).public_key,
        daemon_identity(DaemonConfig(team="u", name="a1")).public_key,
    }
    assert first.public_key not in others and len(others) == 2
