"""Jobs under faults, on real agent processes: kill -9, SIGSTOP/SIGCONT, races, stragglers.

Each test runs `lmteams agent start` processes (simulated models, so a subtask takes a few
seconds of wall time and a signal lands mid-claim) on a real nats-server. What they check
is read from the jobs bucket itself: a :class:`CommitWatch` follows every stored write of
every subtask, so a subtask committed twice, or a committed one changed, cannot go unseen.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Awaitable, Callable

import anyio
import msgspec
import pytest

from lmteams.bus import new_id
from lmteams.jobs import (
    JobBoard,
    JobResult,
    JobStatus,
    JobView,
    SubtaskState,
    SubtaskStatus,
)
from lmteams.jobs._graph import Subtask, TaskGraph
from lmteams.testing import wait_until

from .conftest import AgentTeam

LEASE_S = 2.5
"""The claim lease of the jobs here: short, so lapses happen within a test."""

SLOW, FAST = "rpi5-cpu", "h100-cuda"  # about 50 and 1190 simulated tokens per second
_STATE = msgspec.msgpack.Decoder(SubtaskState)


def wide(name: str, n: int, *, tokens: int, combine: bool = False) -> TaskGraph:
    """``n`` independent subtasks, and optionally one that combines them all."""
    parts = tuple(Subtask(id=f"p{i}", title=f"part {i}", work_tokens=tokens) for i in range(n))
    final = (
        (Subtask(id="all", title="combine", deps=tuple(p.id for p in parts), work_tokens=20),)
        if combine
        else ()
    )
    return TaskGraph(name=name, subtasks=parts + final)


class CommitWatch:
    """Every stored write of a job's subtasks, checked as it arrives.

    A subtask's first ``done`` entry is kept; any later entry of that key that differs from
    it (another commit, a re-claim, a changed output) is a violation: committed means
    committed once, for good.
    """

    def __init__(self, board: JobBoard, job_id: str) -> None:
        self.board = board
        self.job_id = job_id
        self.first: dict[int, SubtaskState] = {}
        self.violations: list[str] = []

    async def run(self) -> None:
        async with self.board.kv.watch(f"{self.job_id}.s.*") as entries:
            async for entry in entries:
                if entry is None or entry.deleted:
                    continue
                state = _STATE.decode(entry.value)
                first = self.first.get(state.index)
                if first is None:
                    if state.status is SubtaskStatus.DONE:
                        self.first[state.index] = state
                elif state != first:
                    self.violations.append(f"{state.id} changed after its commit: {state}")


async def run_watched(
    team: AgentTeam,
    graph: TaskGraph,
    fault: Callable[[str], Awaitable[None]],
    **options: object,
) -> tuple[JobResult, CommitWatch]:
    """Submit ``graph``, run ``fault(job_id)`` while it runs, and wait for its result."""
    job_id = f"job-{new_id()}"
    watch = CommitWatch(team.board, job_id)
    async with anyio.create_task_group() as tg:
        tg.start_soon(watch.run)
        await team.client.submit_job(graph, job_id=job_id, **options)  # type: ignore[arg-type]
        await fault(job_id)
        result = await team.client.wait_job(job_id, timeout=90)
        tg.cancel_scope.cancel()
    assert result.status is JobStatus.DONE, result.error
    assert not watch.violations, watch.violations
    assert len(watch.first) == len(graph.subtasks)
    records = {r.id: r for r in result.subtasks}
    for state in watch.first.values():  # the result is what was committed, once
        record = records[state.id]
        assert (record.agent, record.output, record.attempts) == (
            state.agent,
            state.output,
            state.attempt,
        )
    return result, watch


async def settled(team: AgentTeam, job_id: str, check: Callable[[JobView], bool]) -> JobView:
    """The job's view once ``check`` holds (tallies are written just after the events)."""
    seen: list[JobView] = []

    async def holds() -> bool:
        view = await team.view(job_id)
        if view is None:
            return False
        seen[:] = [view]
        return check(view)

    try:
        await wait_until(holds, timeout=30, interval=0.2)
    except TimeoutError:
        pytest.fail(f"never held; last tallies: {seen[0].tallies if seen else None}")
    return seen[0]


async def fresh_claim(team: AgentTeam, job_id: str, *, avoid: str) -> SubtaskState:
    """A claim just made (so its holder is mid-attempt) by an agent other than ``avoid``."""
    found: list[SubtaskState] = []

    async def claimed() -> bool:
        view = await team.view(job_id)
        now = time.time()
        found[:] = [
            s
            for s in (view.states if view else ())
            if s.status is SubtaskStatus.CLAIMED
            and s.holder != avoid
            and not s.backups
            and now - s.claimed_at < 1.0  # a subtask here takes two seconds or more
        ]
        return bool(found)

    await wait_until(claimed, timeout=60, interval=0.1)
    return found[0]


def total(view: JobView, field: str) -> int:
    return sum(getattr(t, field) for t in view.tallies.values())


THREE_SLOW = {"a1": SLOW, "a2": SLOW, "a3": SLOW}


async def test_killing_the_coordinator_mid_job_loses_and_repeats_nothing(
    agent_team: AgentTeam,
) -> None:
    await agent_team.start_all(THREE_SLOW)
    killed: list[str] = []

    async def kill_coordinator(job_id: str) -> None:
        async def midway() -> bool:  # something committed, claims still out
            view = await agent_team.view(job_id)
            return bool(view and view.done() and view.claimed())

        await wait_until(midway, timeout=60, interval=0.1)
        killed.append(await agent_team.coordinator())
        agent_team.signal(killed[0], signal.SIGKILL)

    graph = wide("coordinator-kill", 8, tokens=150, combine=True)
    result, _ = await run_watched(
        agent_team, graph, kill_coordinator, architecture="centralized", lease_s=LEASE_S
    )
    assert killed[0] in agent_team.procs
    successor = await agent_team.coordinator()
    assert successor not in ("", killed[0])  # the job finished under another coordinator
    assert all(r.status is SubtaskStatus.DONE for r in result.subtasks)


@pytest.mark.parametrize("architecture", ["centralized", "decentralized"])
async def test_a_killed_claim_holder_lapses_and_its_subtask_completes_elsewhere(
    agent_team: AgentTeam, architecture: str
) -> None:
    await agent_team.start_all(THREE_SLOW)
    victim: list[SubtaskState] = []
    killed_at: list[float] = []

    async def kill_holder(job_id: str) -> None:
        claim = await fresh_claim(agent_team, job_id, avoid=await agent_team.coordinator())
        victim.append(claim)
        agent_team.signal(claim.holder, signal.SIGKILL)
        killed_at.append(time.time())

    graph = wide("holder-kill", 6, tokens=200)
    result, watch = await run_watched(
        agent_team, graph, kill_holder, architecture=architecture, lease_s=LEASE_S
    )
    claim = victim[0]
    final = watch.first[claim.index]
    assert final.releases >= 1  # its lease ran out and it was released
    assert final.agent != claim.holder and final.claim_rev != claim.claim_rev
    assert final.attempt >= 2
    view = await settled(agent_team, result.job_id, lambda v: total(v, "released") >= 1)
    # the dead agent committed nothing after it died (what it did before stays committed)
    assert all(s.ended_at <= killed_at[0] for s in view.states if s.agent == claim.holder)


@pytest.mark.parametrize("architecture", ["centralized", "decentralized"])
async def test_a_paused_holder_past_its_lease_is_fenced_when_it_resumes(
    agent_team: AgentTeam, architecture: str
) -> None:
    await agent_team.start_all(THREE_SLOW)
    victim: list[SubtaskState] = []

    async def pause_holder(job_id: str) -> None:
        claim = await fresh_claim(agent_team, job_id, avoid=await agent_team.coordinator())
        victim.append(claim)
        agent_team.signal(claim.holder, signal.SIGSTOP)

        async def released() -> bool:
            found = await agent_team.board.state(job_id, claim.index)
            return bool(found and found[0].releases >= 1)

        try:
            await wait_until(released, timeout=60, interval=0.1)
        finally:
            agent_team.signal(claim.holder, signal.SIGCONT)

    graph = wide("holder-pause", 6, tokens=200)
    result, watch = await run_watched(
        agent_team, graph, pause_holder, architecture=architecture, lease_s=LEASE_S
    )
    claim = victim[0]
    final = watch.first[claim.index]
    assert final.releases >= 1
    assert (final.agent, final.claim_rev) != (claim.holder, claim.claim_rev)
    # the old holder's late completion (or its withdrawn attempt) is refused and counted
    await settled(agent_team, result.job_id, lambda v: total(v, "fenced") >= 1)
    assert agent_team.procs[claim.holder].poll() is None, "the resumed agent exited"


async def test_five_agents_racing_commit_every_subtask_once(
    agent_team: AgentTeam, record_property: Callable[[str, object], None]
) -> None:
    names = [f"r{i}" for i in range(5)]
    await agent_team.start_all(dict.fromkeys(names, FAST))
    graph = wide("race", 20, tokens=60)

    async def nothing(job_id: str) -> None:
        return None

    result, _ = await run_watched(
        agent_team, graph, nothing, architecture="decentralized", lease_s=5.0
    )
    n = len(graph.subtasks)
    view = await settled(agent_team, result.job_id, lambda v: total(v, "commits") == n)
    assert view.record.participants == ()  # agents = 0: every worker that sees it
    raced = {t.agent for t in view.tallies.values() if t.claims or t.conflicts}
    assert raced == set(names)  # all five took part
    # each agent counted exactly the commits the bucket holds in its name
    for name in names:
        committed = sum(1 for s in view.states if s.agent == name)
        counted = view.tallies[name].commits if name in view.tallies else 0
        assert counted == committed, name
    assert {s.agent for s in view.states} <= set(names)
    # every successful claim is one attempt in the bucket: none was taken twice
    assert total(view, "claims") == sum(s.attempt for s in view.states)
    conflicts = total(view, "conflicts")
    # an agent loses a subtask at most once per revision of it it saw ready (the first
    # pending one, and one after each release): it never claims again from a view that
    # old, however far behind its watch runs
    chances = total(view, "claims") + total(view, "released")
    assert conflicts <= (len(names) - 1) * chances
    record_property("conflicts", conflicts)
    print(f"conflicts: {conflicts}, claims: {total(view, 'claims')}")


async def test_a_backup_copy_that_loses_is_cancelled(agent_team: AgentTeam) -> None:
    # one straggler among fast agents: once nothing is ready, a fast agent backs it up
    await agent_team.start_all({"slow": SLOW, "fast1": FAST, "fast2": FAST})
    graph = wide("straggler", 10, tokens=200)

    async def nothing(job_id: str) -> None:
        return None

    result, watch = await run_watched(
        agent_team, graph, nothing, architecture="decentralized", lease_s=10.0, backups=True
    )
    assert result.figures is not None and result.figures.backups >= 1
    backed = [s for s in watch.first.values() if s.backups]
    assert backed, "no committed subtask had a backup copy"
    losers = {a for s in backed for a in (s.holder, *s.backups) if a != s.agent}
    assert losers

    def withdrawn(v: JobView) -> bool:
        return any(
            v.tallies[a].cancelled + v.tallies[a].backups_lost >= 1
            for a in losers
            if a in v.tallies
        )

    await settled(agent_team, result.job_id, withdrawn)
