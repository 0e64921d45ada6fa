"""The caller's side of a streamed task, fed chunks and results by hand on a real server.

No agent takes the task: the test publishes what an agent would (chunks on the task's stream
subject, the result in the results stream), in the orders a real bus can deliver them.
"""

from __future__ import annotations

import pytest

from lmteams.agents import Chunk, Result, TeamClient
from lmteams.bus import Bus, Subjects, ensure_team_streams, publish_durable
from lmteams.errors import RequestTimeoutError

TEAM = "rd"
SUBJECTS = Subjects(TEAM)


async def _chunk(bus: Bus, chunk: Chunk) -> None:
    await bus.publish(SUBJECTS.stream(chunk.task_id), chunk, sender=chunk.agent)


async def _result(bus: Bus, result: Result) -> None:
    subject = SUBJECTS.results(result.task_id)
    await publish_durable(bus, subject, result, msg_id=f"result-{result.task_id}", once=True)


def _piece(task_id: str, seq: int, text: str, *, last: bool = False, agent: str = "w1") -> Chunk:
    delivery = 1 if agent == "w1" else 2
    return Chunk(task_id=task_id, agent=agent, delivery=delivery, seq=seq, text=text, last=last)


def _done(task_id: str, answer: str, *, agent: str = "w1") -> Result:
    deliveries = 1 if agent == "w1" else 2
    return Result(task_id=task_id, ok=True, answer=answer, agent=agent, deliveries=deliveries)


async def test_a_lost_last_chunk_still_ends_the_stream_with_the_result(bus: Bus) -> None:
    await ensure_team_streams(bus, SUBJECTS)
    client = TeamClient(bus, TEAM)
    async with client.stream("Say hello.", timeout=30) as answer:
        task_id = answer.task.id
        await _chunk(bus, _piece(task_id, 0, "Hel"))
        await _chunk(bus, _piece(task_id, 1, "lo"))  # its last chunk (last=True) never comes
        await _result(bus, _done(task_id, "Hello"))
        chunks = [chunk async for chunk in answer]
    assert [c.text for c in chunks] == ["Hel", "lo"]
    assert answer.result is not None and answer.result.answer == "Hello"


async def test_chunks_after_the_result_are_read_up_to_the_last(bus: Bus) -> None:
    await ensure_team_streams(bus, SUBJECTS)
    client = TeamClient(bus, TEAM)
    async with client.stream("Say hello.", timeout=30) as answer:
        task_id = answer.task.id
        await _result(bus, _done(task_id, "Hello"))
        await bus.nc.flush()
        await _chunk(bus, _piece(task_id, 0, "Hel"))
        await _chunk(bus, _piece(task_id, 1, "lo"))
        await _chunk(bus, _piece(task_id, 2, "", last=True))  # an empty last: not yielded
        chunks = [chunk async for chunk in answer]
    assert "".join(c.text for c in chunks) == "Hello"
    assert answer.result is not None and answer.result.ok


async def test_every_try_streams_and_the_winning_try_ends_it(bus: Bus) -> None:
    await ensure_team_streams(bus, SUBJECTS)
    client = TeamClient(bus, TEAM)
    async with client.stream("Say hello.", timeout=30) as answer:
        task_id = answer.task.id
        await _chunk(bus, _piece(task_id, 0, "Hel"))  # the first try's agent died here
        await _chunk(bus, _piece(task_id, 0, "Hello", last=True, agent="w2"))
        await _result(bus, _done(task_id, "Hello", agent="w2"))
        chunks = [chunk async for chunk in answer]
    assert [(c.agent, c.delivery, c.text) for c in chunks] == [
        ("w1", 1, "Hel"),
        ("w2", 2, "Hello"),
    ]
    assert answer.result is not None and answer.result.agent == "w2"


async def test_no_result_within_the_timeout_is_raised_to_the_reader(bus: Bus) -> None:
    await ensure_team_streams(bus, SUBJECTS)
    client = TeamClient(bus, TEAM)
    async with client.stream("Say hello.", timeout=0.5) as answer:
        await _chunk(bus, _piece(answer.task.id, 0, "Hel"))
        first = await answer.__anext__()  # what came before the timeout is read first
        with pytest.raises(RequestTimeoutError):
            await answer.__anext__()
    assert first.text == "Hel"
    assert answer.result is None
