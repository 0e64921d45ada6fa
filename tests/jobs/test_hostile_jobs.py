"""Hostile input on every job subject an outsider can reach, and foreign values in the jobs
bucket: agents refuse it, keep serving, and the next real job still completes."""

from __future__ import annotations

import msgspec
import nats
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from lmteams.agents import ActorState, WorkerAgent, open_runtime
from lmteams.bus import JOBS_BUCKET, Bus, EmbeddedServer, Subjects, ensure_team_streams, open_kv
from lmteams.jobs import JobClient, JobStatus, job_service
from lmteams.jobs._graph import Subtask, TaskGraph

from .conftest import SIM

TEAM = "hostjobs"
S = Subjects(TEAM)
GRAPH = TaskGraph(
    name="small",
    subtasks=(
        Subtask(id="a", title="one", work_tokens=10),
        Subtask(id="b", title="two", deps=("a",), work_tokens=10),
    ),
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**62), 2**62) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
tags = st.sampled_from(
    ["submit-job", "cancel-job", "job-assign", "job-withdraw", "job-working", "job-report", "x"]
)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """Random bytes, random JSON, or a tagged message with random fields."""
    kind = draw(st.sampled_from(["bytes", "json", "tagged"]))
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    if kind == "json":
        return msgspec.json.encode(draw(json_values))
    fields = draw(
        st.dictionaries(
            st.sampled_from(
                ["job", "job_id", "index", "claim_rev", "agent", "ok", "prompt", "graph", "id"]
            ),
            json_values,
            max_size=5,
        )
    )
    return msgspec.json.encode({"type": draw(tags), **fields})


def draw_payloads(n: int) -> list[bytes]:
    found: list[bytes] = []

    @settings(
        max_examples=n,
        derandomize=True,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    @given(bodies())
    def collect(body: bytes) -> None:
        found.append(body)

    collect()
    return found


async def test_agents_survive_hostile_job_input_and_still_run_jobs(
    nats_server: EmbeddedServer, bus: Bus
) -> None:
    await ensure_team_streams(bus, S)
    payloads = draw_payloads(60)
    async with open_runtime(bus, TEAM, worker_services=[job_service()]) as runtime:
        for i in range(2):
            await runtime.spawn(lambda: WorkerAgent(SIM), actor_id=f"w{i}", roles=("worker",))
        nc = await nats.connect(nats_server.url)
        try:
            js = nc.jetstream()
            kv = await open_kv(bus, S.kv_bucket(JOBS_BUCKET))
            for i, body in enumerate(payloads):
                headers = {"Content-Type": "application/json"} if i % 2 else None
                await js.publish(S.job_requests, body, headers=headers)
                await js.publish(S.job_report("j1"), body, headers=headers)
                for subject in (S.job_agent("w0"), S.job_agent("w1"), S.job_lease("j1")):
                    await nc.publish(subject, body, headers=headers)
                # foreign values where job records and subtask states live
                await kv.put(f"hostile{i}.job", body)
                await kv.put(f"hostile{i}.s.0", body)
            await nc.flush()
            client = JobClient(bus, TEAM)
            for architecture in ("centralized", "decentralized"):
                result = await client.run_job(GRAPH, architecture=architecture, timeout=60)  # type: ignore[arg-type]
                assert result.status is JobStatus.DONE, result.error
        finally:
            await nc.close()
        assert all(runtime.state(f"w{i}") is ActorState.RUNNING for i in range(2))


WELL_FORMED_BUT_HOSTILE = [
    {
        "type": "job-report",
        "job_id": "no.such>job",
        "index": 0,
        "claim_rev": 1,
        "agent": "x",
        "ok": True,
    },
    {
        "type": "job-report",
        "job_id": "ghost",
        "index": 999999,
        "claim_rev": 5,
        "agent": "x",
        "ok": True,
    },
    {"type": "job-report", "job_id": "ghost", "index": 0, "claim_rev": 0, "agent": "", "ok": False},
    {
        "type": "job-assign",
        "job_id": "a b",
        "index": 0,
        "claim_rev": 1,
        "prompt": "hi",
        "max_tokens": 4,
        "lease_s": 1,
    },
    {
        "type": "job-assign",
        "job_id": "ghost",
        "index": 3,
        "claim_rev": 1,
        "prompt": "hi",
        "max_tokens": 4,
        "lease_s": 1,
    },
    {
        "type": "job-assign",
        "job_id": "ghost",
        "index": -1,
        "claim_rev": 1,
        "prompt": "hi",
        "max_tokens": 4,
        "lease_s": 0,
    },
    {"type": "job-withdraw", "job_id": "", "index": 0},
    {"type": "job-working", "job_id": "*", "index": 0, "claim_rev": 1, "agent": ">"},
    {"type": "cancel-job", "job_id": "no such job"},
    {"type": "cancel-job", "job_id": "ghost"},
    {
        "type": "submit-job",
        "job": {"id": "has space", "graph": {"name": "g", "subtasks": [{"id": "a", "title": "a"}]}},
    },
]


async def test_well_formed_hostile_messages_are_refused_and_jobs_still_run(bus: Bus) -> None:
    await ensure_team_streams(bus, S)
    async with open_runtime(bus, TEAM, worker_services=[job_service()]) as runtime:
        for i in range(2):
            await runtime.spawn(lambda: WorkerAgent(SIM), actor_id=f"w{i}", roles=("worker",))
        json = {"Content-Type": "application/json"}
        for body in WELL_FORMED_BUT_HOSTILE:
            data = msgspec.json.encode(body)
            await bus.js.publish(S.job_requests, data, headers=json)
            await bus.js.publish(S.job_report("ghost"), data, headers=json)
            for subject in (S.job_agent("w0"), S.job_agent("w1"), S.job_lease("ghost")):
                await bus.nc.publish(subject, data, headers=json)
        client = JobClient(bus, TEAM)
        for architecture in ("centralized", "decentralized"):
            result = await client.run_job(GRAPH, architecture=architecture, timeout=60)  # type: ignore[arg-type]
            assert result.status is JobStatus.DONE, result.error
            assert all(r.attempts == 1 for r in result.subtasks)
        assert all(runtime.state(f"w{i}") is ActorState.RUNNING for i in range(2))
        assert await client.job("ghost") is None  # a cancel of an unknown job made nothing


async def _publish_raw(bus: Bus, request: dict[str, object]) -> None:
    """A job request as an outsider publishes it: JSON on the stream, past every client check."""
    await bus.js.publish(
        S.job_requests,
        msgspec.json.encode(request),
        headers={"Content-Type": "application/json"},
    )


async def test_an_invalid_job_gets_a_failed_result_naming_the_problem(bus: Bus) -> None:
    await ensure_team_streams(bus, S)
    async with open_runtime(bus, TEAM, worker_services=[job_service()]) as runtime:
        await runtime.spawn(lambda: WorkerAgent(SIM), actor_id="w0", roles=("worker",))
        client = JobClient(bus, TEAM)
        cyclic = {
            "type": "submit-job",
            "job": {
                "id": "bad1",
                "graph": {
                    "name": "loop",
                    "subtasks": [
                        {"id": "a", "title": "a", "deps": ["b"]},
                        {"id": "b", "title": "b", "deps": ["a"]},
                    ],
                },
            },
        }
        await _publish_raw(bus, cyclic)
        result = await client.wait_job("bad1", timeout=30)
        assert result.status is JobStatus.FAILED
        assert "cycle" in result.error
        assert runtime.state("w0") is ActorState.RUNNING


async def test_a_forged_preassigned_job_with_roles_is_refused_and_the_team_serves(bus: Bus) -> None:
    # published raw, past new_job: the spec's own check refuses it where it is decoded
    await ensure_team_streams(bus, S)
    async with open_runtime(bus, TEAM, worker_services=[job_service()]) as runtime:
        await runtime.spawn(lambda: WorkerAgent(SIM), actor_id="w0", roles=("worker",))
        client = JobClient(bus, TEAM)
        forged = {
            "type": "submit-job",
            "job": {
                "id": "dealt-roles",
                "graph": {"name": "r", "subtasks": [{"id": "a", "title": "a", "roles": ["x"]}]},
                "options": {"placement": "preassigned"},
            },
        }
        await _publish_raw(bus, forged)
        result = await client.wait_job("dealt-roles", timeout=30)
        assert result.status is JobStatus.FAILED
        assert "roles" in result.error
        assert runtime.state("w0") is ActorState.RUNNING
        graph = TaskGraph(name="after", subtasks=(Subtask(id="x", title="x", work_tokens=5),))
        assert (await client.run_job(graph, timeout=30)).status is JobStatus.DONE
