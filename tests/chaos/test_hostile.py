"""Hostile input: the codec and a live agent against random bytes, wrong types, missing fields,
unknown tags, huge strings, deep nesting, oversized payloads and floods.

Every bad message gets a clear error reply or a dead-letter entry with its reason, and the
agent keeps answering real work. Payloads come from hypothesis; for the live agent they are
drawn up front (derandomized, so CI sees the same ones) and sent to a real nats-server.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import msgspec
import nats.errors
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmteams.agents import (
    ActorState,
    Ping,
    Pong,
    Prompt,
    Result,
    Runtime,
    Task,
    TeamClient,
    WorkerAgent,
    WorkerConfig,
    open_runtime,
    task_problem,
)
from lmteams.bus import (
    Bus,
    Codec,
    ErrorReply,
    StreamSettings,
    Subjects,
    ensure_team_streams,
    open_bus,
)
from lmteams.errors import ConfigError, DecodeError, EncodeError
from lmteams.hardware import BackendConfig
from lmteams.testing import draw_examples, wait_until

TEAM = "hostile"
S = Subjects(TEAM)
TASKS: Codec[Task] = Codec(Task)
ERRORS: Codec[ErrorReply] = Codec(ErrorReply)
DEEP = 5000

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**62), 2**62)
    | st.floats(allow_nan=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=20,
)
VALID_TASK: dict[str, Any] = {"type": "task", "id": "t1", "prompt": "What is 2 + 2?"}


DEEP_MARK = "<<deeply-nested>>"  # replaced in the encoded bytes: no deep Python object exists


def _deep_bytes(as_json: bool) -> bytes:
    return b"[" * DEEP + b"]" * DEEP if as_json else b"\x91" * DEEP + b"\x90"


@st.composite
def mutated_tasks(draw: st.DrawFn) -> dict[str, Any]:
    """A task with one thing wrong: missing field, wrong type, unknown tag, deep nesting."""
    task = dict(VALID_TASK, id=draw(st.from_regex(r"\A[a-z0-9]{1,12}\Z")))
    how = draw(st.sampled_from(["drop", "retype", "tag", "deep", "extra_deep", "bad_values"]))
    if how == "drop":
        del task[draw(st.sampled_from(["id", "prompt"]))]  # "type" may be left out
    elif how == "retype":
        field = draw(st.sampled_from(["id", "prompt", "max_tokens", "temperature", "agents"]))
        task[field] = draw(json_values.filter(lambda v: not isinstance(v, str | int | float)))
    elif how == "tag":
        task["type"] = draw(st.text().filter(lambda t: t != "task"))
    elif how == "deep":
        task["prompt"] = DEEP_MARK
    elif how == "extra_deep":
        task["zz"] = DEEP_MARK  # an unknown field is skipped, recursively
    else:
        task["max_tokens"] = draw(st.integers(-(2**62), 0) | st.integers(10**6, 2**62))
    return task


def _encode(value: Any, as_json: bool) -> bytes:
    try:
        body = msgspec.json.encode(value) if as_json else msgspec.msgpack.encode(value)
    except (OverflowError, TypeError):
        return b"\xc1" * 16  # not encodable by msgspec either: send bytes that never decode
    mark = msgspec.json.encode(DEEP_MARK) if as_json else msgspec.msgpack.encode(DEEP_MARK)
    return body.replace(mark, _deep_bytes(as_json))


def hostile_payloads() -> st.SearchStrategy[tuple[bytes, bool]]:
    """(body, is_json) pairs: random bytes, random values, and tasks with one thing wrong."""
    encoded = st.tuples(json_values | mutated_tasks(), st.booleans()).map(
        lambda vb: (_encode(vb[0], vb[1]), vb[1])
    )
    return st.one_of(st.tuples(st.binary(max_size=512), st.booleans()), encoded)


def _headers(as_json: bool) -> dict[str, str]:
    if as_json:
        return {"Content-Type": "application/json"}
    return {"Lmt": "1 task 0000000000000001 fuzz 0000000000000001 1"}


# --- the codec ----------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(hostile_payloads())
def test_codec_refuses_or_decodes_never_raises_otherwise(payload: tuple[bytes, bool]) -> None:
    outcome = _decode(*payload)
    assert isinstance(outcome, Task) or bool(outcome.reason)


@settings(max_examples=100, deadline=None)
@given(mutated_tasks(), st.booleans())
def test_codec_names_the_field_of_a_wrong_task(task: dict[str, Any], as_json: bool) -> None:
    outcome = _decode(_encode(task, as_json), as_json)
    if isinstance(outcome, Task):
        assert task_problem(outcome)  # decoded, yet invalid (e.g. max_tokens out of range)
    else:
        named = outcome.field or "field `" in outcome.reason or "nested" in outcome.reason
        assert named, outcome  # the error says which field, or that it nests too deep


def _decode(body: bytes, as_json: bool) -> Task | DecodeError:
    try:
        return TASKS.decode(body, json=as_json)
    except DecodeError as err:
        return err


def test_codec_handles_huge_strings() -> None:
    big = "x" * 5_000_000
    task = TASKS.decode(msgspec.json.encode(dict(VALID_TASK, prompt=big)), json=True)
    assert len(task.prompt) == len(big)


# --- a live agent -------------------------------------------------------------------------


class Team(msgspec.Struct, kw_only=True):
    bus: Bus
    agent: WorkerAgent
    runtime: Runtime


@contextlib.asynccontextmanager
async def live_team(bus: Bus) -> AsyncIterator[Team]:
    """An agent on the bus, hosted inside the test (a task group cannot span fixture phases)."""
    config = WorkerConfig(
        backend=BackendConfig(kind="sim", sim_device="h100-cuda"),
        fetch_timeout_s=0.2,
        heartbeat_s=0.5,
    )
    agent = WorkerAgent(config)
    async with open_runtime(bus, TEAM) as runtime:
        await runtime.spawn(agent, actor_id="w1", roles=("worker",))
        yield Team(bus=bus, agent=agent, runtime=runtime)


async def _still_serving(team: Team) -> None:
    pong = await team.bus.request(S.agent("w1"), Ping(), expect=Pong, timeout=10)
    assert pong.agent == "w1"
    client = TeamClient(team.bus, TEAM)
    result = await client.submit("What is 2 + 2?", max_tokens=4, timeout=30)
    assert result.ok and result.agent == "w1"


def _refusal(reply: bytes, as_json: bool) -> tuple[str, str]:
    """(kind, message) of an error reply; ("", "") for a real answer."""
    try:
        error = ERRORS.decode(reply, json=as_json)
    except DecodeError:
        return "", ""
    return error.kind, error.message


def _refused_by(codec: Codec[Any], body: bytes, as_json: bool) -> bool:
    try:
        codec.decode(body, json=as_json)
    except DecodeError:
        return True
    return False


async def test_every_hostile_request_gets_a_clear_error_reply(bus: Bus) -> None:
    """Each request the agent cannot decode is refused as such, with a reason; each one it
    can (a body that happens to be a valid request) is not."""
    async with live_team(bus) as team:
        inbox = type(team.agent)._codec
        assert inbox is not None
        before = team.bus.statistics().decode_errors
        outcomes: list[tuple[bool, str, str]] = []
        for body, as_json in draw_examples(hostile_payloads(), 150):
            hostile = _refused_by(inbox, body, as_json)
            reply = await team.bus.nc.request(
                S.agent("w1"), body, timeout=10, headers=_headers(as_json)
            )
            outcomes.append((hostile, *_refusal(reply.data, as_json)))
        refused = [(kind, message) for hostile, kind, message in outcomes if hostile]
        assert len(refused) >= 100  # the payloads are mostly hostile
        assert all(kind == "decode" and message for kind, message in refused)
        assert all(kind != "decode" for hostile, kind, _ in outcomes if not hostile)
        assert team.bus.statistics().decode_errors - before == len(refused)  # each counted
        await _still_serving(team)


async def test_hostile_tasks_are_dead_lettered_with_reasons(bus: Bus) -> None:
    async with live_team(bus) as team:
        payloads = draw_examples(hostile_payloads(), 60)
        expected = 0
        for body, as_json in payloads:
            try:
                expected += bool(task_problem(TASKS.decode(body, json=as_json)))
            except DecodeError:
                expected += 1
            await team.bus.publish_raw(S.tasks, body, _headers(as_json))

        async def dead_letters() -> int:
            info = await team.bus.js.stream_info(S.dead_stream)
            return int(info.state.messages)

        with anyio.fail_after(60):
            while await dead_letters() < expected:
                await anyio.sleep(0.2)
        first = await team.bus.js.get_msg(S.dead_stream, seq=1)
        assert first.headers and first.headers["Lmt-Dead-Reason"]
        assert first.headers["Lmt-Dead-Subject"] == S.tasks
        await _still_serving(team)


async def test_a_salvageable_id_is_named_in_the_reply_to_its_inbox(bus: Bus) -> None:
    async with live_team(bus) as team:
        bad = msgspec.json.encode({"type": "task", "id": "q9", "prompt": [[42]]})
        inbox = team.bus.nc.new_inbox()
        replies = await team.bus.nc.subscribe(inbox)
        headers = {"Content-Type": "application/json", "Lmt-Reply-To": inbox}
        await team.bus.publish_raw(S.tasks, bad, headers)
        result = Codec(Result).decode((await replies.next_msg(timeout=20)).data, json=True)
        assert not result.ok and result.error_kind == "decode" and "$.prompt" in result.error
        assert result.task_id == "q9"
        # it never became a task, so it wrote no result under q9's subject
        assert await TeamClient(team.bus, TEAM).result("q9") is None


async def test_oversized_payloads_give_the_publisher_a_clear_error(bus: Bus) -> None:
    async with live_team(bus) as team:
        too_big = "x" * (team.bus.nc.max_payload + 1)
        with pytest.raises(EncodeError, match="max_payload"):
            await team.bus.publish(S.agent("w1"), Prompt(task_id="big", prompt=too_big))
        with pytest.raises(EncodeError, match="max_payload"):
            await team.bus.publish_raw(S.tasks, too_big.encode())
        with pytest.raises(EncodeError, match="max_payload"):
            await team.bus.request(
                S.agent("w1"), Prompt(task_id="big", prompt=too_big), expect=Pong
            )
        with pytest.raises(ConfigError, match="max_prompt_bytes"):  # refused before encoding
            await TeamClient(team.bus, TEAM).submit(too_big, timeout=5)
        # a plain client that skips lmteams' checks is cut off by the server, not the agent
        async with contextlib.AsyncExitStack() as stack:
            raw = await nats.connect(team.bus.nc.connected_url.geturl())  # type: ignore[union-attr]
            stack.push_async_callback(raw.close)
            raw._max_payload = 10 * 1024 * 1024  # lie about the limit
            with contextlib.suppress(nats.errors.Error, OSError):
                await raw.publish(S.agent("w1"), too_big.encode())
                await raw.flush(timeout=2)
        await _still_serving(team)


def _backlog(team: Team) -> int:
    """Messages received from the server and not yet handled, over all subscriptions."""
    return sum(sub.pending_msgs for sub in team.bus.nc._subs.values())


async def test_a_flood_of_malformed_messages_leaves_the_agent_serving(bus: Bus) -> None:
    async with live_team(bus) as team:
        bodies = draw_examples(hostile_payloads(), 200)

        async def flood(n: int, publish: Callable[[bytes, dict[str, str]], Any]) -> None:
            for i in range(n):
                body, as_json = bodies[i % len(bodies)]
                await publish(body, _headers(as_json))
            await team.bus.flush()

        def to_inbox(body: bytes, headers: dict[str, str]) -> Any:
            return team.bus.publish_raw(S.agent("w1"), body, headers)

        def to_tasks(body: bytes, headers: dict[str, str]) -> Any:
            return team.bus.publish_raw(S.tasks, body, headers)

        inbox = type(team.agent)._codec
        assert inbox is not None
        hostile = [_refused_by(inbox, body, as_json) for body, as_json in bodies]
        decode_errors = team.bus.statistics().decode_errors
        for _ in range(3):
            await flood(2000, to_inbox)
            await flood(200, to_tasks)
            await _still_serving(team)
        refused = 3 * sum(hostile[i % len(bodies)] for i in range(2000))
        await wait_until(
            lambda: team.bus.statistics().decode_errors >= decode_errors + refused, timeout=60
        )
        # nothing of the flood is kept: no backlog in the subscriptions or the mailbox, and
        # the dead letters stay within their stream's limit (memory is the benchmarks' part)
        await wait_until(lambda: _backlog(team) == 0, timeout=60)
        (actor,) = team.runtime.statistics()
        assert (actor.state, actor.restarts, actor.mailbox) == (ActorState.RUNNING, 0, 0)
        dead = await team.bus.js.stream_info(S.dead_stream)
        assert dead.config.max_msgs and 0 < dead.state.messages <= dead.config.max_msgs


async def test_dead_letter_stream_keeps_only_its_limit(bus: Bus) -> None:
    await ensure_team_streams(bus, S, StreamSettings(dead_max_msgs=50))
    for i in range(120):
        await bus.publish_raw(S.dead("decode"), f"junk {i}".encode(), {"Lmt-Dead-Reason": "x"})
    await bus.flush()
    with anyio.fail_after(10):
        while (info := await bus.js.stream_info(S.dead_stream)).state.last_seq < 120:
            await anyio.sleep(0.05)
    assert info.state.messages == 50


async def test_a_json_client_hears_which_field_is_wrong(bus: Bus) -> None:
    """A JSON client that talks to a live agent with the wrong shape hears which field."""
    url = bus.nc.connected_url.geturl()  # type: ignore[union-attr]
    sim = WorkerConfig(backend=BackendConfig(kind="sim", sim_device="h100-cuda"))
    async with open_bus(url, name="json-client") as other, open_runtime(bus, TEAM) as rt:
        await rt.spawn(lambda: WorkerAgent(sim), actor_id="w2")
        reply = await other.nc.request(
            S.agent("w2"),
            b'{"type": "prompt", "task_id": "j1", "prompt": 42}',
            timeout=10,
            headers={"Content-Type": "application/json"},
        )
    err = msgspec.json.decode(reply.data, type=ErrorReply)
    assert err.kind == "decode" and err.field == "$.prompt"
