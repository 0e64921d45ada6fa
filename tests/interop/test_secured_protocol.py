"""The Synadia Agent Protocol on a secured bus: each role gets what the protocol needs, no more.

An agent serves, beats and answers on its own protocol subjects; a client discovers and
prompts the team's agents with the caller SDK (a client nobody here wrote) and its answers
stream back whole. Every refusal is the server's, seen as a permission violation.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st
from nats.aio.msg import Msg
from synadia_ai.agents import (
    Agent,
    Agents,
    AgentSubject,
    DiscoverFilter,
    ResponseChunk,
    StatusChunk,
)

from lmteams.agents import Prompt, WorkerAgent, WorkerConfig, open_runtime
from lmteams.bus import Bus, ProtocolVerb, Subjects, team_security
from lmteams.errors import ConfigError
from lmteams.hardware import BackendConfig
from lmteams.interop import AGENT_KIND, protocol_service, protocol_subject
from lmteams.testing import Secured, secured_team, wait_until

SIM = WorkerConfig(
    backend=BackendConfig(kind="sim", sim_device="cpu-x86", time_scale=0.001),
    heartbeat_s=0.2,
    fetch_timeout_s=0.2,
)
PIECES = 40
"""Response chunks per answer: a stream well past the one reply ``allow_responses: true`` lets
through."""

names = st.from_regex(r"[A-Za-z0-9_-]{1,40}", fullmatch=True)


@given(team=names, agent=names)
def test_the_bus_writes_protocol_subjects_as_the_sdk_does(team: str, agent: str) -> None:
    """Permissions name the subjects the host SDK serves, capitals (escaped) included."""
    sdk = AgentSubject.new(agent=AGENT_KIND, owner=team, session_name=agent)
    s = Subjects(team)
    assert s.protocol(ProtocolVerb.PROMPT, agent) == sdk.prompt
    assert s.protocol(ProtocolVerb.STATUS, agent) == sdk.status
    assert s.protocol(ProtocolVerb.HEARTBEAT, agent) == sdk.heartbeat


def test_agent_names_that_share_a_protocol_subject_are_refused() -> None:
    # "jgZ" is escaped to "amda": both agents would be granted one prompt subject
    assert Subjects("sec").protocol(ProtocolVerb.PROMPT, "jgZ").endswith(".amda")
    with pytest.raises(ConfigError, match="collide"):
        team_security("sec", ["jgZ", "amda"])


async def pieces(agent: WorkerAgent, prompt: Prompt) -> AsyncIterator[str]:
    """A stand-in for a token stream: many chunks for one prompt."""
    for i in range(PIECES):
        yield f"{i} "


@pytest.mark.parametrize(("team", "agent"), [("sec", "a1"), ("Sec", "Alice")])
async def test_a_client_discovers_an_agent_and_its_answer_streams_whole(
    tmp_path: Path, team: str, agent: str
) -> None:
    async with (
        secured_team(tmp_path / "creds", team, [agent]) as secured,
        secured.connect(agent) as agent_bus,
        secured.connect("client") as client_bus,
        secured.connect("admin") as admin,
        open_runtime(agent_bus, team, worker_services=[protocol_service(answers=pieces)]) as rt,
    ):
        beats: list[str] = []

        async def beat(msg: Msg) -> None:
            beats.append(msg.subject)

        await admin.nc.subscribe("agents.hb.>", cb=beat)
        await rt.spawn(lambda: WorkerAgent(SIM), actor_id=agent, roles=("worker",))
        caller = Agents(nc=client_bus.nc)
        try:
            await wait_until(lambda: _found(caller, agent), timeout=20)
            (found,) = await _discover(caller, agent)
            assert found.session_name == protocol_subject(team, agent).session_name
            assert found.prompt_subject == Subjects(team).protocol(ProtocolVerb.PROMPT, agent)
            with anyio.fail_after(30):
                chunks = [c async for c in found.prompt("Count.", timeout=10)]
            status = await found.status()
        finally:
            await caller.close()
        assert isinstance(chunks[0], StatusChunk) and chunks[0].status == "ack"
        texts = [c.text for c in chunks if isinstance(c, ResponseChunk)]
        assert texts == [f"{i} " for i in range(PIECES)]  # every reply, the terminator after
        assert status.model_extra is not None
        assert status.model_extra["lmteams"]["agent_id"] == agent
        heartbeat = Subjects(team).protocol(ProtocolVerb.HEARTBEAT, agent)
        await wait_until(lambda: heartbeat in beats, timeout=20)
        assert agent_bus.statistics().permission_violations == 0
        assert client_bus.statistics().permission_violations == 0


async def _discover(caller: Agents, agent: str, max_wait: float = 2.0) -> list[Agent]:
    """The lmteams agents named ``agent`` (by name: a session token may be escaped)."""
    found = await caller.discover(filter=DiscoverFilter(agent=AGENT_KIND), max_wait=max_wait)
    return [a for a in found if a.metadata.get("agent_id") == agent]


async def _found(caller: Agents, agent: str) -> bool:
    return len(await _discover(caller, agent, max_wait=0.5)) == 1


async def _refused_subscription(bus: Bus, subject: str, seen: list[Any]) -> None:
    """``bus`` subscribes to ``subject`` (in the prompt queue group, as a host would) and the
    server reports the violation."""
    before = bus.statistics().permission_violations

    async def record(msg: Msg) -> None:
        seen.append(msg.subject)

    await bus.nc.subscribe(subject, queue="agents", cb=record)
    await bus.nc.flush()
    await wait_until(lambda: bus.statistics().permission_violations == before + 1)


async def test_an_agent_cannot_read_another_agents_prompts(secured: Secured) -> None:
    s = Subjects("sec")
    own, other = (s.protocol(ProtocolVerb.PROMPT, a) for a in ("a1", "a2"))
    seen: list[Any] = []
    async with secured.connect("a1") as a1, secured.connect("client") as client:
        await _refused_subscription(a1, other, seen)
        await _refused_subscription(a1, s.protocol(ProtocolVerb.PROMPT), seen)  # the team's
        await _refused_subscription(a1, "agents.>", seen)

        async def record(msg: Msg) -> None:
            seen.append(msg.subject)

        await a1.nc.subscribe(own, queue="agents", cb=record)  # its own: allowed
        await a1.nc.flush()
        await client.nc.publish(other, b'{"prompt":"for a2 only"}')
        await client.nc.publish(own, b'{"prompt":"for a1"}')  # after a2's, from one connection
        await wait_until(lambda: own in seen)
        assert seen == [own]
        assert client.statistics().permission_violations == 0


async def test_a_client_cannot_serve_or_beat_as_a_protocol_agent(secured: Secured) -> None:
    s = Subjects("sec")
    seen: list[Any] = []
    async with secured.connect("client") as client, secured.connect("admin") as admin:
        await _refused_subscription(client, s.protocol(ProtocolVerb.PROMPT, "a1"), seen)
        await _refused_subscription(client, s.protocol(ProtocolVerb.STATUS, "a1"), seen)
        await _refused_subscription(client, "$SRV.INFO.agents", seen)  # answer discovery

        beats: list[bytes] = []

        async def beat(msg: Msg) -> None:
            beats.append(msg.data)

        heartbeat = s.protocol(ProtocolVerb.HEARTBEAT, "a1")
        await admin.nc.subscribe(heartbeat, cb=beat)
        await admin.nc.flush()
        before = client.statistics().permission_violations
        await client.nc.publish(heartbeat, b'{"forged":true}')
        await client.nc.flush()
        await wait_until(lambda: client.statistics().permission_violations == before + 1)
        await admin.nc.publish(heartbeat, b"operator")  # the subject itself carries beats
        await wait_until(lambda: bool(beats))
        assert beats == [b"operator"] and not seen
