"""JobClient on a real nats-server: what it publishes, what it refuses, what it reads back.

The jobs stream is read with plain nats-py, as any other client of the wire contract would.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import msgspec
import nats
import pytest
from nats.js.api import DeliverPolicy

from lmteams.bus import EmbeddedServer, Subjects
from lmteams.errors import ConfigError, GraphError, RequestTimeoutError
from lmteams.jobs import (
    CancelJob,
    JobClient,
    JobOptions,
    JobRequest,
    JobResult,
    JobSpec,
    JobStatus,
    SubmitJob,
    SubtaskStatus,
    connect,
    open_board,
)
from lmteams.jobs._graph import Subtask, TaskGraph

TEAM = "jobs"
SUBJECTS = Subjects(TEAM)
GRAPH = TaskGraph(
    name="diamond",
    subtasks=(
        Subtask(id="a", title="Plan"),
        Subtask(id="b", title="Left", deps=("a",), prompt="Use {{ outputs.a }}"),
        Subtask(id="c", title="Right", deps=("a",)),
        Subtask(id="d", title="Join", deps=("b", "c")),
    ),
    job=JobOptions(scheduling="rounds", lease_s=3.0),
)
_REQUESTS = msgspec.msgpack.Decoder(JobRequest)


@pytest.fixture
async def client(nats_server: EmbeddedServer) -> AsyncIterator[JobClient]:
    async with connect(nats_server.url, team=TEAM, name="submitter") as c:
        yield c


@pytest.fixture
async def plain(nats_server: EmbeddedServer) -> AsyncIterator[nats.NATS]:
    nc = await nats.connect(nats_server.url)
    yield nc
    await nc.close()


async def _stored(nc: nats.NATS) -> list[tuple[SubmitJob | CancelJob, dict[str, str]]]:
    """Every message in the jobs stream, read by a plain JetStream subscriber."""
    js = nc.jetstream()
    count = (await js.stream_info(SUBJECTS.jobs_stream)).state.messages
    sub = await js.subscribe(
        SUBJECTS.job_requests, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
    )
    found = []
    for _ in range(count):
        msg = await sub.next_msg(timeout=5)
        found.append((_REQUESTS.decode(msg.data), dict(msg.headers or {})))
    await sub.unsubscribe()
    return found


async def test_submit_puts_one_submit_job_in_the_stream(
    client: JobClient, plain: nats.NATS
) -> None:
    job_id = await client.submit_job(GRAPH, job_id="job-a", agents=3, architecture="decentralized")
    assert job_id == "job-a"
    [(request, headers)] = await _stored(plain)
    assert isinstance(request, SubmitJob)
    spec = request.job
    assert (spec.id, spec.graph, spec.submitted_by) == ("job-a", GRAPH, "submitter")
    # the file's [job] table is the base, the caller's options go over it
    assert spec.options == JobOptions(
        architecture="decentralized", scheduling="rounds", agents=3, lease_s=3.0
    )
    assert headers["Nats-Msg-Id"] == "job-a"


async def test_fresh_ids_and_a_resubmission_is_stored_once(
    client: JobClient, plain: nats.NATS
) -> None:
    first = await client.submit_job(GRAPH)
    second = await client.submit_job(GRAPH)
    assert first.startswith("job-") and second.startswith("job-") and first != second
    assert await client.submit_job(GRAPH, job_id=first) == first  # deduped by msg id
    ids = [r.job.id for r, _ in await _stored(plain) if isinstance(r, SubmitJob)]
    assert ids == [first, second]


async def test_bad_jobs_raise_before_anything_is_published(
    client: JobClient, plain: nats.NATS, tmp_path: Path
) -> None:
    cyclic = tmp_path / "cyclic.toml"
    cyclic.write_text(
        'name = "loop"\n'
        '[[subtasks]]\nid = "a"\ntitle = "A"\ndeps = ["b"]\n'
        '[[subtasks]]\nid = "b"\ntitle = "B"\ndeps = ["a"]\n'
    )
    with pytest.raises(GraphError, match="cycle"):
        await client.submit_job(cyclic)
    stray = tmp_path / "stray.toml"
    stray.write_text(
        'name = "stray"\n'
        '[[subtasks]]\nid = "a"\ntitle = "A"\n'
        '[[subtasks]]\nid = "b"\ntitle = "B"\nprompt = "{{ outputs.zzz }}"\n'
    )
    with pytest.raises(GraphError, match="zzz"):
        await client.submit_job(stray)
    with pytest.raises(ConfigError, match=r"\$\.agents"):
        await client.submit_job(GRAPH, agents=-1)
    with pytest.raises(ConfigError, match=r"\$\.architecture"):
        await client.submit_job(GRAPH, architecture="mesh")  # type: ignore[typeddict-item]
    with pytest.raises(ConfigError, match="job id"):
        await client.submit_job(GRAPH, job_id="two.tokens")
    with pytest.raises(ConfigError, match=r"\$\.lease_s"):
        await client.submit_job(JobSpec(id="job-s", graph=GRAPH), lease_s=0.0)
    assert await _stored(plain) == []


async def test_cancel_publishes_cancel_job(client: JobClient, plain: nats.NATS) -> None:
    await client.cancel_job("job-x", reason="changed my mind")
    [(request, headers)] = await _stored(plain)
    assert request == CancelJob(job_id="job-x", reason="changed my mind")
    assert headers["Nats-Msg-Id"] == "cancel-job-x"
    with pytest.raises(ConfigError):
        await client.cancel_job("not a token")


async def test_job_and_jobs_read_what_admission_stored(client: JobClient) -> None:
    board = await open_board(client.bus, TEAM)
    spec = JobSpec(id="job-k", graph=GRAPH)
    assert await client.job("job-k") is None
    assert await client.jobs() == []
    assert await board.admit(spec, ("w1", "w2"))
    view = await client.job("job-k")
    assert view is not None
    assert view.record.spec == spec and view.record.participants == ("w1", "w2")
    assert [s.id for s in view.states] == ["a", "b", "c", "d"]
    assert [r.spec.id for r in await client.jobs()] == ["job-k"]


async def test_watch_job_follows_the_board(client: JobClient) -> None:
    board = await open_board(client.bus, TEAM)
    await board.admit(JobSpec(id="job-w", graph=GRAPH), ("w1",))
    with anyio.fail_after(20):
        async with client.watch_job("job-w") as views:
            first = await anext(views)
            assert first.ready() == [0]
            assert await board.claim("job-w", 0, first.revisions[0], "w1") is not None
            async for view in views:
                if view.states[0].status is SubtaskStatus.CLAIMED:
                    assert view.states[0].holder == "w1"
                    break


def _result(job_id: str) -> JobResult:
    return JobResult(
        job_id=job_id,
        status=JobStatus.DONE,
        graph="diamond",
        architecture="centralized",
        scheduling="async",
        outputs={"d": "joined"},
    )


async def test_wait_job_reads_a_result_a_plain_client_published_as_json(
    client: JobClient, plain: nats.NATS
) -> None:
    # stored before anyone waits: found in the results stream
    await plain.jetstream().publish(
        SUBJECTS.job_result("job-early"),
        msgspec.json.encode(_result("job-early")),
        headers={"Content-Type": "application/json"},
    )
    early = await client.wait_job("job-early", timeout=20)
    assert early == _result("job-early")
    assert await client.job_result("job-early") == early

    # published while a caller waits, by `nats pub` with no headers at all
    async with anyio.create_task_group() as tg:
        box: list[JobResult] = []

        async def waiter() -> None:
            box.append(await client.wait_job("job-late", timeout=20))

        tg.start_soon(waiter)
        await plain.publish(
            SUBJECTS.job_result("job-late"), msgspec.json.encode(_result("job-late"))
        )
    assert box == [_result("job-late")]


async def test_wait_job_times_out_cleanly(client: JobClient) -> None:
    with pytest.raises(RequestTimeoutError, match="no result for job job-none"):
        await client.wait_job("job-none", timeout=0.3)


async def test_run_job_submits_then_gets_the_result(client: JobClient, plain: nats.NATS) -> None:
    """A stand-in engine answers the request the moment it sees it: the client must already
    be listening (it subscribes before it publishes)."""

    async def answer(msg: nats.aio.msg.Msg) -> None:
        request = _REQUESTS.decode(msg.data)
        assert isinstance(request, SubmitJob)
        body = msgspec.json.encode(_result(request.job.id))
        await plain.publish(SUBJECTS.job_result(request.job.id), body)

    sub = await plain.subscribe(SUBJECTS.job_requests, cb=answer)
    await plain.flush()
    result = await client.run_job(GRAPH, job_id="job-run", timeout=20)
    await sub.unsubscribe()
    assert result == _result("job-run")


async def test_a_job_ended_without_a_published_result_is_read_from_the_board(
    client: JobClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its ender died between ending it and publishing: the waiting client still gets it."""
    from lmteams.jobs import JobStatus, _client

    monkeypatch.setattr(_client, "_UNPUBLISHED_S", 0.0)
    board = await open_board(client.bus, TEAM)
    await board.admit(JobSpec(id="job-orphan", graph=GRAPH), ())
    assert await board.end("job-orphan", JobStatus.CANCELLED, error="gone") is not None
    with anyio.fail_after(20):
        result = await client.wait_job("job-orphan", timeout=15)
    assert result.job_id == "job-orphan" and result.status is JobStatus.CANCELLED
    assert result.error == "gone" and await client.job_result("job-orphan") is None
