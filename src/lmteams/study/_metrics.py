"""What one team run measured: a job's result and its model calls, as the study reports them.

Times are reported in *modelled* seconds (wall seconds over the team's time scale), so a run
of simulated agents at ``time_scale=0.01`` reads like the minutes it models and can be set
beside a schedule predicted in the same unit; ``wall_s`` keeps the real duration.
Bus traffic comes from the server's ``/varz`` monitoring endpoint, which counts every
client's messages, not just the driver's.

``makespan_s`` depends on the machine's load (bus round trips, a busy event loop); a run's
``replayed_s`` does not: it replays the calls' own modelled durations, as the backends report
them, on the agents and in the order they ran, with zero overhead between them. Tests and
the planner's checks compare that, so they hold on a loaded machine.
"""

from __future__ import annotations

import json
import urllib.request
from collections import Counter
from collections.abc import Sequence
from typing import Any, NamedTuple

import anyio
import msgspec
import structlog

from lmteams.jobs import MAX_FAILURES, JobResult, JobView
from lmteams.jobs._graph import TaskGraph
from lmteams.study._claim import parse_claim_prompt
from lmteams.study._predict import amdahl_speedup, work_span_speedup
from lmteams.study._team import ModelCall, StudyTeam

__all__ = ("AgentMetrics", "BusTraffic", "RunMetrics", "bus_traffic", "job_metrics")

log = structlog.get_logger(__name__)


class AgentMetrics(msgspec.Struct, frozen=True, kw_only=True):
    """How one agent spent the run (modelled seconds)."""

    agent: str
    device: str
    tasks: int
    failures: int
    busy_s: float
    idle_s: float
    tokens_out: int
    lost_claims: int = 0


class BusTraffic(msgspec.Struct, frozen=True, kw_only=True):
    """Server-wide counters from ``/varz``: messages and bytes clients sent and received."""

    in_msgs: int = 0
    out_msgs: int = 0
    in_bytes: int = 0
    out_bytes: int = 0

    def __sub__(self, other: BusTraffic) -> BusTraffic:
        return BusTraffic(
            in_msgs=self.in_msgs - other.in_msgs,
            out_msgs=self.out_msgs - other.out_msgs,
            in_bytes=self.in_bytes - other.in_bytes,
            out_bytes=self.out_bytes - other.out_bytes,
        )


class RunMetrics(msgspec.Struct, frozen=True, kw_only=True):
    """One team run: makespan and its predictions, cost, coordination and faults."""

    graph: str
    p: float
    n_agents: int
    architecture: str
    scheduling: str
    devices: tuple[str, ...]
    straggler_rate: float
    """Share of model calls slowed down (the fault setting, not a measurement)."""
    crash_rate: float
    """Share of model calls that fail and are retried (the fault setting)."""
    seed: int
    time_scale: float
    makespan_s: float
    """Modelled seconds: wall seconds over the time scale."""
    wall_s: float
    rounds: int
    tasks: int
    executions: int
    """Model calls made, retries and duplicates included."""
    retries: int
    conflicts: int
    """Claims lost to another agent (decentralized only)."""
    duplicates: int
    """Extra completed copies of a subtask (backups that finished too; only one commits)."""
    tokens_in: int
    """Work tokens: prompts of subtask attempts (coordination apart, below)."""
    tokens_out: int
    messages: int
    bytes: int
    amdahl: float
    work_span: float
    idle_s: float
    """Mean idle modelled seconds per agent."""
    idle_fraction: float
    replayed_s: float
    """Modelled seconds of the same calls with no overhead (see the module docstring)."""
    agents: tuple[AgentMetrics, ...]
    backups: int = 0
    """Backup copies of stragglers the job ran (speculative execution)."""
    backup_extra_s: float = 0.0
    """Modelled seconds of copies that did not commit."""
    releases: int = 0
    """Claims whose lease lapsed and were released."""
    claims: int = 0
    """Claims an agent made itself and won (decentralized)."""
    work_s: float = 0.0
    """Modelled seconds of the committed attempts, end to end: the job's serial work."""
    bound_fraction: float = 0.0
    """The job's speedup (work over makespan) over its work/span bound ``min(n, W/S)``, as the
    engine measures them (see :mod:`lmteams.jobs`: a subtask a backup won lasts from its
    first copy's claim)."""
    attempt_bound_fraction: float = 0.0
    """The same with each subtask lasting only as long as its committed attempt: a winning
    backup's own draw, which no schedule could have known to wait for."""
    speedup: float | None = None
    """Over the same cell's one-agent run, when the sweep had one."""
    efficiency: float | None = None
    baseline_s: float | None = None
    predicted_s: float | None = None
    choose: str = "first"
    """How decentralized agents picked what to claim: ``first`` (longest remaining chain) or
    ``model`` (their model read the board; see ``JobOptions.choose``)."""
    claim_error: float = 0.0
    """A simulated chooser's chance of a bad pick (the setting, not a measurement)."""
    coordination_tokens_in: int = 0
    """Tokens spent choosing what to claim, apart from the work's ``tokens_in``."""
    coordination_tokens_out: int = 0
    coordination_calls: int = 0
    """Model calls that answered no subtask (a model choosing what to claim)."""
    coordination_s: float = 0.0
    """Modelled seconds those calls took, summed over the agents."""
    straggler_factor: float = 3.0
    """How many times slower a straggling call is (the fault setting)."""
    max_failures: int = MAX_FAILURES
    """Failed attempts a subtask may have before it fails the job: the retry limit."""
    succeeded: bool = True
    """False for a job that failed (a subtask ran out of retries): its measures read 0 and
    the paper's statistics, over successful runs, leave it out."""
    error: str = ""
    """Why a failed run failed."""

    @property
    def engine_gap_s(self) -> float:
        """Modelled seconds the engine added beyond its calls: the makespan over the replay
        of the same calls with nothing between them (what an overhead calibrates on)."""
        return self.makespan_s - self.replayed_s


async def bus_traffic(monitor_url: str | None) -> BusTraffic:
    """The server's counters now, or zeros when there is no monitor to ask."""
    if not monitor_url:
        return BusTraffic()

    def fetch() -> BusTraffic:
        with urllib.request.urlopen(f"{monitor_url}/varz", timeout=5) as reply:
            varz = json.loads(reply.read())
        return BusTraffic(
            in_msgs=int(varz.get("in_msgs", 0)),
            out_msgs=int(varz.get("out_msgs", 0)),
            in_bytes=int(varz.get("in_bytes", 0)),
            out_bytes=int(varz.get("out_bytes", 0)),
        )

    try:
        return await anyio.to_thread.run_sync(fetch)
    except (OSError, ValueError) as exc:
        log.warning("study.varz.failed", url=monitor_url, error=str(exc))
        return BusTraffic()


class Call(NamedTuple):
    """One model call of a run, in the order calls started."""

    agent: int
    task: str
    round: int
    modelled_s: float
    ok: bool


def replay(graph: TaskGraph, calls: Sequence[Call]) -> float:
    """Modelled makespan of ``calls`` with no overhead: rounds end with their slowest call;
    otherwise a call starts once its agent is free, its task's dependencies are done and
    the task's failed attempt before it has ended; a task is done when its first copy ends."""
    rounds: dict[int, float] = {}
    free: dict[int, float] = {}
    finished: dict[str, float] = {}
    failed: dict[str, float] = {}
    end = 0.0
    for call in calls:
        if call.round:
            rounds[call.round] = max(rounds.get(call.round, 0.0), call.modelled_s)
            continue
        deps = graph.subtask(call.task).deps
        start = max(
            free.get(call.agent, 0.0),
            failed.get(call.task, 0.0),
            *(finished.get(d, 0.0) for d in deps),
        )
        stop = free[call.agent] = start + call.modelled_s
        if call.ok:
            finished[call.task] = min(stop, finished.get(call.task, stop))
        else:
            failed[call.task] = stop
        end = max(end, stop)
    return end + sum(rounds.values())


def _barrier_rounds(calls: Sequence[ModelCall]) -> list[int]:
    """Round numbers (from 1) of calls in start order: with a barrier, a round's calls all
    start after the previous round's have all ended, so the wall clock separates them."""
    numbers: list[int] = []
    round_no, round_end = 0, float("-inf")
    for call in calls:
        if call.started >= round_end:
            round_no, round_end = round_no + 1, call.ended
        else:
            round_end = max(round_end, call.ended)
        numbers.append(round_no)
    return numbers


def _task_calls(
    graph: TaskGraph, result: JobResult, calls: Sequence[ModelCall], agents: dict[str, int]
) -> list[Call]:
    """The run's subtask calls as replay wants them (calls that answered no subtask, such
    as a model choosing what to claim, are coordination, not work)."""
    by_prompt: dict[str, list[str]] = {}
    for record in result.subtasks:
        if record.prompt:
            by_prompt.setdefault(record.prompt, []).append(record.id)
    work = sorted((c for c in calls if c.prompt in by_prompt), key=lambda c: c.started)
    rounds = _barrier_rounds(work) if result.scheduling == "rounds" else [0] * len(work)
    answered: Counter[str] = Counter()
    out = []
    for call, round_no in zip(work, rounds, strict=True):
        ids = by_prompt[call.prompt]
        task = next((i for i in ids if not answered[i]), ids[0])
        answered[task] += call.ok
        out.append(Call(agents.get(call.agent, -1), task, round_no, call.modelled_s, call.ok))
    return out


def run_labels(
    team: StudyTeam,
    graph: TaskGraph,
    n_agents: int,
    *,
    architecture: str,
    scheduling: str,
    seed: int,
    choose: str,
) -> dict[str, Any]:
    """What identifies a run and its condition, and its predictions: the same for a run that
    was measured and one whose job failed, so both land in the same cell."""
    p = graph.parallel_fraction
    return {
        "graph": graph.name,
        "p": p,
        "n_agents": n_agents,
        "architecture": architecture,
        "scheduling": scheduling,
        "devices": tuple(m.device for m in team.members[:n_agents]),
        "straggler_rate": team.straggler_rate,
        "straggler_factor": team.straggler_factor,
        "crash_rate": team.crash_rate,
        "seed": seed,
        "time_scale": team.time_scale,
        "tasks": len(graph.subtasks),
        "amdahl": amdahl_speedup(p, n_agents),
        "work_span": work_span_speedup(graph, n_agents),
        "choose": choose,
        "claim_error": team.claim_error if choose == "model" else 0.0,
    }


def job_metrics(
    team: StudyTeam,
    graph: TaskGraph,
    n_agents: int,
    *,
    result: JobResult,
    view: JobView | None,
    calls: Sequence[ModelCall],
    architecture: str,
    scheduling: str,
    traffic: BusTraffic,
    seed: int,
    choose: str = "first",
) -> RunMetrics:
    """The study's measures of one job: its figures in modelled seconds, per agent, replayed.

    ``view`` (the ended job on the board) gives each agent's tokens and lost claims; without
    one they read 0, the job's totals do not depend on it."""
    figures = result.figures
    assert figures is not None, "a finished job has figures"
    scale = team.time_scale
    members = team.members[:n_agents]
    index = {m.agent_id: i for i, m in enumerate(members)}
    makespan = figures.makespan_s / scale
    tallies = view.tallies if view is not None else {}
    replayed = _task_calls(graph, result, calls, index)
    coordination = [c for c in calls if c.agent in index and parse_claim_prompt(c.prompt)]
    committed = Counter(r.agent for r in result.subtasks if r.status == "done")
    failures = Counter(c.agent for c in calls if not c.ok and not c.cancelled)
    completed = Counter(c.task for c in replayed if c.ok)
    agents = tuple(
        AgentMetrics(
            agent=m.agent_id,
            device=m.device,
            tasks=committed[m.agent_id],
            failures=failures[m.agent_id],
            busy_s=(busy := figures.busy_s.get(m.agent_id, 0.0) / scale),
            idle_s=max(0.0, makespan - busy),
            tokens_out=tally.tokens_out if (tally := tallies.get(m.agent_id)) else 0,
            lost_claims=tally.conflicts if tally else 0,
        )
        for m in members
    )
    idle = sum(a.idle_s for a in agents) / n_agents
    labels = run_labels(
        team,
        graph,
        n_agents,
        architecture=architecture,
        scheduling=scheduling,
        seed=seed,
        choose=choose,
    )
    return RunMetrics(
        **labels,
        makespan_s=makespan,
        wall_s=figures.makespan_s,
        rounds=figures.rounds,
        executions=len(replayed),
        retries=sum(failures.values()),
        conflicts=figures.conflicts,
        duplicates=sum(c - 1 for c in completed.values() if c > 1),
        tokens_in=figures.tokens_in,
        tokens_out=figures.tokens_out,
        messages=traffic.in_msgs,
        bytes=traffic.in_bytes,
        idle_s=idle,
        idle_fraction=idle / makespan if makespan > 0 else 0.0,
        replayed_s=replay(graph, replayed),
        agents=agents,
        backups=figures.backups,
        backup_extra_s=figures.backup_extra_s / scale,
        releases=figures.releases,
        claims=figures.claims,
        work_s=figures.work_s / scale,
        bound_fraction=figures.bound_fraction,
        attempt_bound_fraction=_attempt_bound_fraction(graph, result),
        coordination_tokens_in=figures.coordination_tokens_in,
        coordination_tokens_out=figures.coordination_tokens_out,
        coordination_calls=len(coordination),
        coordination_s=sum(c.modelled_s for c in coordination),
    )


def _attempt_bound_fraction(graph: TaskGraph, result: JobResult) -> float:
    figures = result.figures
    assert figures is not None
    durations = {
        r.id: max(0.0, r.ended_at - r.started_at) for r in result.subtasks if r.status == "done"
    }
    work, span = sum(durations.values()), graph.measured_span(durations)
    if figures.makespan_s <= 0 or span <= 0:
        return 0.0
    return (work / figures.makespan_s) / min(float(figures.agents), work / span)
