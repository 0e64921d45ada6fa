"""The planner the paper names as future work: which team size and architecture to use.

For each candidate (team size x architecture x scheduling) it plays the graph out with the
exact simulator at the devices' expected rates, plus a per-subtask overhead for what the
model leaves out (a bus round trip, a claim): the overhead is calibrated by timing a short
chain on one real agent, which is all a planner can afford before committing a team.
The recommendation is the smallest team whose makespan is within ``tolerance`` of the best
option's: beyond that, agents cost more than the time they save.

On mixed devices a speedup is only honest against the best one could do alone, so speedups
are over one agent on the fastest device, and efficiency is speedup over the team's capacity
(its agents' speeds summed, in units of that fastest agent): a team of a GPU and a slow CPU
has capacity just above 1, and its speedup can never be near 2.

Real (``llama``) devices are planned at their measured profiles; one nobody has profiled is
planned at an assumed rate, and the plan's ``rates`` say which is which (see
:mod:`lmteams.study._profiles`).
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from lmteams.errors import ConfigError
from lmteams.jobs._graph import TaskGraph
from lmteams.jobs._graphio import chain_plus_free
from lmteams.study._predict import amdahl_speedup, makespan_lower_bound
from lmteams.study._profiles import DeviceRate
from lmteams.study._run import ARCHITECTURES, SCHEDULINGS, run_team
from lmteams.study._schedule import simulate_schedule
from lmteams.study._team import StudyTeam, describe_rate, device_rate

__all__ = ("Plan", "PlanOption", "calibrate_overhead", "plan", "predict_makespan")

_CLAIM_COST = 2.0
"""A decentralized subtask pays about twice the centralized overhead: a KV create and notes."""


class PlanOption(msgspec.Struct, frozen=True, kw_only=True):
    """One way to run the graph and what the model predicts for it (modelled seconds)."""

    n_agents: int
    architecture: str
    scheduling: str
    devices: tuple[str, ...]
    makespan_s: float
    speedup: float
    """Over one agent on the fastest device (``Plan.baseline_device``)."""
    capacity: float
    """The agents' speeds summed, in units of that fastest agent: the speedup's ceiling."""
    efficiency: float
    """``speedup / capacity``."""
    agent_seconds: float
    """Cost: agents held for the whole makespan."""
    tokens: int
    amdahl: float
    """Amdahl's law for n equal agents at the graph's task-count p, as the paper uses it."""
    work_span: float
    """The speedup no schedule on these agents beats (work over capacity, span, overhead)."""


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    graph: str
    devices: tuple[str, ...]
    overhead_s: float
    baseline_device: str
    """The fastest device: speedups are over one agent on it."""
    baseline_s: float
    tolerance: float
    options: tuple[PlanOption, ...]
    recommended: PlanOption
    rates: tuple[DeviceRate, ...] = ()
    """Each device's rate and its source: modelled, measured (a profile) or assumed."""

    @property
    def assumed(self) -> tuple[DeviceRate, ...]:
        """The rates nobody measured: a prediction built on them is a guess."""
        return tuple(r for r in self.rates if r.source == "assumed")


def _team_devices(devices: Sequence[str], n: int) -> tuple[str, ...]:
    return tuple(devices[i % len(devices)] for i in range(n))


def predict_makespan(
    graph: TaskGraph,
    rates: Sequence[float],
    *,
    architecture: str = "centralized-greedy",
    scheduling: str = "async",
    overhead_s: float = 0.0,
) -> float:
    """Modelled makespan of one option: the simulator with the architecture's policy."""
    if architecture not in ARCHITECTURES or scheduling not in SCHEDULINGS:
        raise ConfigError(
            f"unknown architecture/scheduling {architecture!r}/{scheduling!r}: use "
            f"{', '.join(ARCHITECTURES)} / {', '.join(SCHEDULINGS)}"
        )
    decentral = architecture == "decentralized"
    return simulate_schedule(
        graph,
        len(rates),
        rates=list(rates),
        policy="preassigned" if architecture == "centralized-preassigned" else "greedy",
        barrier=scheduling == "rounds",
        overhead_s=overhead_s * (_CLAIM_COST if decentral else 1.0),
    ).makespan_s


def plan(
    graph: TaskGraph,
    devices: Sequence[str] = ("cpu-x86",),
    *,
    max_agents: int = 8,
    architectures: Sequence[str] = ("centralized-greedy", "centralized-preassigned"),
    schedulings: Sequence[str] = ("async",),
    overhead_s: float = 0.0,
    tolerance: float = 0.10,
    straggler_rate: float = 0.0,
) -> Plan:
    """Every option up to ``max_agents`` with its prediction, and the one to pick.

    Agent i runs on ``devices[i % len(devices)]``; speedups are over one agent on the
    fastest of ``devices`` with the first architecture (the best a team-builder gets
    without a team), efficiencies over the team's capacity (see the module docstring).
    """
    if max_agents < 1 or not devices:
        raise ConfigError("plan needs max_agents >= 1 and at least one device")
    if not architectures or not schedulings:
        raise ConfigError("plan needs at least one architecture and one scheduling")
    described = tuple(
        describe_rate(d, graph, straggler_rate=straggler_rate) for d in dict.fromkeys(devices)
    )
    by_device = {r.device: r.tokens_per_s for r in described}
    rates = [by_device[d] for d in devices]
    all_rates = [rates[i % len(rates)] for i in range(max_agents)]
    fastest = max(range(len(rates)), key=lambda i: (rates[i], -i))
    baseline = predict_makespan(
        graph, [rates[fastest]], architecture=architectures[0], overhead_s=overhead_s
    )
    options = []
    for arch in architectures:
        for sched in schedulings:
            for n in range(1, max_agents + 1):
                span = predict_makespan(
                    graph,
                    all_rates[:n],
                    architecture=arch,
                    scheduling=sched,
                    overhead_s=overhead_s,
                )
                capacity = sum(all_rates[:n]) / rates[fastest]
                bound = makespan_lower_bound(graph, all_rates[:n], overhead_s=overhead_s)
                options.append(
                    PlanOption(
                        n_agents=n,
                        architecture=arch,
                        scheduling=sched,
                        devices=_team_devices(devices, n),
                        makespan_s=span,
                        speedup=baseline / span,
                        capacity=capacity,
                        efficiency=baseline / span / capacity,
                        agent_seconds=n * span,
                        tokens=graph.work,
                        amdahl=amdahl_speedup(graph.parallel_fraction, n),
                        work_span=baseline / bound,
                    )
                )
    best = min(o.makespan_s for o in options)
    good = [o for o in options if o.makespan_s <= best * (1.0 + tolerance)]
    recommended = min(good, key=lambda o: (o.n_agents, o.agent_seconds))
    return Plan(
        graph=graph.name,
        devices=tuple(devices),
        overhead_s=overhead_s,
        baseline_device=devices[fastest],
        baseline_s=baseline,
        tolerance=tolerance,
        options=tuple(options),
        recommended=recommended,
        rates=described,
    )


async def calibrate_overhead(
    team: StudyTeam, *, tasks: int = 6, work_tokens: int = 100, repeats: int = 2
) -> float:
    """Modelled seconds each subtask costs beyond its model call, timed on one agent.

    A chain of short subtasks on the team's first agent, measured against the simulator's
    prediction without overhead; the difference per subtask is the overhead (never < 0).
    """
    chain = chain_plus_free("calibration", tasks, 0, work_tokens=work_tokens)
    rate = device_rate(team.members[0].device, chain, paper_data=team.paper_data)
    saved = team.members
    team.members = [msgspec.structs.replace(saved[0], tokens_per_s=rate), *saved[1:]]
    try:
        measured = []
        for _ in range(repeats):
            run = await run_team(team, chain, 1)
            measured.append(run.makespan_s)
    finally:
        team.members = saved
    expected = simulate_schedule(chain, 1, rates=[rate]).makespan_s
    return max(0.0, (min(measured) - expected) / tasks)
