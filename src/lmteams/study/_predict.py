"""What a team of n agents should achieve on a task graph: Amdahl, work/span, a schedule.

Three predictions, from loosest to tightest. Amdahl's law needs only the parallel fraction p.
The work/span bound ``T_n >= max(W / n, S)`` also knows how the work is distributed. The
simulator (:func:`simulate_schedule`) plays the graph out under a placement policy, so the gap
between the bounds and a real run splits into "the schedule" and "everything else"
(coordination, conflicts, stragglers).

Amdahl is not an upper bound for a task graph: free tasks can run while the chain does, so a
greedy schedule of the paper's p = 0.5 graph reaches W / S = 2 with two agents, above Amdahl's
1.33. The paper's pre-assignment gives the chain's agent its share of free tasks as well, which
makes its schedule ``T_n = CP + (N - CP) / n``: exactly Amdahl whenever n divides N - CP.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from fractions import Fraction

import msgspec

from lmteams.errors import ConfigError
from lmteams.jobs._graph import TaskGraph
from lmteams.study._schedule import (
    DEFAULT_TOKENS_PER_S,
    Policy,
    _check_overhead,
    _check_rates,
    simulate_schedule,
)

__all__ = (
    "Prediction",
    "amdahl_speedup",
    "makespan_lower_bound",
    "predict",
    "work_span_speedup",
)


class Prediction(msgspec.Struct, frozen=True, kw_only=True):
    """The three predictions for one team size, as speedups over one agent."""

    n_agents: int
    amdahl: float
    work_span: float
    simulated: float
    makespan_s: float
    baseline_s: float


def amdahl_speedup(p: float, n: int) -> float:
    """``1 / ((1 - p) + p / n)``: the speedup predicted when a fraction p of the work
    parallelizes perfectly and the rest not at all; a task graph's own limit is the
    work/span bound (:func:`work_span_speedup`), which may be higher."""
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"parallel fraction p must be in [0, 1], got {p}")
    if n < 1:
        raise ConfigError(f"team size n must be >= 1, got {n}")
    return 1.0 / ((1.0 - p) + p / n)


def work_span_speedup(
    graph: TaskGraph,
    n: int,
    *,
    overhead_s: float = 0.0,
    tokens_per_s: float = DEFAULT_TOKENS_PER_S,
) -> float:
    """``min(n, W / S)`` for equal agents: no schedule beats either limit.

    Work and span are in seconds, so with a per-task overhead the rate matters: overhead
    weighs more in W (every task) than in S (the chain's tasks only).
    """
    if n < 1:
        raise ConfigError(f"team size n must be >= 1, got {n}")
    rate = _check_rates([tokens_per_s], 1)[0]
    work, span = _work_and_span(graph, rate, _check_overhead(overhead_s))
    return min(float(n), float(work / span))


def makespan_lower_bound(
    graph: TaskGraph, rates: Sequence[float], *, overhead_s: float = 0.0
) -> float:
    """Seconds no schedule on agents of these rates can beat.

    ``W / sum(rates)`` (all agents always busy), the span at the fastest rate, and the busy
    time every task needs even on the fastest agent, shared over all agents.
    """
    speeds = _check_rates(rates, len(rates))
    fastest = max(speeds)
    overhead = _check_overhead(overhead_s)
    _, span = _work_and_span(graph, fastest, overhead)
    tokens = Fraction(graph.work)
    shared = (tokens / fastest + overhead * len(graph.subtasks)) / len(speeds)
    return float(max(tokens / sum(speeds), span, shared))


def _work_and_span(
    graph: TaskGraph, rate: Fraction, overhead: Fraction
) -> tuple[Fraction, Fraction]:
    longest: dict[str, Fraction] = {}
    for task_id in graph.topological_order():
        s = graph.subtask(task_id)
        before = max((longest[d] for d in s.deps), default=Fraction(0))
        longest[task_id] = before + s.work_tokens / rate + overhead
    work = sum((s.work_tokens / rate + overhead for s in graph.subtasks), Fraction(0))
    return work, max(longest.values())


def predict(
    graph: TaskGraph,
    team_sizes: Iterable[int],
    *,
    tokens_per_s: float = DEFAULT_TOKENS_PER_S,
    policy: Policy = "greedy",
    barrier: bool = False,
    overhead_s: float = 0.0,
) -> tuple[Prediction, ...]:
    """Amdahl, work/span and simulated speedups of equal agents, one row per team size.

    The simulated baseline is the same model with one agent, so the ratio isolates what the
    schedule gains; Amdahl uses the graph's task-count p, exactly as the paper does.
    """

    def makespan(n: int) -> float:
        return simulate_schedule(
            graph,
            n,
            rates=[tokens_per_s] * n,
            policy=policy,
            barrier=barrier,
            overhead_s=overhead_s,
        ).makespan_s

    base = makespan(1)
    rows = []
    for n in team_sizes:
        span_n = makespan(n)
        rows.append(
            Prediction(
                n_agents=n,
                amdahl=amdahl_speedup(graph.parallel_fraction, n),
                work_span=work_span_speedup(
                    graph, n, overhead_s=overhead_s, tokens_per_s=tokens_per_s
                ),
                simulated=base / span_n,
                makespan_s=span_n,
                baseline_s=base,
            )
        )
    return tuple(rows)
