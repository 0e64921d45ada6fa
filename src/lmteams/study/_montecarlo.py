"""Monte Carlo makespans: the job engine's placement rules played out over drawn latencies.

The exact simulator (:mod:`lmteams.study._schedule`) plays a graph out at each device's
expected rate. That is right for one call on average and wrong for a schedule: a barrier
waits for the slowest of the round's n calls, a chain waits for each of its links, and a
heavy tail (the paper's hosted models: median 2.8 s, mean 6.0 s, slowest 175 s) shows in the
makespan far more than in the mean rate. So each attempt's duration is drawn here the way
the study's backends draw it (:class:`~lmteams.study.LatencyBackend`,
:class:`~lmteams.hardware.SimulatedBackend`), stragglers and crashes included, and the
graph is played out many times with the engine's own rules:

- ``centralized-greedy``: ready subtasks longest remaining chain first (the engine's
  :func:`~lmteams.jobs._policy.by_priority`), each to the agent with the earliest expected
  finish by advertised rate and the work it holds, which is all the coordinator knows; a
  subtask whose best agent is busy waits for it.
- ``decentralized``: every free agent claims the best ready subtask at once; with
  ``choose="model"`` it first asks its model which (a short call, coordination tokens).
- ``centralized-preassigned``: the paper's assignment, each agent working its own list.

``rounds`` adds the barrier: each agent takes at most one subtask per round and the next
round starts when the round's slowest attempt is over.

A crash is what the backends inject: the call fails part-way through (a uniform fraction of
its drawn duration) and raises; the agent reports the failed attempt at once (no lease has
to lapse: the agent is alive), the subtask is ready again, and whoever is free reruns it
(pre-assigned: its own agent). Every attempt also pays a fixed ``overhead_s``, the engine's
cost per subtask beyond the call (see :func:`lmteams.study.calibrate_overhead`).

Pure Python, seeded: a 20-subtask graph on 8 agents plays out in well under a millisecond.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import msgspec

from lmteams.errors import ConfigError
from lmteams.hardware import DEVICE_CLASSES, estimate_tokens
from lmteams.jobs._graph import DEFAULT_WORK_TOKENS, TaskGraph
from lmteams.jobs._policy import by_priority
from lmteams.jobs._preassign import agent_lists
from lmteams.study._team import STEADY_TOKENS_PER_S, device_rate, subtask_prompt
from lmteams.study._team import _paper_samples as paper_samples

__all__ = (
    "CHOICE_TOKENS",
    "CallModel",
    "Choice",
    "Interval",
    "MakespanDistribution",
    "call_model",
    "choice_prompt_tokens",
    "mean_interval",
    "run_interval",
    "sample_makespans",
)

Choice = Literal["first", "model"]
"""How a decentralized agent picks what to claim (the job engine's ``choose`` option)."""

CHOICE_TOKENS: Final = 16
"""Output tokens of a decentralized agent's "which subtask do I claim" call (the engine's)."""

_CHOICE_PROMPT_TOKENS: Final = 60
"""About what that call's prompt costs beyond one line per ready subtask."""

_LINE_TOKENS: Final = 8
_BOOTSTRAP: Final = 2000
_INTERVAL: Final = 0.90


def choice_prompt_tokens(ready: int) -> int:
    """Prompt tokens of a "which subtask do I claim" call with ``ready`` subtasks listed."""
    return _CHOICE_PROMPT_TOKENS + _LINE_TOKENS * ready


@dataclass(frozen=True)
class CallModel:
    """How long one attempt at each subtask takes on one device, and whether it crashes.

    ``kind`` is ``fixed`` (``seconds`` per subtask, no jitter: the ``steady`` device and
    measured llama profiles), ``lognormal`` or ``resample`` (the paper's latencies, scaled
    by the call's tokens over ``DEFAULT_WORK_TOKENS``, as :class:`LatencyBackend` does) or
    ``sim`` (a device class: prompt and generation time with lognormal jitter of mean 1, and
    an output length drawn between half and all of the token budget).
    """

    device: str
    kind: Literal["fixed", "lognormal", "resample", "sim"]
    limits: tuple[int, ...]
    """Each subtask's token budget (``max_tokens``), in graph order."""
    seconds: tuple[float, ...] = ()
    prompt_s: tuple[float, ...] = ()
    mu: float = 0.0
    sigma: float = 0.0
    samples: tuple[float, ...] = ()
    generation_tokens_per_s: float = 0.0
    prompt_tokens_per_s: float = 0.0
    jitter: float = 0.0
    straggler_rate: float = 0.0
    straggler_factor: float = 1.0
    crash_rate: float = 0.0

    def base(self, rng: random.Random, limit: int, prompt_s: float, fixed_s: float) -> float:
        """One call's drawn seconds before stragglers: ``limit`` tokens out at most."""
        if self.kind == "fixed":
            return fixed_s
        if self.kind == "lognormal":
            return math.exp(rng.gauss(self.mu, self.sigma)) * limit / DEFAULT_WORK_TOKENS
        if self.kind == "resample":
            return rng.choice(self.samples) * limit / DEFAULT_WORK_TOKENS
        s = self.jitter
        prompt_f = math.exp(rng.gauss(-s * s / 2.0, s)) if s > 0 else 1.0
        gen_f = math.exp(rng.gauss(-s * s / 2.0, s)) if s > 0 else 1.0
        tokens = rng.randint(max(1, limit // 2), limit) if limit else 0
        return prompt_s * prompt_f + tokens / self.generation_tokens_per_s * gen_f

    def draw(self, rng: random.Random, index: int) -> tuple[float, bool]:
        """One attempt at subtask ``index``: its modelled seconds, and whether it succeeded
        (a crashed attempt's seconds are how long it ran before it failed)."""
        return self._attempt(
            rng,
            self.limits[index],
            self.prompt_s[index] if self.prompt_s else 0.0,
            self.seconds[index] if self.seconds else 0.0,
        )

    def draw_choice(self, rng: random.Random, ready: int) -> float:
        """A decentralized agent's "which subtask" call over ``ready`` ready subtasks."""
        tokens_in = choice_prompt_tokens(ready)
        prompt_s = tokens_in / self.prompt_tokens_per_s if self.prompt_tokens_per_s else 0.0
        fixed = CHOICE_TOKENS / self.generation_tokens_per_s if self.kind == "fixed" else 0.0
        seconds, _ = self._attempt(rng, CHOICE_TOKENS, prompt_s, fixed, crashes=False)
        return seconds

    def _attempt(
        self,
        rng: random.Random,
        limit: int,
        prompt_s: float,
        fixed_s: float,
        *,
        crashes: bool = True,
    ) -> tuple[float, bool]:
        fails = crashes and self.crash_rate > 0 and rng.random() < self.crash_rate
        slow = (
            self.straggler_factor
            if self.straggler_rate > 0 and rng.random() < self.straggler_rate
            else 1.0
        )
        seconds = self.base(rng, limit, prompt_s, fixed_s) * slow
        if fails:
            return seconds * rng.random(), False
        return seconds, True

    def expected_tokens(self) -> float:
        """Output tokens of one successful run of every subtask, on average."""
        if self.kind != "sim":
            return float(sum(self.limits))
        return sum((max(1, lim // 2) + lim) / 2 for lim in self.limits if lim)


def call_model(
    spec: str,
    graph: TaskGraph,
    *,
    straggler_rate: float = 0.0,
    straggler_factor: float = 3.0,
    crash_rate: float = 0.0,
    paper_data: Path | None = None,
) -> CallModel:
    """The latency distribution a study agent on ``spec`` draws from for ``graph``.

    Stragglers and crashes are injected as :func:`lmteams.study.open_team` injects them; a
    real llama device gets neither (it is as slow and as reliable as it is) and runs at its
    measured profile with no jitter, since a profile records a rate, not a spread.
    """
    for name, value in (("straggler_rate", straggler_rate), ("crash_rate", crash_rate)):
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"{name} must be in [0, 1), got {value}")
    model = _clean_model(spec, graph, paper_data)
    if model is None:  # llama (device_rate rejects unknown specs)
        rate = device_rate(spec, graph)
        return CallModel(
            device=spec,
            kind="fixed",
            limits=tuple(s.token_limit for s in graph.subtasks),
            seconds=tuple(s.work_tokens / rate for s in graph.subtasks),
            generation_tokens_per_s=rate,
        )
    return dataclasses.replace(
        model,
        straggler_rate=straggler_rate,
        straggler_factor=straggler_factor,
        crash_rate=crash_rate,
    )


def _clean_model(spec: str, graph: TaskGraph, paper_data: Path | None) -> CallModel | None:
    """A simulated device's model without faults; None for a real (llama) device."""
    kind, _, arg = spec.partition(":")
    limits = tuple(s.token_limit for s in graph.subtasks)
    cls = DEVICE_CLASSES.get(spec)
    if cls is not None:
        return CallModel(
            device=spec,
            kind="sim",
            limits=limits,
            prompt_s=tuple(
                estimate_tokens(subtask_prompt(graph, s)) / cls.prompt_tokens_per_s
                for s in graph.subtasks
            ),
            generation_tokens_per_s=cls.generation_tokens_per_s,
            prompt_tokens_per_s=cls.prompt_tokens_per_s,
            jitter=cls.jitter,
        )
    if kind == "steady":
        return CallModel(
            device=spec,
            kind="fixed",
            limits=limits,
            seconds=tuple(lim / STEADY_TOKENS_PER_S for lim in limits),
            generation_tokens_per_s=STEADY_TOKENS_PER_S,
        )
    if kind not in {"paper", "paper-resample"}:
        return None
    samples = paper_samples(arg, paper_data)
    if kind == "paper":
        return CallModel(
            device=spec,
            kind="lognormal",
            limits=limits,
            mu=samples.fit.mu,
            sigma=samples.fit.sigma,
            generation_tokens_per_s=DEFAULT_WORK_TOKENS / samples.fit.mean_s,
        )
    return CallModel(
        device=spec,
        kind="resample",
        limits=limits,
        samples=samples.latencies_s,
        generation_tokens_per_s=DEFAULT_WORK_TOKENS / statistics.fmean(samples.latencies_s),
    )


class Interval(msgspec.Struct, frozen=True, kw_only=True):
    """A central interval (``level`` of the mass between ``low`` and ``high``)."""

    low: float
    high: float
    level: float = _INTERVAL

    def __contains__(self, value: float) -> bool:
        return self.low <= value <= self.high


class MakespanDistribution(msgspec.Struct, frozen=True, kw_only=True):
    """Many plays of one option: makespans and what the attempts cost."""

    makespans: tuple[float, ...]
    attempts: float
    """Attempts per run on average (crashed ones and their reruns included)."""
    failures: float
    """Crashed attempts per run on average."""
    coordination_calls: float
    """Model calls per run spent choosing what to claim (decentralized, ``choose="model"``)."""
    coordination_tokens: float
    """Their tokens, prompt and reply, per run."""

    @property
    def mean(self) -> float:
        return statistics.fmean(self.makespans)


def _quantile(ordered: Sequence[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default)."""
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def run_interval(makespans: Sequence[float], level: float = _INTERVAL) -> Interval:
    """Where one run's makespan falls with probability ``level``."""
    ordered = sorted(makespans)
    tail = (1.0 - level) / 2.0
    return Interval(low=_quantile(ordered, tail), high=_quantile(ordered, 1.0 - tail), level=level)


def mean_interval(
    makespans: Sequence[float],
    repetitions: int,
    *,
    seed: int = 0,
    level: float = _INTERVAL,
    centre_sd: float = 0.0,
) -> Interval:
    """Where the mean of ``repetitions`` runs falls with probability ``level``: the
    distribution of that mean, drawn from the simulated runs (so heavy tails carry over,
    which a normal approximation of a mean of three would smooth away), widened by the
    simulation's own error: the pool's mean is an estimate from ``len(makespans)`` plays,
    so a fresh mean of K runs strays from it by sd^2/K + sd^2/S, not sd^2/K alone (with
    K = 40 runs predicted from S = 400 plays, 5 % wider).

    ``centre_sd`` is the standard error the pool's centre carries from its inputs (an
    overhead measured on a few runs shifts every play alike, which no count of plays
    averages away): a normal draw of it is added to each bootstrap mean."""
    if repetitions < 1:
        raise ConfigError(f"repetitions must be >= 1, got {repetitions}")
    if not (centre_sd >= 0 and math.isfinite(centre_sd)):
        raise ConfigError(f"centre_sd must be finite and >= 0, got {centre_sd}")
    if repetitions == 1 and centre_sd == 0:
        return run_interval(makespans, level)
    rng = random.Random(seed)
    pool = list(makespans)
    centre = statistics.fmean(pool)
    widen = math.sqrt(1.0 + repetitions / len(pool))
    means = [
        centre + (statistics.fmean(rng.choices(pool, k=repetitions)) - centre) * widen
        for _ in range(_BOOTSTRAP)
    ]
    if centre_sd:  # drawn after, so a known centre keeps the intervals it always had
        means = [m + rng.gauss(0.0, centre_sd) for m in means]
    return run_interval(means, level)


@dataclass
class _Shape:
    """A graph reduced to what playing it needs: indices, not ids."""

    work: list[int]
    deps: list[int]
    """Count of each subtask's dependencies."""
    children: list[list[int]]
    order: list[int]
    """Longest remaining chain first, as the engine orders ready subtasks."""

    @classmethod
    def of(cls, graph: TaskGraph) -> _Shape:
        index = {s.id: i for i, s in enumerate(graph.subtasks)}
        children: list[list[int]] = [[] for _ in graph.subtasks]
        for i, s in enumerate(graph.subtasks):
            for dep in set(s.deps):
                children[index[dep]].append(i)
        return cls(
            work=[s.work_tokens for s in graph.subtasks],
            deps=[len(set(s.deps)) for s in graph.subtasks],
            children=children,
            order=by_priority(graph, list(range(len(graph.subtasks)))),
        )


class _Play:
    """One play of the graph: the state both run modes share."""

    def __init__(
        self,
        shape: _Shape,
        *,
        models: Sequence[CallModel],
        rates: Sequence[float],
        queues: list[list[int]] | None,
        overhead_s: float,
        rng: random.Random,
        choose_by_model: bool,
    ) -> None:
        self.shape = shape
        self.models = models
        self.rates = rates
        self.queues = queues
        self.head = [0] * len(models)
        self.overhead = overhead_s
        self.rng = rng
        self.choose_by_model = choose_by_model
        self.missing = list(shape.deps)
        self.ready = [m == 0 for m in self.missing]
        self.holding = [-1] * len(models)
        self.done = 0
        self.attempts = self.failures = self.choices = self.choice_tokens = 0

    def attempt(self, agent: int, task: int) -> tuple[float, bool]:
        self.ready[task] = False
        self.holding[agent] = task
        self.attempts += 1
        seconds, ok = self.models[agent].draw(self.rng, task)
        if self.choose_by_model:
            waiting = sum(self.ready) + 1
            self.choices += 1
            self.choice_tokens += choice_prompt_tokens(waiting) + CHOICE_TOKENS
            seconds += self.models[agent].draw_choice(self.rng, waiting)
        return seconds + self.overhead, ok

    def finish(self, agent: int, task: int, ok: bool) -> None:
        self.holding[agent] = -1
        if not ok:
            self.failures += 1
            self.ready[task] = True
            return
        self.done += 1
        if self.queues is not None:
            self.head[agent] += 1
        for child in self.shape.children[task]:
            self.missing[child] -= 1
            if self.missing[child] == 0:
                self.ready[child] = True

    def picks(self, *, rounds: bool, greedy: bool) -> list[tuple[int, int]]:
        """(agent, subtask) pairs to start now: the architecture's placement rule."""
        n = len(self.models)
        idle = [a for a in range(n) if self.holding[a] < 0]
        if not idle:
            return []
        if self.queues is not None:
            out = []
            for a in idle:
                queue = self.queues[a]
                if self.head[a] < len(queue) and self.ready[queue[self.head[a]]]:
                    out.append((a, queue[self.head[a]]))
            return out
        ready = [i for i in self.shape.order if self.ready[i]]
        if not greedy:  # decentralized: each free agent claims the best ready subtask
            return list(zip(idle, ready, strict=False))
        out = []
        load = [
            float(self.shape.work[self.holding[a]]) if self.holding[a] >= 0 else 0.0
            for a in range(n)
        ]
        busy = [self.holding[a] >= 0 for a in range(n)]
        team = idle if rounds else range(n)  # in rounds nobody busy frees up before the barrier
        for i in ready:
            if not idle:
                break
            work = self.shape.work[i]
            pick = min(team, key=lambda a: ((load[a] + work) / self.rates[a], busy[a], a))
            if busy[pick]:
                continue  # a faster busy agent will finish it sooner
            out.append((pick, i))
            idle.remove(pick)
            busy[pick] = True
            load[pick] += work
        return out


def _play_async(play: _Play, greedy: bool) -> float:
    events: list[tuple[float, int, int, bool]] = []
    now = 0.0
    total = len(play.shape.work)
    while play.done < total:
        for agent, task in play.picks(rounds=False, greedy=greedy):
            seconds, ok = play.attempt(agent, task)
            heapq.heappush(events, (now + seconds, agent, task, ok))
        if not events:
            raise ConfigError("the schedule is stuck: no subtask can start (a dependency cycle?)")
        now, agent, task, ok = heapq.heappop(events)
        play.finish(agent, task, ok)
        while events and events[0][0] <= now:
            _, agent, task, ok = heapq.heappop(events)
            play.finish(agent, task, ok)
    return now


def _play_rounds(play: _Play, greedy: bool) -> float:
    now = 0.0
    total = len(play.shape.work)
    while play.done < total:
        taken = play.picks(rounds=True, greedy=greedy)
        if not taken:
            raise ConfigError("the schedule is stuck: no subtask can start (a dependency cycle?)")
        ends = [(agent, task, *play.attempt(agent, task)) for agent, task in taken]
        now += max(seconds for _, _, seconds, _ in ends)
        for agent, task, _, ok in ends:
            play.finish(agent, task, ok)
    return now


def sample_makespans(
    graph: TaskGraph,
    models: Sequence[CallModel],
    rates: Sequence[float],
    *,
    architecture: str = "centralized-greedy",
    scheduling: str = "async",
    overhead_s: float = 0.0,
    samples: int = 400,
    seed: int = 0,
    choose: Choice = "first",
) -> MakespanDistribution:
    """``samples`` plays of ``graph`` on one agent per model, at placement ``rates``.

    ``rates`` are what the agents advertise (the coordinator places by them); ``models``
    are what their calls actually take. Deterministic for a given ``seed``.
    """
    if len(models) != len(rates) or not models:
        raise ConfigError(f"need one rate per agent: {len(models)} models, {len(rates)} rates")
    if samples < 1:
        raise ConfigError(f"samples must be >= 1, got {samples}")
    if not (overhead_s >= 0 and math.isfinite(overhead_s)):
        raise ConfigError(f"overhead_s must be a finite number >= 0, got {overhead_s}")
    if architecture not in {"centralized-greedy", "centralized-preassigned", "decentralized"}:
        raise ConfigError(f"unknown architecture {architecture!r}")
    if scheduling not in {"async", "rounds"}:
        raise ConfigError(f"unknown scheduling {scheduling!r}")
    shape = _Shape.of(graph)
    queues = None
    if architecture == "centralized-preassigned":
        queues = agent_lists(graph, len(models))
    greedy = architecture == "centralized-greedy"
    by_model = choose == "model" and architecture == "decentralized"
    rng = random.Random(seed)
    spans: list[float] = []
    attempts = failures = choices = choice_tokens = 0
    for _ in range(samples):
        play = _Play(
            shape,
            models=models,
            rates=rates,
            queues=queues,
            overhead_s=overhead_s,
            rng=rng,
            choose_by_model=by_model,
        )
        run = _play_rounds if scheduling == "rounds" else _play_async
        spans.append(run(play, greedy))
        attempts += play.attempts
        failures += play.failures
        choices += play.choices
        choice_tokens += play.choice_tokens
    return MakespanDistribution(
        makespans=tuple(spans),
        attempts=attempts / samples,
        failures=failures / samples,
        coordination_calls=choices / samples,
        coordination_tokens=choice_tokens / samples,
    )
