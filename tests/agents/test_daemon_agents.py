"""One daemon process hosting several agents: each its own member, key and control subject."""

from __future__ import annotations

import anyio
import pytest

from lmteams.agents import DaemonConfig, Stop, TeamClient, WorkerConfig, run_daemon
from lmteams.agents._daemon import daemon_identity
from lmteams.bus import Bus, BusAuth, EmbeddedServer, Subjects, open_bus
from lmteams.errors import ConfigError
from lmteams.gossip import open_membership
from lmteams.hardware import BackendConfig
from lmteams.testing import wait_until

TEAM = "hosted"


def _config(server: EmbeddedServer, agents: int) -> DaemonConfig:
    return DaemonConfig(
        team=TEAM,
        name="box",
        nats_url=server.url,
        agents=agents,
        worker=WorkerConfig(backend=BackendConfig(kind="sim", time_scale=0.0)),
    )


async def test_each_hosted_agent_serves_and_leaves_on_its_own_stop(
    nats_server: EmbeddedServer,
    bus: Bus,
    tmp_path: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LMTEAMS_HOME", str(tmp_path))
    config = _config(nats_server, 3)
    assert config.agent_names() == ("box-1", "box-2", "box-3")
    keys = {daemon_identity(config, n).public_key for n in config.agent_names()}
    assert len(keys) == 3  # three agents, three keys (kept per name)
    subjects = Subjects(TEAM)
    code: list[int] = []
    async with (
        open_bus(nats_server.url, name="watch") as watch,
        open_membership(watch, TEAM) as view,
        anyio.create_task_group() as tg,
    ):

        async def daemon() -> None:
            code.append(await run_daemon(config, membership=open_membership))

        tg.start_soon(daemon)
        live = lambda: {m.name for m in view.members() if m.available}  # noqa: E731
        await wait_until(lambda: live() >= set(config.agent_names()), timeout=60)
        result = await TeamClient(bus, TEAM).submit(
            "What is 2+2?", strategy="vote", agents=3, timeout=60
        )
        assert {a.agent for a in result.answers} == set(config.agent_names())
        # a Stop for one agent drains that one; the others keep serving
        await bus.publish(subjects.control("box-2"), Stop(reason="test"))
        # gone from the view: drained (a fetch in flight when it began may still deliver
        # one last task to it, which it answers) and left
        await wait_until(
            lambda: "box-2" not in {m.name for m in view.members() if m.live}, timeout=60
        )
        assert not code, "the process stayed up for its other agents"
        answered = await TeamClient(bus, TEAM).submit("Still there?", timeout=60)
        assert answered.ok and answered.agent in {"box-1", "box-3"}
        for name in ("box-1", "box-3"):
            await bus.publish(subjects.control(name), Stop(reason="test"))
        await wait_until(lambda: bool(code), timeout=60)
    assert code == [0]


@pytest.mark.parametrize(
    "auth", [BusAuth(nkey_seed="/nowhere/agent.nk"), BusAuth(creds="/nowhere/a.creds")]
)
async def test_hosted_agents_refuse_one_shared_credential(
    nats_server: EmbeddedServer, auth: BusAuth
) -> None:
    config = DaemonConfig(team=TEAM, name="box", nats_url=nats_server.url, agents=2, auth=auth)
    with pytest.raises(ConfigError, match="one process per agent"):
        await run_daemon(config)


async def test_a_process_hosts_at_least_one_agent(nats_server: EmbeddedServer) -> None:
    with pytest.raises(ConfigError, match="at least one agent"):
        await run_daemon(DaemonConfig(team=TEAM, name="box", nats_url=nats_server.url, agents=0))
