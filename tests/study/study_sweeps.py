"""Sweeps played out by the list-scheduling simulator with noisy task durations, for tests.

Each run draws every subtask's duration as its tokens times a lognormal factor (a device's
jitter), plus a straggler slow-down with the fault setting's probability, and schedules the
drawn graph with :func:`simulate_schedule`. Makespans are therefore real schedules of real
graphs, noisy the way a sweep's are, without a bus, so statistics and figures can be tested
on hundreds of runs in milliseconds.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

import msgspec

from lmteams.jobs._graph import TaskGraph
from lmteams.study import RunMetrics, amdahl_speedup, simulate_schedule, work_span_speedup


def noisy_graph(graph: TaskGraph, rng: random.Random, sigma: float, stragglers: float) -> TaskGraph:
    subtasks = [
        msgspec.structs.replace(
            s,
            work_tokens=max(
                1,
                round(
                    s.work_tokens
                    * rng.lognormvariate(0.0, sigma)
                    * (3.0 if rng.random() < stragglers else 1.0)
                ),
            ),
        )
        for s in graph.subtasks
    ]
    return msgspec.structs.replace(graph, subtasks=tuple(subtasks))


def simulated_run(
    graph: TaskGraph,
    n: int,
    rng: random.Random,
    *,
    architecture: str = "centralized-greedy",
    scheduling: str = "async",
    sigma: float = 0.5,
    straggler_rate: float = 0.0,
    crash_rate: float = 0.0,
    seed: int = 0,
) -> RunMetrics:
    drawn = noisy_graph(graph, rng, sigma, straggler_rate)
    schedule = simulate_schedule(
        drawn,
        n,
        policy="greedy" if architecture == "centralized-greedy" else "preassigned",
        barrier=scheduling == "rounds",
    )
    busy = sum(a.busy_s for a in schedule.agents) / n
    idle = max(0.0, schedule.makespan_s - busy)
    return RunMetrics(
        graph=graph.name,
        p=graph.parallel_fraction,
        n_agents=n,
        architecture=architecture,
        scheduling=scheduling,
        devices=("steady",),
        straggler_rate=straggler_rate,
        crash_rate=crash_rate,
        seed=seed,
        time_scale=1.0,
        makespan_s=schedule.makespan_s,
        wall_s=schedule.makespan_s,
        rounds=schedule.rounds,
        tasks=len(graph.subtasks),
        executions=len(graph.subtasks),
        retries=0,
        conflicts=rng.randrange(n) if architecture == "decentralized" else 0,
        duplicates=0,
        tokens_in=drawn.work,
        tokens_out=drawn.work,
        messages=40 * len(graph.subtasks) + 10 * n,
        bytes=0,
        amdahl=amdahl_speedup(graph.parallel_fraction, n),
        work_span=work_span_speedup(graph, n),
        idle_s=idle,
        idle_fraction=idle / schedule.makespan_s,
        replayed_s=schedule.makespan_s,
        agents=(),
    )


def simulated_sweep(
    graphs: Sequence[TaskGraph],
    sizes: Iterable[int],
    *,
    repetitions: int = 3,
    architectures: Sequence[str] = ("centralized-greedy",),
    schedulings: Sequence[str] = ("async",),
    faults: Sequence[tuple[float, float]] = ((0.0, 0.0),),
    sigma: float = 0.5,
    seed: int = 0,
) -> list[RunMetrics]:
    """Every graph x size x architecture x scheduling x (straggler, crash) x repetition."""
    rng = random.Random(seed)
    sizes = sorted(set(sizes) | {1})
    return [
        simulated_run(
            g,
            n,
            rng,
            architecture=a,
            scheduling=s,
            sigma=sigma,
            straggler_rate=st,
            crash_rate=cr,
            seed=seed + rep,
        )
        for g in graphs
        for a in architectures
        for s in schedulings
        for st, cr in faults
        for rep in range(repetitions)
        for n in sizes
    ]
