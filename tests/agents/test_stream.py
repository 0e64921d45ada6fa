"""Streamed answers: chunks as they are generated, then the one result, on a real server."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio

from lmteams.agents import Chunk, Result, TeamClient, WorkerAgent, WorkerConfig, open_runtime
from lmteams.bus import Bus, Codec, EmbeddedServer, Incoming, WorkQueueSettings
from lmteams.hardware import Backend, DeviceClass, SimulatedBackend

TEAM = "ws"
# slow enough that the simulated answer's pieces are each its own chunk
TYPING = DeviceClass(
    name="typing",
    prompt_tokens_per_s=5000.0,
    generation_tokens_per_s=100.0,
    load_s=0.0,
    jitter=0.0,
    straggler_prob=0.0,
    straggler_factor=1.0,
    failure_prob=0.0,
    description="a fault-free device that answers at reading speed",
)


class TypingWorker(WorkerAgent):
    def __init__(self) -> None:
        super().__init__(
            WorkerConfig(queue=WorkQueueSettings(ack_wait_s=30.0), fetch_timeout_s=0.2)
        )

    @contextlib.asynccontextmanager
    async def open_backend(self) -> AsyncIterator[Backend]:  # type: ignore[override]
        backend = SimulatedBackend(TYPING, seed=1)
        try:
            yield backend
        finally:
            await backend.aclose()


async def test_stream_yields_chunks_then_the_one_result(bus: Bus) -> None:
    async with open_runtime(bus, TEAM) as rt:
        await rt.spawn(TypingWorker, actor_id="w1", roles=("worker",))
        client = TeamClient(bus, TEAM)
        plain = await client.submit("Name the largest planet of the solar system.", timeout=30)
        async with client.stream(
            "Name the largest planet of the solar system.", max_tokens=40, timeout=30
        ) as answer:
            chunks = [chunk async for chunk in answer]
    result = answer.result
    assert result is not None and result.ok
    assert len(chunks) >= 2  # the answer arrived in pieces, before the result ended it
    assert "".join(c.text for c in chunks) == result.answer
    assert [c.seq for c in chunks] == sorted(c.seq for c in chunks)
    assert {(c.agent, c.delivery) for c in chunks} == {("w1", 1)}
    # the same shape as a result that was not streamed
    assert type(result) is Result and result.answer == plain.answer
    assert (result.strategy, result.deliveries) == (plain.strategy, plain.deliveries)
    stored = await client.result(result.task_id)
    assert stored is not None and stored.answer == result.answer


async def test_unstreamed_task_publishes_no_chunk(bus: Bus) -> None:
    seen: list[Chunk] = []

    async def record(inc: Incoming[Chunk]) -> None:
        seen.append(inc.body)

    sub = await bus.subscribe(f"lmt.{TEAM}.stream.>", record, codec=Codec(Chunk))
    try:
        async with open_runtime(bus, TEAM) as rt:
            await rt.spawn(TypingWorker, actor_id="w1", roles=("worker",))
            result = await TeamClient(bus, TEAM).submit("Say hi.", max_tokens=8, timeout=30)
            await bus.nc.flush()
    finally:
        await sub.unsubscribe()
    assert result.ok and seen == []


async def test_a_reader_that_leaves_early_harms_nothing(bus: Bus) -> None:
    async with open_runtime(bus, TEAM) as rt:
        await rt.spawn(TypingWorker, actor_id="w1", roles=("worker",))
        client = TeamClient(bus, TEAM)
        async with client.stream("Count to ten.", max_tokens=40, timeout=30) as answer:
            async for _ in answer:
                break
        # the agent finished that task and serves the next one
        after = await client.submit("Say hi.", max_tokens=8, timeout=30)
        first = await client.wait(answer.task.id, timeout=30)
    assert after.ok and first.ok


async def test_cli_stream_prints_chunks_before_the_result(
    nats_server: EmbeddedServer, bus: Bus, tmp_path: Path
) -> None:
    env = {**os.environ, "LMTEAMS_HOME": str(tmp_path), "LMTEAMS_NATS_URL": ""}
    command = [sys.executable, "-m", "lmteams", "task", "publish", "Describe the sea."]
    command += ["--stream", "--json", "--max-tokens", "40", "--team", TEAM]
    command += ["--nats", nats_server.url, "--timeout", "30"]
    async with open_runtime(bus, TEAM) as rt:
        await rt.spawn(TypingWorker, actor_id="w1", roles=("worker",))
        done = await anyio.to_thread.run_sync(
            lambda: subprocess.run(
                command, capture_output=True, text=True, env=env, timeout=60, check=False
            )
        )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    *chunks, result = lines
    assert len(chunks) >= 2 and {c["type"] for c in chunks} == {"chunk"}
    assert result["type"] == "result" and result["ok"] is True
    assert "".join(c["text"] for c in chunks) == result["answer"]
