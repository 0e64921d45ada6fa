"""Worker agents on a real nats-server with simulated backends: the task path end to end."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator

import anyio
import msgspec
import nats
import pytest

from lmteams.agents import Result, Task, TeamClient, WorkerAgent, WorkerConfig, open_runtime
from lmteams.bus import (
    Bus,
    Subjects,
    WorkQueueSettings,
    ensure_team_streams,
    last_message,
    publish_durable,
)
from lmteams.errors import ConfigError
from lmteams.hardware import Backend, DeviceClass, SimulatedBackend
from lmteams.testing import wait_until

TEAM = "wt"
STEADY = DeviceClass(
    name="steady",
    prompt_tokens_per_s=5000.0,
    generation_tokens_per_s=2000.0,
    load_s=0.0,
    jitter=0.0,
    straggler_prob=0.0,
    straggler_factor=1.0,
    failure_prob=0.0,
    description="a fault-free device for functional tests",
)


class SimWorker(WorkerAgent):
    """A worker on a fault-free simulated device (``slow`` scales its modelled time)."""

    def __init__(self, *, slow: float = 0.001, ack_wait: float = 30.0) -> None:
        super().__init__(
            WorkerConfig(
                queue=WorkQueueSettings(ack_wait_s=ack_wait),
                heartbeat_s=0.2,
                fetch_timeout_s=0.2,
            )
        )
        self.slow = slow
        self.generated = 0

    @contextlib.asynccontextmanager
    async def open_backend(self) -> AsyncIterator[Backend]:  # type: ignore[override]
        backend = SimulatedBackend(STEADY, seed=1, time_scale=self.slow)
        await backend.load()
        try:
            yield backend
        finally:
            await backend.aclose()

    async def _generate(self, request):  # type: ignore[no-untyped-def]
        self.generated += 1
        return await super()._generate(request)


async def test_submit_returns_one_answer(bus: Bus) -> None:
    async with open_runtime(bus, TEAM) as rt:
        await rt.spawn(SimWorker, actor_id="w1", roles=("worker",))
        client = TeamClient(bus, TEAM)
        result = await client.submit("What is 2+2?", max_tokens=16, timeout=20)
    assert result.ok and result.answer
    assert result.agent == "w1" and result.device.startswith("sim:")
    assert result.tokens_out > 0 and result.tokens_in > 0
    assert result.deliveries == 1 and result.total_s >= 0


async def test_many_tasks_spread_over_agents(bus: Bus) -> None:
    async with open_runtime(bus, TEAM) as rt:
        for i in range(3):
            await rt.spawn(lambda: SimWorker(slow=0.05), actor_id=f"w{i}", roles=("worker",))
        client = TeamClient(bus, TEAM)
        results: list[Result] = []

        async def one(i: int) -> None:
            results.append(await client.submit(f"question {i}", max_tokens=32, timeout=60))

        async with anyio.create_task_group() as tg:
            for i in range(24):
                tg.start_soon(one, i)
    assert len(results) == 24 and all(r.ok for r in results)
    assert len({r.task_id for r in results}) == 24
    assert len({r.agent for r in results}) == 3


async def test_plain_nats_client_speaks_json(bus: Bus) -> None:
    s = Subjects(TEAM)
    async with open_runtime(bus, TEAM) as rt:
        await rt.spawn(SimWorker, actor_id="w1")
        plain = await nats.connect(bus.nc.connected_url.geturl())
        try:
            sub = await plain.subscribe(s.results("plain-1"))
            await plain.publish(
                s.tasks,
                json.dumps({"type": "task", "id": "plain-1", "prompt": "hello"}).encode(),
                headers={"Content-Type": "application/json"},
            )
            msg = await sub.next_msg(timeout=20)
        finally:
            await plain.close()
    body = json.loads(msg.data)
    assert body["type"] == "result" and body["task_id"] == "plain-1" and body["ok"] is True
    assert msg.headers is not None and msg.headers["Content-Type"] == "application/json"


async def test_malformed_task_is_told_to_its_inbox_and_dead_lettered(bus: Bus) -> None:
    s = Subjects(TEAM)
    body = b'{"type": "task", "id": "bad-1", "prompt": 42}'
    async with open_runtime(bus, TEAM) as rt:
        worker = SimWorker()
        await rt.spawn(worker, actor_id="w1")
        client = TeamClient(bus, TEAM)
        inbox = bus.nc.new_inbox()
        replies = await bus.nc.subscribe(inbox)
        await bus.nc.publish(
            s.tasks, body, headers={"Content-Type": "application/json", "Lmt-Reply-To": inbox}
        )
        reply = json.loads((await replies.next_msg(timeout=20)).data)
        assert reply["type"] == "result" and reply["ok"] is False
        assert reply["error_kind"] == "decode" and reply["task_id"] == "bad-1"
        assert "$.prompt" in reply["error"] and "Expected `str`" in reply["error"]
        # nothing silently dropped: the raw task sits in the dead-letter stream with its reason
        dead = await last_message(bus, s.dead_stream, s.dead("decode"))
        assert dead is not None and dead[0] == body
        assert "$.prompt" in dead[1]["Lmt-Dead-Reason"]
        # a message that never became a task writes no result: the id stays free for its owner
        assert await client.result("bad-1") is None
        good = await client.submit("the real bad-1", task_id="bad-1", timeout=20)
        assert good.ok and worker.refused == 1
        # and the agent keeps serving
        assert (await client.submit("still there?", timeout=20)).ok


async def test_undecodable_task_without_id_is_dead_lettered(bus: Bus) -> None:
    s = Subjects(TEAM)
    async with open_runtime(bus, TEAM) as rt:
        await rt.spawn(SimWorker, actor_id="w1")
        await ensure_team_streams(bus, s)
        await bus.nc.publish(s.tasks, b"\x00\xffgarbage", headers={"Lmt": "1 task x y x 1"})
        await wait_until_dead(bus, s, 1)
        assert (await TeamClient(bus, TEAM).submit("fine", timeout=20)).ok


async def wait_until_dead(bus: Bus, s: Subjects, count: int) -> None:
    for _ in range(200):
        info = await bus.js.stream_info(s.dead_stream)
        if info.state.messages >= count:
            return
        await anyio.sleep(0.05)
    raise AssertionError("no dead letter arrived")


async def test_invalid_task_is_refused_with_reason(bus: Bus) -> None:
    async with open_runtime(bus, TEAM) as rt:
        await rt.spawn(SimWorker, actor_id="w1")
        client = TeamClient(bus, TEAM)
        # the client refuses it before it reaches the bus ...
        with pytest.raises(ConfigError, match="unknown strategy 'raft'"):
            await client.submit("q", strategy="raft", agents=3)
        # ... and an agent refuses one that bypassed the client
        task = Task(id="inv-1", prompt="   ")
        async with client._awaiting("inv-1") as wait:
            await publish_durable(bus, Subjects(TEAM).tasks, task, msg_id=task.id)
            result = await wait(20)
    assert (result.ok, result.error_kind, result.error) == (False, "invalid", "the prompt is empty")


async def test_same_task_id_is_answered_once(bus: Bus) -> None:
    s = Subjects(TEAM)
    worker = SimWorker()
    async with open_runtime(bus, TEAM) as rt:
        await rt.spawn(worker, actor_id="w1")
        client = TeamClient(bus, TEAM)
        task = Task(id="dup-1", prompt="once please")
        for _ in range(3):  # the stream's dedupe window keeps one copy
            await client.publish(task)
        result = await client.wait("dup-1", timeout=20)
        assert result.ok
        # a task whose result is already stored is acked without running the model again
        await publish_durable(bus, s.tasks, Task(id="dup-1", prompt="again"), msg_id="dup-1-again")
        await wait_until(lambda: worker.duplicates == 1)
    assert worker.generated == 1
    assert (await bus.js.stream_info(s.tasks_stream)).state.messages == 0


async def test_drain_finishes_the_task_in_flight(bus: Bus) -> None:
    worker = SimWorker(slow=1.0)  # seconds-long generations
    async with open_runtime(bus, TEAM) as rt:
        await rt.spawn(worker, actor_id="w1")
        client = TeamClient(bus, TEAM)
        await client.publish(Task(id="drain-1", prompt="long answer", max_tokens=400))
        await wait_until(lambda: worker.in_flight == 1)
        await rt.stop("w1")  # SIGTERM path: stop taking work, finish what is in flight
        assert worker.served == 1
    result = await client.result("drain-1")
    assert result is not None and result.ok


async def test_a_task_longer_than_ack_wait_keeps_its_claim(bus: Bus) -> None:
    # generations of 2-4 s against a 1 s ack_wait: only the claim extensions keep the task
    # from being redelivered to the idle second agent
    slow, idle = SimWorker(slow=20.0, ack_wait=1.0), SimWorker(ack_wait=1.0)
    async with open_runtime(bus, TEAM) as rt:
        await rt.spawn(slow, actor_id="w1")
        await TeamClient(bus, TEAM).publish(Task(id="long-1", prompt="long", max_tokens=400))
        await wait_until(lambda: slow.in_flight == 1)
        await rt.spawn(idle, actor_id="w2")
        result = await TeamClient(bus, TEAM).wait("long-1", timeout=30)
    assert result.ok and result.agent == "w1" and result.deliveries == 1
    assert result.total_s > 1.0  # it did outlast ack_wait
    assert idle.generated == 0


async def test_stopped_mid_task_hands_the_task_back(bus: Bus) -> None:
    s = Subjects(TEAM)
    worker = SimWorker(slow=1.0)
    async with open_runtime(bus, TEAM) as rt:
        await rt.spawn(worker, actor_id="w1", drain_timeout=0.2)
        await TeamClient(bus, TEAM).publish(Task(id="back-1", prompt="long", max_tokens=2000))
        await wait_until(lambda: worker.in_flight == 1)
        await rt.stop("w1")
        assert worker.served == 0
        # handed back (nak), so a second agent takes it at once rather than after ack_wait
        await rt.spawn(SimWorker, actor_id="w2")
        result = await TeamClient(bus, TEAM).wait("back-1", timeout=30)
    assert result.ok and result.agent == "w2" and result.deliveries == 2

    async def taken() -> bool:  # the ack follows the result: the work queue empties after it
        return (await bus.js.stream_info(s.tasks_stream)).state.messages == 0

    await wait_until(taken, timeout=10)


class NewerTask(msgspec.Struct, frozen=True, kw_only=True, tag="task"):
    """A newer client's Task with a field this version does not know."""

    id: str
    prompt: str
    priority: int = 0


async def test_unknown_fields_from_newer_clients_are_ignored(bus: Bus) -> None:
    s = Subjects(TEAM)
    async with open_runtime(bus, TEAM) as rt:
        await rt.spawn(SimWorker, actor_id="w1")
        client = TeamClient(bus, TEAM)
        async with client._awaiting("new-1") as wait:
            task = NewerTask(id="new-1", prompt="hi", priority=7)
            await publish_durable(bus, s.tasks, task, msg_id="new-1")
            assert (await wait(20)).ok
