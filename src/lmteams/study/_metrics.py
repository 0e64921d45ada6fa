"""What one team run measured, and the bookkeeping every architecture shares to measure it.

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
from typing import NamedTuple

import anyio
import msgspec
import structlog

from lmteams.agents import Answer, Prompt
from lmteams.errors import LmteamsError
from lmteams.study._graph import Subtask, TaskGraph
from lmteams.study._predict import amdahl_speedup, work_span_speedup
from lmteams.study._team import StudyTeam, subtask_prompt

__all__ = ("AgentMetrics", "BusTraffic", "RunMetrics", "bus_traffic")

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
    crash_rate: float
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
    """Subtasks completed more than once."""
    tokens_in: int
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
    speedup: float | None = None
    """Over the same cell's one-agent run, when the sweep had one."""
    efficiency: float | None = None
    baseline_s: float | None = None
    predicted_s: float | None = None


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
    the task's failed attempt before it has ended."""
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
            finished.setdefault(call.task, stop)
        else:
            failed[call.task] = stop
        end = max(end, stop)
    return end + sum(rounds.values())


class Recorder:
    """Runs subtasks on agents as ``Prompt`` requests and keeps the books of one run."""

    def __init__(
        self, team: StudyTeam, graph: TaskGraph, n_agents: int, run_id: str, timeout_s: float
    ) -> None:
        self.team = team
        self.graph = graph
        self.n = n_agents
        self.run_id = run_id
        self.timeout_s = timeout_s
        self.members = team.members[:n_agents]
        self.busy = [0.0] * n_agents
        self.tasks = [0] * n_agents
        self.failures = [0] * n_agents
        self.tokens_out = [0] * n_agents
        self.lost_claims = [0] * n_agents
        self.tokens_in = 0
        self.completed: Counter[str] = Counter()
        self.executions = 0
        self.retries = 0
        self.rounds = 0
        self.calls: dict[int, Call] = {}  # by start order
        self.started = 0.0
        self.finished = 0.0

    def start_clock(self) -> None:
        self.started = anyio.current_time()

    async def execute(self, agent: int, task: Subtask) -> bool:
        """Ask agent ``agent`` to do ``task``; False when it failed (the caller retries)."""
        member = self.members[agent]
        self.executions += 1
        number, round_ = self.executions, self.rounds
        prompt = Prompt(
            task_id=f"{self.run_id}-{task.id}-{number}",
            prompt=subtask_prompt(task),
            max_tokens=task.work_tokens,
        )
        begin = anyio.current_time()
        try:
            answer = await self.team.runtime.ref(member.agent_id).ask(
                prompt, expect=Answer, timeout=self.timeout_s
            )
        except (LmteamsError, TimeoutError) as exc:
            # A failure reports no timings; charge it the call's expected length.
            expected = task.work_tokens / member.tokens_per_s
            self.calls[number] = Call(agent, task.id, round_, expected, ok=False)
            self.failures[agent] += 1
            self.retries += 1
            log.info("study.task.failed", agent=member.agent_id, task=task.id, error=str(exc))
            return False
        finally:
            self.busy[agent] += anyio.current_time() - begin
        modelled = answer.prompt_s + answer.generation_s
        self.calls[number] = Call(agent, task.id, round_, modelled, ok=True)
        self.tasks[agent] += 1
        self.tokens_out[agent] += answer.tokens_out
        self.tokens_in += answer.tokens_in
        self.completed[task.id] += 1
        self.finished = anyio.current_time()
        return True

    def metrics(
        self, *, architecture: str, scheduling: str, traffic: BusTraffic, seed: int
    ) -> RunMetrics:
        scale = self.team.time_scale
        wall = max(self.finished - self.started, 1e-9)
        makespan = wall / scale
        agents = tuple(
            AgentMetrics(
                agent=m.agent_id,
                device=m.device,
                tasks=self.tasks[i],
                failures=self.failures[i],
                busy_s=self.busy[i] / scale,
                idle_s=max(0.0, makespan - self.busy[i] / scale),
                tokens_out=self.tokens_out[i],
                lost_claims=self.lost_claims[i],
            )
            for i, m in enumerate(self.members)
        )
        idle = sum(a.idle_s for a in agents) / self.n
        p = self.graph.parallel_fraction
        return RunMetrics(
            graph=self.graph.name,
            p=p,
            n_agents=self.n,
            architecture=architecture,
            scheduling=scheduling,
            devices=tuple(m.device for m in self.members),
            straggler_rate=self.team.straggler_rate,
            crash_rate=self.team.crash_rate,
            seed=seed,
            time_scale=scale,
            makespan_s=makespan,
            wall_s=wall,
            rounds=self.rounds,
            tasks=len(self.graph.subtasks),
            executions=self.executions,
            retries=self.retries,
            conflicts=sum(self.lost_claims),
            duplicates=sum(c - 1 for c in self.completed.values() if c > 1),
            tokens_in=self.tokens_in,
            tokens_out=sum(self.tokens_out),
            messages=traffic.in_msgs,
            bytes=traffic.in_bytes,
            amdahl=amdahl_speedup(p, self.n),
            work_span=work_span_speedup(self.graph, self.n),
            idle_s=idle,
            idle_fraction=idle / makespan,
            replayed_s=replay(self.graph, [self.calls[k] for k in sorted(self.calls)]),
            agents=agents,
        )
