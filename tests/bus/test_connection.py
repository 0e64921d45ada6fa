from __future__ import annotations

import collections
import json

import anyio
import msgspec
import nats
import pytest

from lmteams.bus import (
    Bus,
    BusState,
    Codec,
    EmbeddedServer,
    Incoming,
    ServerConfig,
    open_bus,
    run_server,
)
from lmteams.errors import NoRespondersError, NotConnectedError, RemoteError, RequestTimeoutError
from lmteams.testing import wait_until


class Add(msgspec.Struct, frozen=True, kw_only=True, tag="add"):
    a: int
    b: int


class Sum(msgspec.Struct, frozen=True, kw_only=True, tag="sum"):
    value: int
    by: str = ""


async def _adder(bus: Bus, subject: str = "calc.add", *, name: str = "", queue: str = "") -> None:
    async def handle(inc: Incoming[Add]) -> None:
        await inc.respond(Sum(value=inc.body.a + inc.body.b, by=name))

    await bus.subscribe(subject, handle, codec=Codec(Add), queue=queue)


async def test_request_reply_round_trip(bus: Bus) -> None:
    await _adder(bus)
    assert await bus.request("calc.add", Add(a=2, b=3), expect=Sum) == Sum(value=5)
    stats = bus.statistics()
    assert stats.state is BusState.CONNECTED
    assert stats.requests == 1 and stats.published >= 1


async def test_publish_subscribe_in_order(bus: Bus) -> None:
    got: list[int] = []

    async def handle(inc: Incoming[Add]) -> None:
        got.append(inc.body.a)

    await bus.subscribe("calc.stream", handle, codec=Codec(Add))
    for i in range(50):
        await bus.publish("calc.stream", Add(a=i, b=0))
    await wait_until(lambda: len(got) == 50)
    assert got == list(range(50))


async def test_envelope_reaches_the_handler(bus: Bus) -> None:
    seen: list[Incoming[Add]] = []

    async def handle(inc: Incoming[Add]) -> None:
        seen.append(inc)

    await bus.subscribe("env.x", handle, codec=Codec(Add))
    await bus.publish("env.x", Add(a=1, b=1), sender="agent-7", trace="trace-1")
    await wait_until(lambda: bool(seen))
    env = seen[0].envelope
    assert (env.type, env.sender, env.trace, env.schema) == ("add", "agent-7", "trace-1", 1)
    assert env.clock >= 1 and env.id


async def test_lamport_clock_advances_across_connections(nats_server: EmbeddedServer) -> None:
    async with open_bus(nats_server.url, name="a") as a, open_bus(nats_server.url, name="b") as b:
        for _ in range(10):
            a.clock.tick()
        await _adder(b)
        await a.request("calc.add", Add(a=1, b=1), expect=Sum)
        assert b.clock.time > 10  # b observed a's later time
        assert a.clock.time > b.clock.time - 1


async def test_timeout_and_no_responders(bus: Bus) -> None:
    with pytest.raises(NoRespondersError, match=r"nobody\.home"):
        await bus.request("nobody.home", Add(a=1, b=1), expect=Sum, timeout=1)

    async def silent(inc: Incoming[Add]) -> None:
        pass

    await bus.subscribe("calc.silent", silent, codec=Codec(Add))
    with pytest.raises(RequestTimeoutError):
        await bus.request("calc.silent", Add(a=1, b=1), expect=Sum, timeout=0.2)


async def test_undecodable_request_gets_error_reply_naming_the_field(bus: Bus) -> None:
    await _adder(bus)
    reply = await bus.nc.request(
        "calc.add",
        json.dumps({"type": "add", "a": "two", "b": 3}).encode(),
        headers={"Content-Type": "application/json"},
        timeout=2,
    )
    body = json.loads(reply.data)  # a JSON caller gets JSON back
    assert body["type"] == "error" and body["kind"] == "decode"
    assert body["field"] == "$.a" and "Expected `int`" in body["message"]
    assert bus.statistics().decode_errors == 1
    # and the subscription keeps serving
    assert await bus.request("calc.add", Add(a=1, b=1), expect=Sum) == Sum(value=2)


async def test_plain_json_client_gets_a_json_answer(bus: Bus) -> None:
    await _adder(bus)
    plain = await nats.connect(bus.nc.connected_url.geturl())
    try:
        reply = await plain.request("calc.add", b'{"type": "add", "a": 20, "b": 22}', timeout=2)
    finally:
        await plain.close()
    assert json.loads(reply.data) == {"type": "sum", "value": 42, "by": ""}


async def test_raising_handler_becomes_remote_error_and_subscription_survives(bus: Bus) -> None:
    calls = 0

    async def flaky(inc: Incoming[Add]) -> None:
        nonlocal calls
        calls += 1
        if inc.body.a < 0:
            raise ValueError("negative input")
        await inc.respond(Sum(value=inc.body.a))

    await bus.subscribe("calc.flaky", flaky, codec=Codec(Add))
    with pytest.raises(RemoteError, match="ValueError: negative input") as info:
        await bus.request("calc.flaky", Add(a=-1, b=0), expect=Sum)
    assert info.value.kind == "handler"
    assert await bus.request("calc.flaky", Add(a=4, b=0), expect=Sum) == Sum(value=4)
    assert bus.statistics().handler_errors == 1


async def test_queue_group_spreads_requests(nats_server: EmbeddedServer) -> None:
    async with (
        open_bus(nats_server.url, name="w1") as w1,
        open_bus(nats_server.url, name="w2") as w2,
        open_bus(nats_server.url, name="cli") as cli,
    ):
        await _adder(w1, "calc.q", name="w1", queue="workers")
        await _adder(w2, "calc.q", name="w2", queue="workers")
        counts: collections.Counter[str] = collections.Counter()
        for i in range(200):
            counts[(await cli.request("calc.q", Add(a=i, b=0), expect=Sum)).by] += 1
    assert set(counts) == {"w1", "w2"}  # each request went to exactly one member
    assert sum(counts.values()) == 200


async def test_closed_bus_refuses_work(nats_server: EmbeddedServer) -> None:
    async with open_bus(nats_server.url) as bus:
        pass
    assert bus.state is BusState.CLOSED
    with pytest.raises(NotConnectedError):
        await bus.publish("x", Add(a=1, b=1))


async def test_embedded_server_when_no_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LMTEAMS_NATS_URL", raising=False)
    async with open_bus() as bus:
        await _adder(bus)
        assert (await bus.request("calc.add", Add(a=1, b=2), expect=Sum)).value == 3


async def test_unreachable_url_is_a_clear_error() -> None:
    with pytest.raises(NotConnectedError, match="cannot connect to NATS"):
        async with open_bus("nats://127.0.0.1:1", connect_timeout=0.5, max_reconnect_attempts=0):
            pass


async def test_token_auth_is_passed_through(log_events: list[dict[str, object]]) -> None:
    config = ServerConfig(extra={"authorization": {"token": "s3cret-token"}})
    async with run_server(config) as server:
        with pytest.raises(NotConnectedError):
            async with open_bus(server.url, connect_timeout=1, max_reconnect_attempts=0):
                pass
        async with open_bus(server.url, token="s3cret-token") as bus:
            await _adder(bus)
            assert (await bus.request("calc.add", Add(a=1, b=1), expect=Sum)).value == 2
    assert "s3cret-token" not in repr(log_events)


async def test_reconnects_after_server_restart(nats_server: EmbeddedServer) -> None:
    async with open_bus(nats_server.url, name="survivor") as bus:
        await nats_server.kill()
        await wait_until(lambda: bus.state is BusState.RECONNECTING)
        await nats_server.start()
        await wait_until(lambda: bus.state is BusState.CONNECTED, timeout=20)
        await _adder(bus)
        assert (await bus.request("calc.add", Add(a=1, b=1), expect=Sum)).value == 2
        stats = bus.statistics()
        assert stats.disconnects >= 1 and stats.reconnects >= 1
        await bus.flush(timeout=30)  # a flush after the reconnect gets its PONG


async def test_each_request_keeps_its_own_deadline(bus: Bus) -> None:
    """Short and long timeouts in flight together: only the short one expires, whichever
    was sent first. The responder holds its requests until the test answers them."""
    held: list[Incoming[Add]] = []

    async def hold(incoming: Incoming[Add]) -> None:
        held.append(incoming)

    await bus.subscribe("calc.slow", hold, codec=Codec(Add))
    outcomes: dict[str, object] = {}

    async def ask(name: str, timeout: float, subject: str = "calc.slow") -> None:
        try:
            outcomes[name] = await bus.request(subject, Add(a=1, b=2), expect=Sum, timeout=timeout)
        except RequestTimeoutError as err:
            outcomes[name] = err

    async def answer_held() -> None:
        for incoming in held:
            await incoming.respond(Sum(value=incoming.body.a + incoming.body.b))
        held.clear()

    async with anyio.create_task_group() as tg:
        tg.start_soon(ask, "long", 3600.0)
        tg.start_soon(ask, "short", 0.1)
        await wait_until(lambda: "short" in outcomes)
        assert "long" not in outcomes  # still waiting
        await answer_held()  # the late reply to the expired request is dropped
    assert isinstance(outcomes["short"], RequestTimeoutError)
    assert outcomes["long"] == Sum(value=3)

    async def silent(_incoming: Incoming[Add]) -> None:
        pass

    await bus.subscribe("calc.quiet", silent, codec=Codec(Add))
    async with anyio.create_task_group() as tg:  # a shorter deadline behind a longer one
        tg.start_soon(ask, "later_long", 3600.0)
        await wait_until(lambda: len(held) == 1)  # the long one is in flight first
        await ask("quiet", 0.1, "calc.quiet")
        await answer_held()
    assert isinstance(outcomes["quiet"], RequestTimeoutError)  # ...did not wait for it
    assert outcomes["later_long"] == Sum(value=3)


async def test_bad_subjects_are_refused_before_the_wire(bus: Bus) -> None:
    for subject in ("", "has space", "crlf\r\nPUB x 1"):
        with pytest.raises(Exception, match=r"(?i)subject"):
            await bus.publish(subject, Add(a=1, b=1))
