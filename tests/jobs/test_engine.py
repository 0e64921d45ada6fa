"""The job engine in one process: real nats-server, real worker agents (simulated models)."""

from __future__ import annotations

import pytest

from lmteams.agents import WorkerAgent, WorkerConfig, open_runtime
from lmteams.bus import Bus, Subjects, ensure_team_streams
from lmteams.errors import ConfigError
from lmteams.hardware import BackendConfig
from lmteams.jobs import JobClient, JobStatus, job_service, new_job
from lmteams.jobs._graph import Subtask, TaskGraph
from lmteams.jobs._preassign import agent_lists, paper_preassignment

from .conftest import SIM


def diamond() -> TaskGraph:
    return TaskGraph(
        name="diamond",
        subtasks=(
            Subtask(id="a", title="first", work_tokens=20),
            Subtask(id="b", title="left", deps=("a",), work_tokens=20),
            Subtask(id="c", title="right", deps=("a",), work_tokens=20),
            Subtask(
                id="d",
                title="combine",
                deps=("b", "c"),
                work_tokens=20,
                prompt="Left said: {{ outputs['b'] }} Right said: {{ outputs['c'] }}",
            ),
        ),
    )


@pytest.mark.parametrize("architecture", ["centralized", "decentralized"])
@pytest.mark.parametrize("scheduling", ["async", "rounds"])
async def test_a_team_runs_a_diamond_job(bus: Bus, architecture: str, scheduling: str) -> None:
    team = "jobs"
    await ensure_team_streams(bus, Subjects(team))
    async with open_runtime(bus, team, worker_services=[job_service()]) as runtime:
        for i in range(3):
            await runtime.spawn(lambda: WorkerAgent(SIM), actor_id=f"w{i}", roles=("worker",))
        client = JobClient(bus, team)
        result = await client.run_job(
            diamond(),
            timeout=60,
            architecture=architecture,  # type: ignore[arg-type]
            scheduling=scheduling,  # type: ignore[arg-type]
            lease_s=3.0,
        )
    assert result.status is JobStatus.DONE, result.error
    records = {r.id: r for r in result.subtasks}
    assert set(result.outputs) == {"d"}
    assert records["b"].output and records["c"].output
    assert records["b"].output in records["d"].prompt
    assert records["c"].output in records["d"].prompt
    assert all(r.attempts == 1 for r in result.subtasks)
    assert result.figures is not None and result.figures.speedup > 0


async def test_agents_that_choose_with_their_model_spend_coordination_tokens(bus: Bus) -> None:
    team = "choose"
    await ensure_team_streams(bus, Subjects(team))
    wide = TaskGraph(
        name="wide",
        subtasks=tuple(Subtask(id=f"t{i}", title=f"part {i}", work_tokens=10) for i in range(6)),
    )
    async with open_runtime(bus, team, worker_services=[job_service()]) as runtime:
        for i in range(3):
            await runtime.spawn(lambda: WorkerAgent(SIM), actor_id=f"w{i}", roles=("worker",))
        result = await JobClient(bus, team).run_job(
            wide, architecture="decentralized", choose="model", timeout=60
        )
    assert result.status is JobStatus.DONE, result.error
    f = result.figures
    assert f is not None
    assert f.coordination_tokens_in > 0 and f.coordination_tokens_out > 0
    assert f.claims == len(wide.subtasks)  # each subtask claimed once, conflicts apart


async def test_a_verification_node_is_answered_by_a_team_vote(bus: Bus) -> None:
    from lmteams.agents import load_strategies

    load_strategies()
    team = "verify"
    await ensure_team_streams(bus, Subjects(team))
    graph = TaskGraph(
        name="checked",
        subtasks=(
            Subtask(id="draft", title="draft an answer", work_tokens=10),
            Subtask(id="check", title="is it right?", deps=("draft",), strategy="vote"),
        ),
    )
    async with open_runtime(bus, team, worker_services=[job_service()]) as runtime:
        for i in range(3):
            await runtime.spawn(lambda: WorkerAgent(SIM), actor_id=f"w{i}", roles=("worker",))
        result = await JobClient(bus, team).run_job(graph, timeout=60)
    assert result.status is JobStatus.DONE, result.error
    check = next(r for r in result.subtasks if r.id == "check")
    assert check.output and check.tokens_out > 0


async def test_roles_limit_who_takes_a_subtask(bus: Bus) -> None:
    team = "roles"
    await ensure_team_streams(bus, Subjects(team))
    graph = TaskGraph(
        name="roles",
        subtasks=tuple(
            Subtask(id=f"r{i}", title="review", work_tokens=10, roles=("reviewer",))
            for i in range(4)
        ),
    )
    async with open_runtime(bus, team, worker_services=[job_service()]) as runtime:
        await runtime.spawn(lambda: WorkerAgent(SIM), actor_id="plain", roles=("worker",))
        await runtime.spawn(lambda: WorkerAgent(SIM), actor_id="rev", roles=("worker", "reviewer"))
        result = await JobClient(bus, team).run_job(graph, timeout=60)
    assert result.status is JobStatus.DONE, result.error
    assert {r.agent for r in result.subtasks} == {"rev"}


async def test_a_cancelled_job_ends_cancelled_and_its_agents_stop(bus: Bus) -> None:
    team = "cancel"
    await ensure_team_streams(bus, Subjects(team))
    slow = WorkerConfig(
        backend=BackendConfig(kind="sim", sim_device="rpi5-cpu", time_scale=1.0),
        fetch_timeout_s=0.2,
        heartbeat_s=0.5,
    )
    long = TaskGraph(
        name="long",
        subtasks=tuple(Subtask(id=f"l{i}", title="long", work_tokens=2000) for i in range(2)),
    )
    async with open_runtime(bus, team, worker_services=[job_service()]) as runtime:
        for i in range(2):
            await runtime.spawn(lambda: WorkerAgent(slow), actor_id=f"w{i}", roles=("worker",))
        client = JobClient(bus, team)
        job_id = await client.submit_job(long)

        async def claimed() -> bool:
            view = await client.job(job_id)
            return view is not None and bool(view.claimed())

        from lmteams.testing import wait_until

        await wait_until(claimed, timeout=30)
        await client.cancel_job(job_id, reason="changed my mind")
        result = await client.wait_job(job_id, timeout=30)
        assert result.status is JobStatus.CANCELLED
        assert "changed my mind" in result.error

        async def idle() -> bool:
            view = await client.job(job_id)
            assert view is not None
            tallies = view.tallies.values()
            return sum(t.cancelled for t in tallies) >= 1

        await wait_until(idle, timeout=30)  # the running attempts were withdrawn


async def test_concurrent_jobs_share_the_team_without_failures(bus: Bus) -> None:
    team = "many"
    await ensure_team_streams(bus, Subjects(team))
    async with open_runtime(bus, team, worker_services=[job_service()]) as runtime:
        for i in range(2):
            await runtime.spawn(lambda: WorkerAgent(SIM), actor_id=f"w{i}", roles=("worker",))
        client = JobClient(bus, team)
        ids = [
            await client.submit_job(diamond(), architecture=arch)
            for arch in ("centralized", "centralized", "decentralized")
        ]  # type: ignore[arg-type]
        results = [await client.wait_job(job_id, timeout=60) for job_id in ids]
    for result in results:
        assert result.status is JobStatus.DONE, result.error
        assert result.figures is not None and result.figures.releases == 0
        assert all(r.releases == 0 for r in result.subtasks)  # nothing waited out a lease


@pytest.mark.parametrize("scheduling", ["async", "rounds"])
async def test_self_organizing_agents_keep_every_claim_they_make(bus: Bus, scheduling: str) -> None:
    """Five agents claim from the same views at once: each works what it claimed (no claim
    dropped on a view from before it, left to lapse), and each subtask runs once."""
    team = f"wide-{scheduling}"
    await ensure_team_streams(bus, Subjects(team))
    graph = TaskGraph(
        name="wide",
        subtasks=tuple(Subtask(id=f"t{i}", title=f"part {i}", work_tokens=20) for i in range(15)),
    )
    async with open_runtime(bus, team, worker_services=[job_service()]) as runtime:
        for i in range(5):
            await runtime.spawn(lambda: WorkerAgent(SIM), actor_id=f"w{i}", roles=("worker",))
        result = await JobClient(bus, team).run_job(
            graph,
            timeout=60,
            architecture="decentralized",
            scheduling=scheduling,  # type: ignore[arg-type]
            lease_s=3.0,
        )
    assert result.status is JobStatus.DONE, result.error
    assert result.figures is not None and result.figures.releases == 0
    assert [r.attempts for r in result.subtasks] == [1] * 15
    assert len({r.agent for r in result.subtasks}) > 1  # the team shared it


def _lists_graph() -> TaskGraph:
    """Two chains and three free subtasks: pre-assignment keeps each chain on one agent."""
    return TaskGraph(
        name="lists",
        subtasks=(
            Subtask(id="a1", title="chain a", work_tokens=20),
            Subtask(id="a2", title="chain a", deps=("a1",), work_tokens=20),
            Subtask(id="f1", title="free", work_tokens=20),
            Subtask(id="b1", title="chain b", work_tokens=20),
            Subtask(id="b2", title="chain b", deps=("b1",), work_tokens=20),
            Subtask(id="f2", title="free", work_tokens=20),
            Subtask(id="f3", title="free", work_tokens=20),
        ),
    )


@pytest.mark.parametrize("scheduling", ["async", "rounds"])
async def test_preassigned_placement_runs_each_agents_own_list_in_order(
    bus: Bus, scheduling: str
) -> None:
    team = "dealt"
    graph = _lists_graph()
    await ensure_team_streams(bus, Subjects(team))
    async with open_runtime(bus, team, worker_services=[job_service()]) as runtime:
        for i in range(3):  # one device: the team's order is by name
            await runtime.spawn(lambda: WorkerAgent(SIM), actor_id=f"w{i}", roles=("worker",))
        result = await JobClient(bus, team).run_job(
            graph,
            timeout=60,
            placement="preassigned",
            scheduling=scheduling,  # type: ignore[arg-type]
            backups=False,
            lease_s=3.0,
        )
    assert result.status is JobStatus.DONE, result.error
    dealt = paper_preassignment(graph, 3)
    records = {r.id: r for r in result.subtasks}
    assert {i: r.agent for i, r in records.items()} == {i: f"w{a}" for i, a in dealt.items()}
    for agent, queue in enumerate(agent_lists(graph, 3)):
        starts = [records[graph.subtasks[i].id].started_at for i in queue]
        assert starts == sorted(starts), f"w{agent} left its list's order"
    assert all(r.attempts == 1 for r in result.subtasks)


def test_preassigned_placement_is_refused_where_it_cannot_hold() -> None:
    with pytest.raises(ConfigError, match="centralized"):
        new_job(_lists_graph(), architecture="decentralized", placement="preassigned")
    roles = TaskGraph(name="roles", subtasks=(Subtask(id="r", title="r", roles=("reviewer",)),))
    with pytest.raises(ConfigError, match="roles"):
        new_job(roles, placement="preassigned")
    with pytest.raises(ConfigError, match="placement"):
        new_job(_lists_graph(), placement="random")  # type: ignore[typeddict-item]
