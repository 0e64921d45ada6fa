"""lmteams and the Synadia Agent Protocol, both ways, on a real nats-server.

The protocol side is driven by the protocol's own SDKs, which nobody here wrote: the caller
(``synadia-ai-agents``) discovers and prompts the team's agents, and an agent hosted with the
host SDK (``synadia-ai-agent-service``) is attached to a team and votes in it.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import msgspec
import nats
import pytest
from hypothesis import strategies as st
from nats.aio.client import Client as NatsClient
from synadia_ai.agent_service import AgentService, PromptStream
from synadia_ai.agents import Agents, DiscoverFilter, Envelope, ResponseChunk, StatusChunk

from lmteams.agents import (
    ActorState,
    Prompt,
    Runtime,
    Task,
    TeamClient,
    WorkerAgent,
    WorkerConfig,
    load_strategies,
    new_task,
    open_runtime,
)
from lmteams.bus import Bus, EmbeddedServer, WorkQueueSettings
from lmteams.errors import ConfigError
from lmteams.hardware import BackendConfig
from lmteams.interop import (
    AGENT_KIND,
    PROTOCOL_BACKEND,
    AttachedAgent,
    ProtocolBackendConfig,
    ProtocolTarget,
    attach,
    find_protocol_agent,
    protocol_service,
    protocol_subject,
)
from lmteams.testing import draw_examples, wait_until

TEAM = "proto"
SIM = WorkerConfig(
    backend=BackendConfig(kind="sim", sim_device="cpu-x86", time_scale=0.001),
    queue=WorkQueueSettings(retry_delay_s=0.2),
    heartbeat_s=0.2,
    fetch_timeout_s=0.2,
)


def sim_worker() -> WorkerAgent:
    return WorkerAgent(SIM)


@contextlib.asynccontextmanager
async def raw_client(server: EmbeddedServer) -> AsyncIterator[NatsClient]:
    """A plain nats-py connection: what any protocol caller or host would use."""
    nc = await nats.connect(server.url)
    try:
        yield nc
    finally:
        await nc.close()


@contextlib.asynccontextmanager
async def sim_team(bus: Bus, names: tuple[str, ...]) -> AsyncIterator[Runtime]:
    async with open_runtime(bus, TEAM, worker_services=[protocol_service()]) as rt:
        for name in names:
            await rt.spawn(sim_worker, actor_id=name, roles=("worker",))
        yield rt


async def discovered(caller: Agents, names: tuple[str, ...]) -> list[Any]:
    """The team's protocol agents once all of ``names`` answer discovery with their
    endpoints (a service answers ``$SRV.INFO`` a moment before its endpoints are added)."""
    found: list[Any] = []

    async def complete() -> bool:
        found[:] = await caller.discover(filter=DiscoverFilter(agent=AGENT_KIND, owner=TEAM))
        return sorted(a.session_name for a in found) == sorted(names)

    await wait_until(complete, timeout=30, interval=0.2)
    return found


async def collect(agent: Any, prompt: str | Envelope) -> list[Any]:
    with anyio.fail_after(30):
        return [chunk async for chunk in agent.prompt(prompt, timeout=20)]


# --- lmteams agents are protocol agents -----------------------------------------------------


async def test_discover_finds_every_agent_and_a_prompt_streams_back(
    nats_server: EmbeddedServer, bus: Bus
) -> None:
    names = ("w1", "w2", "w3")
    async with sim_team(bus, names) as rt, raw_client(nats_server) as nc:
        caller = Agents(nc=nc)
        try:
            found = await discovered(caller, names)
            by_name = {a.session_name: a for a in found}
            w2 = by_name["w2"]
            assert w2.prompt_subject == protocol_subject(TEAM, "w2").prompt
            assert w2.protocol_version == "0.3"
            assert w2.metadata["team"] == TEAM and w2.metadata["agent_id"] == "w2"
            assert w2.metadata["device"].startswith("sim:") and w2.metadata["model"]
            assert float(w2.metadata["tokens_per_s"]) > 0

            chunks = await collect(w2, "What is 2+2?")
            assert isinstance(chunks[0], StatusChunk) and chunks[0].status == "ack"
            texts = [c.text for c in chunks if isinstance(c, ResponseChunk)]
            assert texts and "".join(texts).strip()

            status = await w2.status()
            assert status.model_extra is not None
            assert status.model_extra["lmteams"]["agent_id"] == "w2"
        finally:
            await caller.close()
        assert rt.state("w2") is ActorState.RUNNING


async def test_options_travel_in_the_envelope_and_each_piece_is_a_chunk(
    nats_server: EmbeddedServer, bus: Bus
) -> None:
    async def pieces(agent: WorkerAgent, prompt: Prompt) -> AsyncIterator[str]:
        """A stand-in for a token stream: what the agent was asked, piece by piece."""
        yield f"max_tokens={prompt.max_tokens}"
        yield f" system={prompt.system}"
        yield f" seed={prompt.seed}"

    async with (
        open_runtime(bus, TEAM, worker_services=[protocol_service(answers=pieces)]) as rt,
        raw_client(nats_server) as nc,
    ):
        await rt.spawn(sim_worker, actor_id="w1", roles=("worker",))
        caller = Agents(nc=nc)
        try:
            (w1,) = await discovered(caller, ("w1",))
            options = {"max_tokens": 7, "system": "Be brief.", "seed": 3}
            chunks = await collect(w1, Envelope(prompt="Hello?", lmteams=options))
        finally:
            await caller.close()
    texts = [c.text for c in chunks if isinstance(c, ResponseChunk)]
    assert texts == ["max_tokens=7", " system=Be brief.", " seed=3"]


async def test_a_prompt_streams_the_models_pieces_as_they_are_generated(
    nats_server: EmbeddedServer, bus: Bus
) -> None:
    """By default a protocol prompt's ``response`` chunks are the model's own pieces, sent
    while it generates (here a simulated model that takes about half a second)."""
    slow = msgspec.structs.replace(
        SIM, backend=BackendConfig(kind="sim", sim_device="cpu-x86", time_scale=1.0)
    )
    async with (
        open_runtime(bus, TEAM, worker_services=[protocol_service()]) as rt,
        raw_client(nats_server) as nc,
    ):
        await rt.spawn(lambda: WorkerAgent(slow), actor_id="w1", roles=("worker",))
        caller = Agents(nc=nc)
        try:
            (w1,) = await discovered(caller, ("w1",))
            options = {"max_tokens": 48}
            chunks = await collect(w1, Envelope(prompt="Tell me a story.", lmteams=options))
        finally:
            await caller.close()
    texts = [c.text for c in chunks if isinstance(c, ResponseChunk)]
    assert len(texts) >= 2, texts  # pieces as they came, not the answer in one
    assert "".join(texts).startswith("sim answer to: Tell me a story.")


# --- hostile input on the protocol subjects -------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def bad_envelopes(draw: st.DrawFn) -> bytes:
    """An envelope with one thing wrong in it, as JSON."""
    how = draw(st.sampled_from(["prompt", "options", "option", "range"]))
    body: dict[str, Any] = {"prompt": "What is 2+2?"}
    if how == "prompt":
        body["prompt"] = draw(json_values.filter(lambda v: not isinstance(v, str)))
    elif how == "options":
        body["lmteams"] = draw(json_values.filter(lambda v: not isinstance(v, dict) and v))
    elif how == "option":
        key = draw(st.sampled_from(["max_tokens", "temperature", "system", "seed"]))
        body["lmteams"] = {key: draw(st.lists(st.integers(), min_size=1) | st.just({"x": 1}))}
    else:
        body["lmteams"] = {"max_tokens": draw(st.integers(max_value=0) | st.integers(10**6))}
    return msgspec.json.encode(body)


async def raw_stream(nc: NatsClient, subject: str, payload: bytes) -> list[Any]:
    """Every reply of one request, up to the protocol's terminator (empty, no headers)."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    replies: list[Any] = []
    try:
        await nc.publish(subject, payload, reply=inbox)
        with anyio.fail_after(20):
            while True:
                msg = await sub.next_msg(timeout=20)
                if msg.data == b"" and not msg.headers:
                    return replies
                replies.append(msg)
    finally:
        await sub.unsubscribe()


def error_code(replies: list[Any]) -> str:
    codes = [m.headers.get("Nats-Service-Error-Code", "") for m in replies if m.headers]
    return codes[0] if codes else ""


async def test_hostile_prompts_get_a_protocol_error_and_the_agent_keeps_serving(
    nats_server: EmbeddedServer, bus: Bus
) -> None:
    fixed = [
        b"",  # zero bytes: §5.3
        b"{not json",
        b'{"prompt": 5}',
        b'{"attachments": "x"}',
        b'{"prompt": "hi", "lmteams": {"max_tokens": "many"}}',
        b'{"prompt": "hi", "lmteams": {"unknown": 1}}',
        b'{"prompt": "   "}',  # empty after stripping: refused as a prompt, not by the codec
        msgspec.json.encode({"prompt": "x" * 300_000}),  # over the agent's max_prompt_bytes
        b"\xff\xfe\x00garbage",
    ]
    drawn = draw_examples(bad_envelopes(), 25)
    subject = protocol_subject(TEAM, "w1").prompt
    async with sim_team(bus, ("w1",)) as rt, raw_client(nats_server) as nc:
        for payload in fixed + drawn:
            replies = await raw_stream(nc, subject, payload)
            assert error_code(replies).startswith("4"), (payload[:80], replies)
        # random bytes: refused, or (valid UTF-8 text is a prompt, §5.3) answered
        for payload in draw_examples(st.binary(min_size=1, max_size=256), 15):
            replies = await raw_stream(nc, subject, payload)
            answered = any(b'"response"' in m.data for m in replies)
            assert answered or error_code(replies).startswith("4"), (payload, replies)
        replies = await raw_stream(nc, subject, b'{"prompt": "Still there?"}')
        assert any(b'"response"' in m.data for m in replies) and not error_code(replies)
        assert rt.state("w1") is ActorState.RUNNING


# --- protocol agents as teammates -----------------------------------------------------------


def arithmetic(prompt: str) -> str:
    """The host-SDK agent's skill: the sum in the prompt, or "?"."""
    numbers = [int(n) for n in re.findall(r"\d+", prompt)]
    return str(sum(numbers)) if numbers else "?"


@contextlib.asynccontextmanager
async def echo_agent(
    nc: NatsClient, answer: Callable[[str], str] = arithmetic, *, owner: str = "tests"
) -> AsyncIterator[AgentService]:
    """A protocol agent written with the host SDK, as any harness would write one."""
    service = AgentService(agent="adder", owner=owner, session_name="s1", nc=nc)

    async def on_prompt(envelope: Envelope, stream: PromptStream) -> None:
        text = answer(envelope.prompt)
        for piece in (text[: len(text) // 2], text[len(text) // 2 :]):  # two chunks
            if piece:
                await stream.send(piece)

    service.on_prompt(on_prompt)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


ADDER = ProtocolTarget(agent="adder", owner="tests", session="s1")


async def test_an_attached_protocol_agent_votes_with_sim_agents(
    nats_server: EmbeddedServer, bus: Bus
) -> None:
    load_strategies()
    async with (
        raw_client(nats_server) as nc,
        echo_agent(nc),
        open_runtime(bus, TEAM) as rt,
    ):
        for name in ("s1", "s2"):
            await rt.spawn(sim_worker, actor_id=name, roles=("worker",))
        await attach(rt, ADDER, actor_id="adder", config=SIM)
        await wait_until(lambda: {"s1", "s2", "adder"} <= set(rt.membership.live()), timeout=20)
        result = await TeamClient(bus, TEAM).submit(
            "What is 12+30?", strategy="vote", agents=3, timeout=60
        )
        answers = {a.agent: a for a in result.answers}
        assert set(answers) == {"s1", "s2", "adder"}
        assert answers["adder"].text == "42"
        assert answers["adder"].device == "protocol:adder.tests.s1"

        def measured() -> bool:
            member = rt.membership.member("adder")
            return member is not None and member.facts.tokens_per_s > 0

        await wait_until(measured, timeout=20)  # its latency, measured like a device's
        member = rt.membership.member("adder")
        assert member is not None and member.facts.backend == PROTOCOL_BACKEND


async def test_attaching_an_agent_that_is_not_there_names_those_that_are(
    nats_server: EmbeddedServer, bus: Bus
) -> None:
    async with raw_client(nats_server) as nc, echo_agent(nc), open_runtime(bus, TEAM) as rt:
        with pytest.raises(ConfigError, match=r"agents\.prompt\.adder\.tests\.s1"):
            await attach(rt, ProtocolTarget(agent="nobody"), actor_id="ghost")


async def test_an_agent_with_an_escaped_name_is_found_by_its_name_or_its_subject_token(
    nats_server: EmbeddedServer,
) -> None:
    """A name outside the subject alphabet is escaped in the subject: either spelling finds it."""
    async with raw_client(nats_server) as nc, echo_agent(nc, owner="Tests Team"):
        agents = Agents(nc=nc)
        try:
            (listed,) = await agents.discover(max_wait=2.0)
            token = listed.prompt_subject.split(".")[3]
            assert token != "Tests Team"  # escaped
            by_name = await find_protocol_agent(
                agents, ProtocolTarget(agent="adder", owner="Tests Team")
            )
            by_token = await find_protocol_agent(agents, ProtocolTarget(agent="adder", owner=token))
            with pytest.raises(ConfigError, match="no protocol agent"):
                await find_protocol_agent(agents, ProtocolTarget(agent="adder", owner="tests"))
        finally:
            await agents.close()
    assert by_name.prompt_subject == by_token.prompt_subject == listed.prompt_subject


async def test_a_dead_protocol_agent_hands_its_task_back(
    nats_server: EmbeddedServer, bus: Bus
) -> None:
    member = AttachedAgent(ADDER, protocol=ProtocolBackendConfig(stall_s=0.5), config=SIM)
    async with raw_client(nats_server) as nc, open_runtime(bus, TEAM) as rt:
        async with echo_agent(nc):
            await rt.spawn(member, actor_id="adder", roles=("worker",))
        # the remote agent is gone; the member still stands in the team
        client = TeamClient(bus, TEAM)
        task: Task = new_task("What is 1+1?")
        await client.publish(task)
        await wait_until(lambda: member.failures >= 1, timeout=30)
        assert await client.result(task.id) is None, "a failed try stores no result"
        await rt.stop("adder")
        await rt.spawn(sim_worker, actor_id="s1", roles=("worker",))
        result = await client.wait(task.id, timeout=60)  # handed back, so another took it
    assert result.ok and result.agent == "s1"
