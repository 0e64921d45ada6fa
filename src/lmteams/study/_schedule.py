"""A deterministic list-scheduling simulator: a task graph played out on agents of given speeds.

This is the planner's core model, so it is exact: time is kept as fractions, equal-looking
finish times are equal, and ties (hence schedules) never depend on float rounding. Two
placements are modelled: ``greedy`` (whoever finishes a ready task earliest takes it) and the
paper's ``preassigned`` (chains kept on one agent, the rest dealt round-robin before the run),
each either free-running or in the paper's synchronous rounds (a barrier after every round).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from typing import Final, Literal, get_args

import msgspec

from lmteams.errors import ConfigError
from lmteams.jobs._graph import TaskGraph
from lmteams.jobs._preassign import agent_lists, depth_first_order, paper_preassignment

__all__ = (
    "DEFAULT_TOKENS_PER_S",
    "AgentLoad",
    "Policy",
    "Schedule",
    "ScheduledTask",
    "depth_first_order",
    "paper_preassignment",
    "simulate_schedule",
)

Policy = Literal["greedy", "preassigned"]
"""``greedy``: whoever finishes a ready task earliest takes it (critical path first).
``preassigned``: the paper's centralized mode, tasks fixed to agents before the run."""

DEFAULT_TOKENS_PER_S: Final = 50.0
"""Rate assumed when none is given; speedups do not depend on it, only seconds do."""


class ScheduledTask(msgspec.Struct, frozen=True, kw_only=True):
    """One task placed on one agent; ``round`` is 1-based with a barrier, 0 without."""

    task: str
    agent: int
    start_s: float
    end_s: float
    round: int = 0


class AgentLoad(msgspec.Struct, frozen=True, kw_only=True):
    """How one agent spent the run: idle time is what a planner tries to squeeze out."""

    agent: int
    tokens_per_s: float
    tasks: int
    busy_s: float
    idle_s: float


class Schedule(msgspec.Struct, frozen=True, kw_only=True):
    """A simulated run: its makespan, where every task ran, and each agent's load."""

    graph: str
    policy: Policy
    barrier: bool
    n_agents: int
    makespan_s: float
    rounds: int
    """Synchronous rounds with a barrier; 0 for an asynchronous schedule."""
    entries: tuple[ScheduledTask, ...]
    agents: tuple[AgentLoad, ...]


def _check_rates(rates: Sequence[float] | None, n_agents: int) -> list[Fraction]:
    if n_agents < 1:
        raise ConfigError(f"n_agents must be >= 1, got {n_agents}")
    if rates is None:
        return [Fraction(DEFAULT_TOKENS_PER_S)] * n_agents
    if len(rates) != n_agents:
        raise ConfigError(f"need one rate per agent: {n_agents} agents, {len(rates)} rates")
    if any(not (r > 0 and math.isfinite(r)) for r in rates):
        raise ConfigError(f"every rate must be a finite number > 0 tokens/s, got {list(rates)}")
    return [Fraction(r) for r in rates]


def _check_overhead(overhead_s: float) -> Fraction:
    if not (overhead_s >= 0 and math.isfinite(overhead_s)):
        raise ConfigError(f"overhead_s must be a finite number >= 0, got {overhead_s}")
    return Fraction(overhead_s)


def simulate_schedule(
    graph: TaskGraph,
    n_agents: int,
    *,
    rates: Sequence[float] | None = None,
    policy: Policy = "greedy",
    overhead_s: float = 0.0,
    barrier: bool = False,
) -> Schedule:
    """Play ``graph`` out on ``n_agents`` agents; deterministic for given inputs.

    A task takes ``work_tokens / rate + overhead_s`` on an agent. ``greedy`` considers ready
    tasks longest-remaining-chain first and gives each to the agent that would finish it
    earliest, waiting for a busy faster agent when that is sooner; with equal rates it never
    leaves an agent idle while a task is ready. ``preassigned`` fixes tasks to agents with
    :func:`paper_preassignment` and each agent works through its list in order.

    ``barrier=True`` models the paper's synchronous rounds: each round every agent takes at
    most one task (greedy: ready tasks critical-path first, each to the fastest agent still
    free; pre-assigned: each agent's next task if it is ready), and the next round starts only
    when the slowest of them is done.

    A barrier never speeds up a pre-assigned schedule (same order, no earlier starts). It can,
    rarely, speed up a greedy one: list scheduling is not monotone (Graham's anomalies), and
    the tests pin one such graph.
    """
    if policy not in get_args(Policy):
        raise ConfigError(f"policy must be one of {', '.join(get_args(Policy))}, got {policy!r}")
    speeds = _check_rates(rates, n_agents)
    sim = _Simulation(graph, speeds, _check_overhead(overhead_s), policy)
    if barrier:
        sim.run_rounds()
    else:
        sim.run_async()
    return sim.result(barrier)


class _Simulation:
    """State of one simulated run; exists so the two run modes share their bookkeeping."""

    def __init__(
        self, graph: TaskGraph, speeds: list[Fraction], overhead: Fraction, policy: Policy
    ) -> None:
        self.graph = graph
        self.speeds = speeds
        self.overhead = overhead
        self.policy: Policy = policy
        self.tokens = {s.id: s.work_tokens for s in graph.subtasks}
        self.deps = {s.id: s.deps for s in graph.subtasks}
        self.placed: dict[str, tuple[int, Fraction, Fraction, int]] = {}
        self.rounds = 0
        index = {s.id: i for i, s in enumerate(graph.subtasks)}
        fastest = max(speeds)
        rest: dict[str, Fraction] = {}
        for task_id in reversed(graph.topological_order()):
            children = (c for c in graph.subtasks if task_id in c.deps)
            tail = max((rest[c.id] for c in children), default=Fraction(0))
            rest[task_id] = self.tokens[task_id] / fastest + overhead + tail
        self.priority = {t: (-rest[t], index[t]) for t in index}
        self.assignment = paper_preassignment(graph, len(speeds)) if policy == "preassigned" else {}
        self.queues = (
            [[graph.subtasks[i].id for i in mine] for mine in agent_lists(graph, len(speeds))]
            if policy == "preassigned"
            else []
        )

    def duration(self, task_id: str, agent: int) -> Fraction:
        return self.tokens[task_id] / self.speeds[agent] + self.overhead

    def place(self, task_id: str, agent: int, start: Fraction, round_no: int = 0) -> Fraction:
        end = start + self.duration(task_id, agent)
        self.placed[task_id] = (agent, start, end, round_no)
        return end

    def deps_done_by(self, task_id: str, time: Fraction) -> bool:
        return all(d in self.placed and self.placed[d][2] <= time for d in self.deps[task_id])

    def run_async(self) -> None:
        if self.policy == "preassigned":
            free = [Fraction(0)] * len(self.speeds)
            for task_id in depth_first_order(self.graph):
                agent = self.assignment[task_id]
                ready = max((self.placed[d][2] for d in self.deps[task_id]), default=Fraction(0))
                free[agent] = self.place(task_id, agent, max(free[agent], ready))
            return
        free = [Fraction(0)] * len(self.speeds)
        now = Fraction(0)
        while len(self.placed) < len(self.tokens):
            pending = sorted(
                (t for t in self.tokens if t not in self.placed and self.deps_done_by(t, now)),
                key=self.priority.__getitem__,
            )
            for task_id in pending:
                agent = min(
                    range(len(self.speeds)),
                    key=lambda a: (
                        max(free[a], now) + self.duration(task_id, a),
                        free[a] > now,
                        a,
                    ),
                )
                if free[agent] <= now:
                    free[agent] = self.place(task_id, agent, now)
            # Each agent runs one task at a time, so the next event is the next agent to free up.
            now = min(f for f in free if f > now)

    def run_rounds(self) -> None:
        now = Fraction(0)
        cursor = [0] * len(self.speeds)
        while len(self.placed) < len(self.tokens):
            self.rounds += 1
            taken: dict[int, str] = {}
            if self.policy == "preassigned":
                for agent, queue in enumerate(self.queues):
                    if cursor[agent] < len(queue) and self.deps_done_by(queue[cursor[agent]], now):
                        taken[agent] = queue[cursor[agent]]
                        cursor[agent] += 1
            else:
                ready = sorted(
                    (t for t in self.tokens if t not in self.placed and self.deps_done_by(t, now)),
                    key=self.priority.__getitem__,
                )
                for task_id in ready:
                    idle = [a for a in range(len(self.speeds)) if a not in taken]
                    if not idle:
                        break
                    taken[min(idle, key=lambda a: (self.duration(task_id, a), a))] = task_id
            ends = [self.place(t, a, now, self.rounds) for a, t in sorted(taken.items())]
            now = max(ends)

    def result(self, barrier: bool) -> Schedule:
        entries = tuple(
            ScheduledTask(task=t, agent=a, start_s=float(s), end_s=float(e), round=r)
            for t, (a, s, e, r) in sorted(self.placed.items(), key=lambda kv: (kv[1][1], kv[1][0]))
        )
        makespan = max(e for (_, _, e, _) in self.placed.values())
        loads = []
        for agent, speed in enumerate(self.speeds):
            mine = [(s, e) for (a, s, e, _) in self.placed.values() if a == agent]
            busy = sum((e - s for s, e in mine), Fraction(0))
            loads.append(
                AgentLoad(
                    agent=agent,
                    tokens_per_s=float(speed),
                    tasks=len(mine),
                    busy_s=float(busy),
                    idle_s=float(makespan - busy),
                )
            )
        return Schedule(
            graph=self.graph.name,
            policy=self.policy,
            barrier=barrier,
            n_agents=len(self.speeds),
            makespan_s=float(makespan),
            rounds=self.rounds,
            entries=entries,
            agents=tuple(loads),
        )
