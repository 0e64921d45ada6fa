"""Actors on a real nats-server: dispatch, errors, supervision, backpressure, drain."""

from __future__ import annotations

from typing import ClassVar

import anyio
import msgspec
import pytest

from lmteams.agents import Actor, ActorState, RestartPolicy, handler, open_runtime
from lmteams.bus import Bus, EmbeddedServer, Subjects, ensure_team_streams, open_bus
from lmteams.errors import ActorDeadError, MailboxFullError, RemoteError
from lmteams.testing import wait_until


class Add(msgspec.Struct, frozen=True, kw_only=True, tag="add"):
    a: int
    b: int


class Echo(msgspec.Struct, frozen=True, kw_only=True, tag="echo"):
    text: str


class Note(msgspec.Struct, frozen=True, kw_only=True, tag="note"):
    n: int


class Sum(msgspec.Struct, frozen=True, kw_only=True, tag="sum"):
    value: int


class Untagged(msgspec.Struct):
    x: int


class Calculator(Actor):
    def __init__(self) -> None:
        self.notes: list[int] = []
        self.started = False
        self.stopped = False

    async def on_start(self) -> None:
        self.started = True

    async def on_stop(self) -> None:
        self.stopped = True

    @handler
    async def on_add(self, msg: Add) -> Sum:
        if msg.a < 0:
            raise ValueError("negative")
        return Sum(value=msg.a + msg.b)

    @handler
    async def on_echo(self, msg: Echo) -> Echo:
        return msg

    @handler
    async def on_note(self, msg: Note) -> None:
        await anyio.sleep(0.001)
        self.notes.append(msg.n)


async def test_handlers_are_chosen_by_message_type(bus: Bus) -> None:
    async with open_runtime(bus, "t") as rt:
        ref = await rt.spawn(Calculator, actor_id="calc")
        assert await ref.ask(Add(a=2, b=3), expect=Sum) == Sum(value=5)
        assert await ref.ask(Echo(text="hi"), expect=Echo) == Echo(text="hi")


async def test_mailbox_is_processed_in_order(bus: Bus) -> None:
    calc = Calculator()
    async with open_runtime(bus, "t") as rt:
        ref = await rt.spawn(calc, actor_id="calc")
        for i in range(100):
            await ref.tell(Note(n=i))
        await wait_until(lambda: len(calc.notes) == 100)
    assert calc.notes == list(range(100))
    assert calc.started and calc.stopped


async def test_raising_handler_replies_error_and_keeps_serving(bus: Bus) -> None:
    async with open_runtime(bus, "t") as rt:
        ref = await rt.spawn(Calculator, actor_id="calc")
        with pytest.raises(RemoteError, match="ValueError: negative") as info:
            await ref.ask(Add(a=-1, b=0), expect=Sum)
        assert info.value.kind == "handler"
        assert await ref.ask(Add(a=1, b=1), expect=Sum) == Sum(value=2)
        (stats,) = rt.statistics()
        assert (stats.errors, stats.processed, stats.state) == (1, 1, ActorState.RUNNING)


async def test_unknown_message_type_is_refused_and_dead_lettered(bus: Bus) -> None:
    s = Subjects("t")
    await ensure_team_streams(bus, s)
    async with open_runtime(bus, "t") as rt:
        ref = await rt.spawn(Calculator, actor_id="calc")
        reply = await bus.nc.request(
            s.agent("calc"), b'{"type": "launch", "target": "moon"}', timeout=2
        )
        assert b'"kind":"decode"' in reply.data and b"$.type" in reply.data
        assert await ref.ask(Add(a=1, b=1), expect=Sum) == Sum(value=2)
    dead = await bus.js.get_last_msg(s.dead_stream, s.dead("decode"))
    assert dead.data == b'{"type": "launch", "target": "moon"}'
    assert dead.headers is not None
    assert "$.type" in dead.headers["Lmt-Dead-Reason"]
    assert dead.headers["Lmt-Dead-Subject"] == s.agent("calc")


class Crashy(Actor):
    starts: ClassVar[int] = 0

    async def on_start(self) -> None:
        type(self).starts += 1

    async def run(self) -> None:
        await anyio.sleep(0.05)
        raise RuntimeError("boom")

    @handler
    async def on_echo(self, msg: Echo) -> Echo:
        return msg


async def test_crashing_actor_is_restarted_then_given_up(bus: Bus) -> None:
    Crashy.starts = 0
    policy = RestartPolicy(max_restarts=3, window_s=60, backoff_s=0.01)
    async with open_runtime(bus, "t") as rt:
        await rt.spawn(Crashy, actor_id="crashy", policy=policy)
        await wait_until(lambda: rt.state("crashy") is ActorState.FAILED)
        (stats,) = rt.statistics()
    assert Crashy.starts == 4  # the first start and three restarts
    assert stats.restarts == 3


class CrashOnce(Actor):
    failures: ClassVar[list[str]] = []
    lives: ClassVar[int] = 0

    async def on_start(self) -> None:
        type(self).lives += 1

    async def run(self) -> None:
        if type(self).lives == 1:
            raise RuntimeError("first life fails")
        await anyio.sleep_forever()

    async def on_failure(self, exc: BaseException) -> None:
        type(self).failures.append(str(exc))

    @handler
    async def on_echo(self, msg: Echo) -> Echo:
        return msg


async def test_restarted_actor_serves_again(bus: Bus) -> None:
    CrashOnce.lives, CrashOnce.failures = 0, []
    async with open_runtime(bus, "t") as rt:
        ref = await rt.spawn(CrashOnce, actor_id="phoenix", policy=RestartPolicy(backoff_s=0.01))
        await wait_until(lambda: CrashOnce.lives == 2 and rt.state("phoenix") is ActorState.RUNNING)
        assert await ref.ask(Echo(text="alive"), expect=Echo) == Echo(text="alive")
    assert CrashOnce.failures == ["first life fails"]


async def test_ask_to_a_stopped_actor_fails_fast(bus: Bus) -> None:
    async with open_runtime(bus, "t") as rt:
        ref = await rt.spawn(Calculator, actor_id="calc")
        await rt.stop("calc")
        with pytest.raises(ActorDeadError):  # told at once, not a timeout an hour from now
            await ref.ask(Add(a=1, b=1), expect=Sum, timeout=3600)


class Gated(Actor):
    """Holds each message until the test opens the gate: a mailbox that stays full."""

    mailbox_size = 2

    def __init__(self, gate: anyio.Event) -> None:
        self.gate = gate

    @handler
    async def on_add(self, msg: Add) -> Sum:
        await self.gate.wait()
        return Sum(value=msg.a + msg.b)


async def test_full_mailbox_refuses_requests(bus: Bus) -> None:
    gate = anyio.Event()
    async with open_runtime(bus, "t") as rt:
        ref = await rt.spawn(Gated(gate), actor_id="gated")
        outcomes: list[str] = []

        async def one(i: int) -> None:
            try:
                await ref.ask(Add(a=i, b=0), expect=Sum, timeout=3600)
                outcomes.append("ok")
            except MailboxFullError:
                outcomes.append("busy")

        async with anyio.create_task_group() as tg:
            for i in range(8):
                tg.start_soon(one, i)
            # 1 in hand + 2 queued; the other five are refused while the gate is shut
            await wait_until(lambda: outcomes.count("busy") == 5)
            assert outcomes == ["busy"] * 5  # refused at once, nothing answered yet
            gate.set()
        assert sorted(outcomes) == ["busy"] * 5 + ["ok"] * 3


async def test_graceful_stop_finishes_queued_messages(bus: Bus) -> None:
    calc = Calculator()
    async with open_runtime(bus, "t") as rt:
        ref = await rt.spawn(calc, actor_id="calc")
        for i in range(30):
            await ref.tell(Note(n=i))
        await bus.flush()
        await wait_until(lambda: len(calc.notes) > 0)
        await rt.stop("calc")
    assert calc.notes == list(range(30))


async def test_roles_spread_work_across_actors(bus: Bus) -> None:
    class Worker(Actor):
        @handler
        async def on_echo(self, msg: Echo) -> Echo:
            return Echo(text=self.context.actor_id)

    async with open_runtime(bus, "t") as rt:
        for i in range(3):
            await rt.spawn(Worker, actor_id=f"w{i}", roles=("worker",))
        who = {
            (await bus.request(Subjects("t").role("worker"), Echo(text="?"), expect=Echo)).text
            for _ in range(60)
        }
    assert who == {"w0", "w1", "w2"}


async def test_location_transparency_across_connections(nats_server: EmbeddedServer) -> None:
    """The same ref works whether the actor is in this runtime or another process's."""
    async with (
        open_bus(nats_server.url, name="host") as host_bus,
        open_bus(nats_server.url, name="client") as client_bus,
        open_runtime(host_bus, "t") as host,
        open_runtime(client_bus, "t") as client,
    ):
        await host.spawn(Calculator, actor_id="calc")
        remote = client.ref("calc")
        assert await remote.ask(Add(a=20, b=22), expect=Sum) == Sum(value=42)


def test_handler_signature_is_checked() -> None:
    with pytest.raises(TypeError, match="annotate the message parameter"):

        class Bad(Actor):
            @handler
            async def on_x(self, msg: int) -> None: ...

    with pytest.raises(TypeError, match="tagged Struct"):

        class Bad2(Actor):
            @handler
            async def on_x(self, msg: Untagged) -> None: ...
