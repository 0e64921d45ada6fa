"""The planner the paper names as future work: which team size and architecture to use.

Each candidate (team size x architecture x scheduling) is predicted by Monte Carlo
(:mod:`lmteams.study._montecarlo`): the job engine's placement rules played out many times
over the devices' own latency distributions, stragglers and crash retries included, plus a
per-subtask overhead for what no latency model holds (a bus round trip, a claim), calibrated
on one real agent. A planner that plans with mean rates is biased low on exactly the devices
that matter: a barrier waits for the slowest of n calls and a heavy tail lands on someone's
critical path. So every option carries its mean makespan with two 90 % intervals, one for a
single run and one for the mean of the ``repetitions`` runs a user plans, and the exact
simulator's figure at expected rates beside them (the gap is what variance costs).

The recommendation follows a stated objective: ``fastest`` (the smallest mean makespan; among
options within ``tolerance`` of it the fewest agents), ``cheapest`` (the fewest tokens, then
the fewest agent-seconds) or ``fastest-within-budget`` (the fastest whose tokens fit).

On mixed devices a speedup is only honest against the best one could do alone, so speedups
are over one agent on the fastest device, and efficiency is speedup over the team's capacity
(its agents' speeds summed, in units of that fastest agent): a team of a GPU and a slow CPU
has capacity just above 1, and its speedup can never be near 2.

Real (``llama``) devices are planned at their measured profiles; one nobody has profiled is
planned at an assumed rate, and the plan's ``rates`` say which is which (see
:mod:`lmteams.study._profiles`).
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Final, Literal, get_args

import msgspec

from lmteams.bus import Bus
from lmteams.errors import ConfigError
from lmteams.jobs._graph import DEFAULT_WORK_TOKENS, TaskGraph
from lmteams.jobs._graphio import chain_plus_free
from lmteams.study._montecarlo import (
    CallModel,
    Choice,
    Interval,
    MakespanDistribution,
    call_model,
    mean_interval,
    run_interval,
    sample_makespans,
)
from lmteams.study._predict import amdahl_speedup, makespan_lower_bound
from lmteams.study._profiles import DeviceRate
from lmteams.study._run import ARCHITECTURES, SCHEDULINGS, run_team
from lmteams.study._schedule import simulate_schedule
from lmteams.study._stats import standard_error
from lmteams.study._team import StudyTeam, describe_rate, open_team

__all__ = (
    "OBJECTIVES",
    "Objective",
    "OptionPrediction",
    "Plan",
    "PlanOption",
    "Verification",
    "Overhead",
    "calibrate_overhead",
    "calibrate_overheads",
    "choose_option",
    "plan",
    "predict_makespan",
    "predict_option",
    "verify_plan",
)

Objective = Literal["fastest", "cheapest", "fastest-within-budget"]
OBJECTIVES: Final = get_args(Objective)

_CLAIM_COST = 2.0
"""Without a calibration of its own, a decentralized subtask is taken to pay about twice the
centralized overhead: a KV create and notes."""

_TIE = 1e-9
_MEDIAN_ERROR = math.sqrt(math.pi / 2)
"""A median's standard error over a mean's, for normal samples."""


class OptionPrediction(msgspec.Struct, frozen=True, kw_only=True):
    """What Monte Carlo predicts for one way of running a graph (modelled seconds)."""

    makespan_s: float
    """Mean over the simulated runs."""
    mean_interval: Interval
    """Where the mean of ``repetitions`` real runs should fall (90 %)."""
    run_interval: Interval
    """Where one real run should fall (90 %)."""
    repetitions: int
    standard_error_s: float
    """Of ``makespan_s`` itself: the simulation's own sampling error."""
    overhead_error_s: float = 0.0
    """Of ``makespan_s``, from the overhead's own standard error (counted in
    ``mean_interval``): the shift one standard error more overhead makes."""
    work_tokens: int
    """Output tokens of the committed attempts, on average (crashed attempts report none)."""
    coordination_tokens: int
    """Tokens spent choosing what to claim (decentralized with ``choose="model"``)."""
    attempts: float
    crashes: float

    @property
    def tokens(self) -> int:
        return self.work_tokens + self.coordination_tokens


class Overhead(msgspec.Struct, frozen=True, kw_only=True):
    """The engine's cost per subtask beyond its model call (modelled seconds), measured at
    some team sizes: linear between them, flat beyond. It grows with the team: agents
    racing for the same claims (decentralized) or one coordinator serving more agents on a
    loaded machine cost real time per subtask."""

    sizes: tuple[int, ...] = (1,)
    seconds: tuple[float, ...] = (0.0,)
    errors: tuple[float, ...] = ()
    """Standard error of each figure, where it was measured on few runs (none: exact). A
    mean of many real runs cannot come closer to the prediction than the overhead it was
    made with, so the plan widens ``mean_interval`` by it."""

    def __post_init__(self) -> None:
        if not self.sizes or len(self.sizes) != len(self.seconds):
            raise ConfigError("an overhead needs one figure per team size")
        if self.errors and len(self.errors) != len(self.sizes):
            raise ConfigError("an overhead's errors need one figure per team size, or none")
        if any(not (x >= 0 and math.isfinite(x)) for x in self.errors):
            raise ConfigError(f"overhead errors must be finite and >= 0, got {self.errors}")
        if list(self.sizes) != sorted(set(self.sizes)) or self.sizes[0] < 1:
            raise ConfigError(f"overhead team sizes must rise from >= 1, got {self.sizes}")
        if any(not (x >= 0 and math.isfinite(x)) for x in self.seconds):
            raise ConfigError(f"overheads must be finite and >= 0, got {self.seconds}")

    @classmethod
    def flat(cls, seconds: float) -> Overhead:
        return cls(sizes=(1,), seconds=(seconds,))

    def at(self, n: int) -> float:
        """The overhead of a subtask on a team of ``n``."""
        return self._between(self.seconds, n)

    def error_at(self, n: int) -> float:
        """The standard error of :meth:`at`, interpolated alike."""
        return self._between(self.errors, n) if self.errors else 0.0

    def _between(self, figures: tuple[float, ...], n: int) -> float:
        pairs: list[tuple[int, float]] = list(zip(self.sizes, figures, strict=True))
        if n <= pairs[0][0]:
            return pairs[0][1]
        for (n0, s0), (n1, s1) in itertools.pairwise(pairs):
            if n <= n1:
                return s0 + (s1 - s0) * (n - n0) / (n1 - n0)
        return pairs[-1][1]


class PlanOption(msgspec.Struct, frozen=True, kw_only=True):
    """One way to run the graph and what the model predicts for it (modelled seconds)."""

    n_agents: int
    architecture: str
    scheduling: str
    devices: tuple[str, ...]
    makespan_s: float
    """Monte Carlo mean (see ``prediction`` for its intervals)."""
    prediction: OptionPrediction
    deterministic_s: float
    """The exact simulator at the devices' expected rates: what a variance-blind planner says."""
    speedup: float
    """Mean makespan of one agent on the fastest device (``Plan.baseline_device``) over ours."""
    capacity: float
    """The agents' speeds summed, in units of that fastest agent: the speedup's ceiling."""
    efficiency: float
    """``speedup / capacity``."""
    agent_seconds: float
    """Cost in time: agents held for the whole (mean) makespan."""
    tokens: int
    """Cost in tokens: work plus coordination."""
    amdahl: float
    """Amdahl's law for n equal agents at the graph's task-count p, as the paper uses it."""
    work_span: float
    """The speedup no schedule on these agents beats (work over capacity, span, overhead)."""


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    graph: str
    devices: tuple[str, ...]
    overhead_s: float
    overheads: dict[str, Overhead]
    """Per-subtask overhead used for each architecture, by team size."""
    baseline_device: str
    """The fastest device: speedups are over one agent on it."""
    baseline_s: float
    objective: str
    token_budget: int | None
    tolerance: float
    repetitions: int
    samples: int
    seed: int
    straggler_rate: float
    straggler_factor: float
    crash_rate: float
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


def _check_option(architecture: str, scheduling: str) -> None:
    if architecture not in ARCHITECTURES or scheduling not in SCHEDULINGS:
        raise ConfigError(
            f"unknown architecture/scheduling {architecture!r}/{scheduling!r}: use "
            f"{', '.join(ARCHITECTURES)} / {', '.join(SCHEDULINGS)}"
        )


def predict_makespan(
    graph: TaskGraph,
    rates: Sequence[float],
    *,
    architecture: str = "centralized-greedy",
    scheduling: str = "async",
    overhead_s: float = 0.0,
) -> float:
    """The exact simulator's makespan of one option at expected ``rates``: no variance."""
    _check_option(architecture, scheduling)
    decentral = architecture == "decentralized"
    return simulate_schedule(
        graph,
        len(rates),
        rates=list(rates),
        policy="preassigned" if architecture == "centralized-preassigned" else "greedy",
        barrier=scheduling == "rounds",
        overhead_s=overhead_s * (_CLAIM_COST if decentral else 1.0),
    ).makespan_s


def predict_option(
    graph: TaskGraph,
    models: Sequence[CallModel],
    rates: Sequence[float],
    *,
    architecture: str = "centralized-greedy",
    scheduling: str = "async",
    overhead_s: float = 0.0,
    overhead_error_s: float = 0.0,
    repetitions: int = 5,
    samples: int = 400,
    seed: int = 0,
    choose: Choice = "first",
) -> OptionPrediction:
    """Monte Carlo prediction of one option on agents drawing from ``models``, placed by
    ``rates``; ``overhead_s`` is this architecture's per-subtask overhead as it stands, and
    ``overhead_error_s`` its standard error, carried into ``mean_interval`` as the shift
    that much more overhead makes on the same draws (the model is near linear in it)."""
    _check_option(architecture, scheduling)

    def sample(overhead: float) -> MakespanDistribution:
        return sample_makespans(
            graph,
            models,
            rates,
            architecture=architecture,
            scheduling=scheduling,
            overhead_s=overhead,
            samples=samples,
            seed=seed,
            choose=choose,
        )

    runs = sample(overhead_s)
    shift = sample(overhead_s + overhead_error_s).mean - runs.mean if overhead_error_s else 0.0
    spans = runs.makespans
    work = statistics.fmean(m.expected_tokens() for m in models)
    return OptionPrediction(
        makespan_s=runs.mean,
        mean_interval=mean_interval(spans, repetitions, seed=seed, centre_sd=abs(shift)),
        run_interval=run_interval(spans),
        repetitions=repetitions,
        standard_error_s=standard_error(spans),
        overhead_error_s=abs(shift),
        work_tokens=round(work),
        coordination_tokens=round(runs.coordination_tokens),
        attempts=runs.attempts,
        crashes=runs.failures,
    )


def _overheads(
    overhead_s: float, overheads: Mapping[str, float | Overhead] | None
) -> dict[str, Overhead]:
    given = {
        a: v if isinstance(v, Overhead) else Overhead.flat(v) for a, v in (overheads or {}).items()
    }
    unknown = set(given) - set(ARCHITECTURES)
    if unknown:
        raise ConfigError(f"overheads for unknown architectures: {', '.join(sorted(unknown))}")
    central = given.get("centralized-greedy", Overhead.flat(overhead_s))
    return {
        "centralized-greedy": central,
        "centralized-preassigned": given.get("centralized-preassigned", central),
        "decentralized": given.get("decentralized", Overhead.flat(overhead_s * _CLAIM_COST)),
    }


def choose_option(
    options: Sequence[PlanOption],
    objective: str,
    *,
    token_budget: int | None = None,
    tolerance: float = 0.0,
) -> PlanOption:
    """The option ``objective`` picks (see the module docstring)."""
    if objective not in OBJECTIVES:
        raise ConfigError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    if not options:
        raise ConfigError("no options to choose from")
    pool = list(options)
    if objective == "fastest-within-budget":
        if token_budget is None:
            raise ConfigError("objective fastest-within-budget needs a token budget")
        pool = [o for o in options if o.tokens <= token_budget]
        if not pool:
            least = min(o.tokens for o in options)
            raise ConfigError(
                f"no option fits {token_budget} tokens: the cheapest needs {least} tokens"
            )
    if objective == "cheapest":
        least = min(o.tokens for o in pool)
        pool = [o for o in pool if o.tokens <= least * (1 + tolerance)]
        return min(pool, key=lambda o: (o.agent_seconds, o.makespan_s, o.n_agents))
    best = min(o.makespan_s for o in pool)
    near = [o for o in pool if o.makespan_s <= best * (1 + tolerance + _TIE)]
    return min(near, key=lambda o: (o.n_agents, o.makespan_s, o.tokens))


def plan(
    graph: TaskGraph,
    devices: Sequence[str] = ("cpu-x86",),
    *,
    max_agents: int = 8,
    architectures: Sequence[str] = ("centralized-greedy", "centralized-preassigned"),
    schedulings: Sequence[str] = ("async",),
    overhead_s: float = 0.0,
    overheads: Mapping[str, float | Overhead] | None = None,
    objective: str = "fastest",
    token_budget: int | None = None,
    tolerance: float = 0.0,
    straggler_rate: float = 0.0,
    straggler_factor: float = 3.0,
    crash_rate: float = 0.0,
    repetitions: int = 5,
    samples: int = 400,
    seed: int = 0,
    choose: Choice = "first",
    paper_data: Path | None = None,
) -> Plan:
    """Every option up to ``max_agents`` with its prediction, and the one ``objective`` picks.

    Agent i runs on ``devices[i % len(devices)]``; speedups are over one agent on the
    fastest of ``devices`` with the first architecture (the best a team-builder gets
    without a team), efficiencies over the team's capacity (see the module docstring).
    ``overheads`` gives an architecture its own calibrated overhead (else ``overhead_s``,
    doubled for decentralized claims); ``repetitions`` is how many runs of the chosen
    option the user means to average, which sets ``mean_interval``.
    """
    if max_agents < 1 or not devices:
        raise ConfigError("plan needs max_agents >= 1 and at least one device")
    if not architectures or not schedulings:
        raise ConfigError("plan needs at least one architecture and one scheduling")
    for arch in architectures:
        if arch not in ARCHITECTURES:
            raise ConfigError(f"architecture {arch!r}: use {', '.join(ARCHITECTURES)}")
    for sched in schedulings:
        if sched not in SCHEDULINGS:
            raise ConfigError(f"scheduling {sched!r}: use {', '.join(SCHEDULINGS)}")
    if objective not in OBJECTIVES:
        raise ConfigError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    faults = {"straggler_rate": straggler_rate, "straggler_factor": straggler_factor}
    unique = tuple(dict.fromkeys(devices))
    described = tuple(describe_rate(d, graph, **faults, paper_data=paper_data) for d in unique)
    models = {
        d: call_model(d, graph, **faults, crash_rate=crash_rate, paper_data=paper_data)
        for d in unique
    }
    by_device = {r.device: r.tokens_per_s for r in described}
    rates = [by_device[d] for d in devices]
    team = _team_devices(devices, max_agents)
    all_rates = [by_device[d] for d in team]
    fastest = max(range(len(rates)), key=lambda i: (rates[i], -i))
    cost = _overheads(overhead_s, overheads)

    def predict(
        on: Sequence[str], placed_by: Sequence[float], arch: str, sched: str
    ) -> OptionPrediction:
        return predict_option(
            graph,
            [models[d] for d in on],
            placed_by,
            architecture=arch,
            scheduling=sched,
            overhead_s=cost[arch].at(len(on)),
            overhead_error_s=cost[arch].error_at(len(on)),
            repetitions=repetitions,
            samples=samples,
            seed=seed,
            choose=choose,
        )

    baseline = predict([devices[fastest]], [rates[fastest]], architectures[0], "async").makespan_s
    options = []
    for arch in architectures:
        for sched in schedulings:
            for n in range(1, max_agents + 1):
                guess = predict(team[:n], all_rates[:n], arch, sched)
                capacity = sum(all_rates[:n]) / rates[fastest]
                bound = makespan_lower_bound(graph, all_rates[:n], overhead_s=cost[arch].at(n))
                exact = simulate_schedule(
                    graph,
                    n,
                    rates=all_rates[:n],
                    policy="preassigned" if arch == "centralized-preassigned" else "greedy",
                    barrier=sched == "rounds",
                    overhead_s=cost[arch].at(n),
                ).makespan_s
                options.append(
                    PlanOption(
                        n_agents=n,
                        architecture=arch,
                        scheduling=sched,
                        devices=team[:n],
                        makespan_s=guess.makespan_s,
                        prediction=guess,
                        deterministic_s=exact,
                        speedup=baseline / guess.makespan_s,
                        capacity=capacity,
                        efficiency=baseline / guess.makespan_s / capacity,
                        agent_seconds=n * guess.makespan_s,
                        tokens=guess.tokens,
                        amdahl=amdahl_speedup(graph.parallel_fraction, n),
                        work_span=baseline / bound,
                    )
                )
    recommended = choose_option(options, objective, token_budget=token_budget, tolerance=tolerance)
    return Plan(
        graph=graph.name,
        devices=tuple(devices),
        overhead_s=overhead_s,
        overheads=cost,
        baseline_device=devices[fastest],
        baseline_s=baseline,
        objective=objective,
        token_budget=token_budget,
        tolerance=tolerance,
        repetitions=repetitions,
        samples=samples,
        seed=seed,
        straggler_rate=straggler_rate,
        straggler_factor=straggler_factor,
        crash_rate=crash_rate,
        options=tuple(options),
        recommended=recommended,
        rates=described,
    )


async def calibrate_overhead(
    team: StudyTeam,
    *,
    architecture: str = "centralized-greedy",
    agents: int = 1,
    tasks: int = 6,
    work_tokens: int = DEFAULT_WORK_TOKENS,
    repeats: int = 3,
) -> float:
    """Modelled seconds each subtask costs beyond its model call, on ``agents`` real agents.

    One agent works a chain of ``tasks`` subtasks; more work ``tasks`` independent subtasks
    each, all at once (where they race for claims, or wait on one coordinator). A run's
    makespan minus its replay (the same calls' own modelled durations, on the agents and in
    the order they ran, with nothing between them: see :mod:`lmteams.study._metrics`) is
    what the engine added along the busiest agent's ``tasks`` subtasks, whatever the device
    drew; per subtask, the median over ``repeats`` runs (never < 0). Subtasks are the size
    of a typical one (``work_tokens``): the engine's cost per subtask is not quite fixed,
    and the calls' lengths set how busy the machine is when it pays it.
    """
    gaps = await _calibration_gaps(
        team, architecture=architecture, agents=agents, tasks=tasks,
        work_tokens=work_tokens, repeats=repeats,
    )  # fmt: skip
    return _figure(gaps)[0]


def _figure(gaps: Sequence[float]) -> tuple[float, float]:
    """A calibration's overhead per subtask (the gaps' median, never < 0) and its standard
    error (about 1.25 sd / sqrt(repeats); none from one repeat)."""
    return max(0.0, statistics.median(gaps)), _MEDIAN_ERROR * standard_error(gaps)


async def _calibration_gaps(
    team: StudyTeam,
    *,
    architecture: str,
    agents: int,
    tasks: int,
    work_tokens: int = DEFAULT_WORK_TOKENS,
    repeats: int,
) -> list[float]:
    """Each calibration run's engine gap per subtask of its busiest agent."""
    if architecture not in ARCHITECTURES:
        raise ConfigError(f"calibrate on an architecture: {', '.join(ARCHITECTURES)}")
    if not 1 <= agents <= len(team.members) or tasks < 1 or repeats < 1:
        raise ConfigError(
            f"calibration needs 1 <= agents <= {len(team.members)}, tasks >= 1, repeats >= 1"
        )
    if agents == 1:
        graph = chain_plus_free(f"calibration-{agents}", tasks, 0, work_tokens=work_tokens)
    else:
        graph = chain_plus_free(f"calibration-{agents}", 0, tasks * agents, work_tokens=work_tokens)
    gaps = []
    for _ in range(repeats):
        run = await run_team(team, graph, agents, architecture=architecture)
        busiest = max((a.tasks for a in run.agents), default=tasks) or tasks
        gaps.append(run.engine_gap_s / busiest)
    return gaps


async def calibrate_overheads(
    team: StudyTeam,
    sizes: Sequence[int] = (1,),
    *,
    repeats: int = 3,
    lane: int = 3,
    architectures: Sequence[str] = ARCHITECTURES,
) -> dict[str, Overhead]:
    """:func:`calibrate_overhead` for each of ``architectures`` at each of ``sizes``: a chain
    of six on one agent, ``lane`` subtasks per agent on more (about what a 20-subtask graph
    gives each of eight agents: with many more ready at once, claims race more than in the
    graphs planned, and the overhead reads high). One architecture at a time lets a long
    measurement calibrate right before and after each of its blocks, as the load drifts.
    Each figure carries the standard error of its median, which the plan counts in its
    interval of the mean."""
    wanted = tuple(sorted({n for n in sizes if 1 <= n <= len(team.members)} or {1}))
    out = {}
    for arch in architectures:
        figures = [
            _figure(
                await _calibration_gaps(
                    team, architecture=arch, agents=n, tasks=6 if n == 1 else lane,
                    repeats=repeats,
                )
            )
            for n in wanted
        ]  # fmt: skip
        out[arch] = Overhead(
            sizes=wanted,
            seconds=tuple(x for x, _ in figures),
            errors=tuple(e for _, e in figures),
        )
    return out


class Verification(msgspec.Struct, frozen=True, kw_only=True):
    """An option run ``repetitions`` times on a real team, against its prediction.

    Errors are signed, ``(predicted - measured) / measured``: negative means the plan
    promised less time than the team took."""

    n_agents: int
    architecture: str
    scheduling: str
    predicted_s: float
    predicted_mean_interval: Interval
    predicted_run_interval: Interval
    measured_s: tuple[float, ...]
    measured_mean_s: float
    errors: tuple[float, ...]
    """Per run."""
    median_error: float
    """Median of the runs' absolute errors."""
    p90_error: float
    relative_error: float
    """Absolute error of the measured mean: what the plan's mean promises."""
    mean_inside: bool
    """Whether the measured mean lies in ``predicted_mean_interval``."""
    runs_inside: int
    """Runs inside ``predicted_run_interval``."""
    overheads: dict[str, Overhead]


def _p90(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(0.9 * (len(ordered) - 1))))]


async def verify_plan(
    bus: Bus,
    graph: TaskGraph,
    make_plan: Callable[[Mapping[str, Overhead]], Plan],
    *,
    time_scale: float = 0.01,
    seed: int = 0,
    paper_data: Path | None = None,
    calibration_repeats: int = 3,
) -> tuple[Plan, Verification]:
    """Calibrate, plan, and run the recommendation on a real team as many times as the plan
    says it will be run (``Plan.repetitions``: its mean interval is for that many).

    ``make_plan`` gets the per-architecture overheads, calibrated on a team of the plan's
    largest size (:func:`calibrate_overheads`, at one agent and at all of them), and
    returns the plan (its devices and faults are the teams').
    """
    draft = make_plan({})
    repetitions = draft.repetitions

    def team(
        devices: Sequence[str], n: int, name: str, team_seed: int
    ) -> AbstractAsyncContextManager[StudyTeam]:
        return open_team(
            bus, devices, n, team=name, graph=graph, time_scale=time_scale, seed=team_seed,
            straggler_rate=draft.straggler_rate, straggler_factor=draft.straggler_factor,
            crash_rate=draft.crash_rate, paper_data=paper_data,
        )  # fmt: skip

    largest = max(o.n_agents for o in draft.options)
    async with team(draft.devices, largest, "plan-calibrate", seed) as calibration:
        overheads = await calibrate_overheads(
            calibration, sorted({1, largest}), repeats=calibration_repeats
        )
    chosen = make_plan(overheads)
    best = chosen.recommended
    measured = []
    async with team(best.devices, best.n_agents, "plan-verify", seed + 1) as members:
        for rep in range(repetitions):
            run = await run_team(
                members,
                graph,
                best.n_agents,
                architecture=best.architecture,
                scheduling=best.scheduling,
                seed=seed + rep,
            )
            measured.append(run.makespan_s)
    guess = best.prediction
    mean = statistics.fmean(measured)
    errors = tuple((guess.makespan_s - m) / m for m in measured)
    return chosen, Verification(
        n_agents=best.n_agents,
        architecture=best.architecture,
        scheduling=best.scheduling,
        predicted_s=guess.makespan_s,
        predicted_mean_interval=guess.mean_interval,
        predicted_run_interval=guess.run_interval,
        measured_s=tuple(measured),
        measured_mean_s=mean,
        errors=errors,
        median_error=statistics.median(abs(e) for e in errors),
        p90_error=_p90([abs(e) for e in errors]),
        relative_error=abs(guess.makespan_s - mean) / mean,
        mean_inside=mean in guess.mean_interval,
        runs_inside=sum(m in guess.run_interval for m in measured),
        overheads=chosen.overheads,
    )
