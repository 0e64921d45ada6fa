"""FastClient must be indistinguishable from nats-py on the wire and in parsed headers, and
its requests must survive what the bus survives (a restart, a failover) and end with it."""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

import anyio
import msgspec
import nats.errors
import pytest
from hypothesis import given
from hypothesis import strategies as st
from nats.aio.client import Client

from lmteams.bus import Bus, BusState, Codec, EmbeddedServer, Incoming, LocalCluster, open_bus
from lmteams.bus._fastclient import NATS_PY_RANGE, FastClient, parse_header_lines
from lmteams.errors import NotConnectedError
from lmteams.testing import wait_until

PYPROJECT = Path(__file__).parents[2] / "pyproject.toml"

header_names = st.from_regex(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,12}", fullmatch=True)
header_values = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
raw_lines = st.lists(
    st.binary(max_size=30)
    | st.builds(lambda k, v: k + b":" + v, st.binary(max_size=8), st.binary(max_size=20)),
    max_size=8,
)


@given(lines=raw_lines)
def test_header_parse_matches_nats_py(lines: list[bytes]) -> None:
    raw = b"\r\n".join(lines) + b"\r\n\r\n"
    assert parse_header_lines(raw) == Client._parse_header_lines(raw)


async def _written(client: Client, headers: dict[str, str]) -> bytes:
    sent: list[bytes] = []

    async def capture(cmd: bytes, priority: bool = False) -> None:
        sent.append(bytes(cmd))

    client._send_command = capture  # type: ignore[method-assign]
    client._flush_queue = None
    await client._send_publish("subj.a", "reply.b", b"payload", 7, headers)
    return b"".join(sent)


@given(headers=st.dictionaries(header_names, header_values, min_size=1, max_size=6))
async def test_header_encoding_is_byte_identical(headers: dict[str, str]) -> None:
    assert await _written(FastClient(), headers) == await _written(Client(), headers)


async def test_ping_queues_behind_pending_commands() -> None:
    """A PONG must mean the server processed everything sent before the PING."""
    client = FastClient()
    written: list[bytes] = []

    class Transport:
        def write(self, data: bytes) -> None:
            written.append(bytes(data))

        def writelines(self, lines: list[bytes]) -> None:
            written.extend(bytes(line) for line in lines)

    async def flush_as_the_flusher_does(force_flush: bool = False) -> None:
        client._transport.writelines(client._pending[:])
        client._pending = []

    client._transport = Transport()
    client._flush_pending = flush_as_the_flusher_does  # type: ignore[method-assign]
    client._pending.append(b"SUB calc.add 1\r\n")  # queued, not yet on the wire
    await client._send_ping()
    assert b"".join(written) == b"SUB calc.add 1\r\nPING\r\n"  # the SUB went first


envelope_values = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


@given(value=envelope_values, more=st.lists(st.binary(max_size=20), max_size=2))
def test_envelope_fast_path_matches_nats_py(value: str, more: list[bytes]) -> None:
    """The one-line fast path and the general parse agree, with and without extra lines."""
    raw = b"\r\n".join([b"Lmt: " + value.encode(), *more]) + b"\r\n\r\n"
    assert parse_header_lines(raw) == Client._parse_header_lines(raw)


@given(value=envelope_values)
async def test_enveloped_publish_is_byte_identical(value: str) -> None:
    """``publish_enveloped`` writes what nats-py writes for the same single header."""
    ours = FastClient()
    sent: list[bytes] = []

    async def capture(cmd: bytes, priority: bool = False) -> None:
        sent.append(bytes(cmd))

    ours._send_command = capture  # type: ignore[method-assign]
    ours._flush_queue = None
    ours._status = Client.CONNECTED
    ours._max_payload = 1 << 20
    await ours.publish_enveloped("subj.a", b"payload", envelope=value, reply="reply.b")
    assert b"".join(sent) == await _written(Client(), {"Lmt": value})


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".")[:2])


def test_installed_nats_py_is_one_fastclient_was_written_for() -> None:
    """FastClient overrides nats-py's private methods: an untested release must fail CI."""
    low, high = NATS_PY_RANGE
    installed = _release(importlib.metadata.version("nats-py"))
    assert _release(low) <= installed < _release(high), (
        f"nats-py {installed} is outside {NATS_PY_RANGE}: check FastClient's overrides "
        "against it, then move NATS_PY_RANGE and the bound in pyproject.toml together"
    )
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    assert f"nats-py>={low},<{high}" in deps  # what pip installs is what was checked


class Add(msgspec.Struct, frozen=True, kw_only=True, tag="add"):
    a: int
    b: int


class Sum(msgspec.Struct, frozen=True, kw_only=True, tag="sum"):
    value: int


class GatedAdder:
    """A responder that takes requests at once and answers when the test opens the gate."""

    def __init__(self) -> None:
        self.gate = anyio.Event()
        self.received = 0
        self.answered = 0

    async def __call__(self, inc: Incoming[Add]) -> None:
        self.received += 1
        await self.gate.wait()
        await inc.respond(Sum(value=inc.body.a + inc.body.b))
        self.answered += 1

    async def serve(self, bus: Bus, tg: anyio.abc.TaskGroup) -> None:
        async def handle(inc: Incoming[Add]) -> None:
            tg.start_soon(self, inc)  # a task per request: the callback must not block

        await bus.subscribe("calc.add", handle, codec=Codec(Add))


async def _ask_all(bus: Bus, numbers: range, results: dict[int, object]) -> None:
    async def one(n: int) -> None:
        try:
            results[n] = (
                await bus.request("calc.add", Add(a=n, b=n), expect=Sum, timeout=60)
            ).value
        except Exception as exc:
            results[n] = exc

    async with anyio.create_task_group() as tg:
        for n in numbers:
            tg.start_soon(one, n)


async def test_requests_in_flight_survive_a_server_restart(nats_server: EmbeddedServer) -> None:
    """Requests taken before a crash are answered while it is down, and requests made while
    it is down are sent on reconnect: every caller gets its own reply after the restart."""
    adder = GatedAdder()
    results: dict[int, object] = {}
    async with open_bus(nats_server.url, name="survivor") as bus, anyio.create_task_group() as tg:
        await adder.serve(bus, tg)
        tg.start_soon(_ask_all, bus, range(5), results)
        await wait_until(lambda: adder.received == 5)  # all five in flight
        await nats_server.kill()
        await wait_until(lambda: bus.state is BusState.RECONNECTING)
        adder.gate.set()  # the replies are written while the server is down
        await wait_until(lambda: adder.answered == 5)
        tg.start_soon(_ask_all, bus, range(5, 8), results)  # asked during the outage
        await nats_server.start()
        await wait_until(lambda: len(results) == 8, timeout=60)
        tg.cancel_scope.cancel()
    assert results == {n: 2 * n for n in range(8)}
    assert bus.statistics().reconnects >= 1


def _node_of(bus: Bus, cluster: LocalCluster) -> EmbeddedServer:
    port = bus.nc.connected_url.port  # type: ignore[union-attr]
    return next(s for s in cluster.servers if s.config.port == port)


async def test_requests_in_flight_survive_a_cluster_failover(cluster3: LocalCluster) -> None:
    """The requester's node dies with requests taken by a responder on another node: the
    requester fails over, and the replies and the requests made meanwhile all arrive."""
    adder = GatedAdder()
    results: dict[int, object] = {}
    async with open_bus(cluster3.url, name="requester") as bus:
        doomed = _node_of(bus, cluster3)
        other = next(s for s in cluster3.servers if s is not doomed)
        async with (
            open_bus(other.url, name="responder") as responder,
            anyio.create_task_group() as tg,
        ):
            await adder.serve(responder, tg)
            await _route_is_up(bus, responder)  # the requester's node knows the responder
            tg.start_soon(_ask_all, bus, range(5), results)
            await wait_until(lambda: adder.received == 5)
            await doomed.kill()
            tg.start_soon(_ask_all, bus, range(5, 8), results)  # asked during the failover
            await wait_until(lambda: bus.state is BusState.CONNECTED and bus.nc.is_connected)
            assert _node_of(bus, cluster3) is not doomed
            await _route_is_up(responder, bus)  # and the responder's node knows the inbox
            adder.gate.set()
            await wait_until(lambda: len(results) == 8, timeout=60)
            tg.cancel_scope.cancel()
    assert results == {n: 2 * n for n in range(8)}


async def _route_is_up(sender: Bus, receiver: Bus) -> None:
    """Wait until the sender's node knows the subscriptions the receiver has made so far.

    Interest crosses a route in the order it was made, so once a subscription made now
    hears from the sender, every earlier one of the receiver's is known there too.
    """
    heard = anyio.Event()

    async def on_probe(_inc: Incoming[Sum]) -> None:
        heard.set()

    probe = await receiver.subscribe("probe.route", on_probe, codec=Codec(Sum))
    with anyio.fail_after(30):
        while not heard.is_set():
            await sender.publish("probe.route", Sum(value=0))
            with anyio.move_on_after(0.1):
                await heard.wait()
    await probe.unsubscribe()


async def test_close_fails_pending_requests_at_once(nats_server: EmbeddedServer) -> None:
    """A caller waiting for a reply learns that the connection closed, not its timeout."""
    adder = GatedAdder()  # never opened: nobody is answered
    outcomes: list[BaseException] = []
    async with open_bus(nats_server.url, name="closing") as bus, anyio.create_task_group() as tg:

        async def one() -> None:
            try:
                await bus.request("calc.add", Add(a=1, b=1), expect=Sum, timeout=3600)
            except NotConnectedError as err:
                outcomes.append(err)

        await adder.serve(bus, tg)
        for _ in range(3):
            tg.start_soon(one)
        await wait_until(lambda: adder.received == 3)
        await bus.nc.close()
        await wait_until(lambda: len(outcomes) == 3)  # not an hour from now
        tg.cancel_scope.cancel()
    assert all("closed while a request" in str(err) for err in outcomes)
    with pytest.raises(nats.errors.ConnectionClosedError):  # and none is accepted after
        await bus.nc.fast_request("calc.add", b"", timeout=3600, envelope="x")
