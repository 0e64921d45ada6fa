"""The planner's Monte Carlo predictions against real team runs on noisy devices.

Setup: one embedded nats-server, one process; a team of eight simulated worker agents on the
``paper-resample`` device (each call's latency drawn from the paper's 73,953 measured LLM
calls: median 2.8 s, mean 6.0 s, slowest 175 s), with 10 % of calls straggling at 3x and 5 %
of attempts crashing part-way (the engine reports the failed attempt and the subtask runs
again). Every run is a job on the production engine (:func:`lmteams.study.run_team`),
without backup copies (the paper's architectures had none). Graphs: the paper's nine task
lists and the five shipped graphs (``--quick``: four of them); team sizes 1..8
(``--quick``: 1, 2, 4, 8); the three architectures (centralized-greedy, the paper's
centralized-preassigned, decentralized), async. Makespans are modelled seconds (wall over
``--time-scale``).

Two sets of runs per cell, each for the question it answers:
- Accuracy (``--repetitions`` runs): every cell draws with seeds of its own, so the cells'
  measured means are independent samples and the error and coverage figures are shares of
  336 independent trials.
- Choice (``--choice-repetitions`` runs, common draws, :class:`lmteams.study.CommonDraws`):
  run r of every cell of graph g uses seed g * 1000 + r, and a call's latency, straggle and
  crash are drawn by the run's seed and the call (its prompt and how many times the run has
  made it), whichever agent makes it. The options of a graph are compared on the same draws
  (a paired design), so which option measures best says what the architectures do rather
  than whose draws were luckier.
Every run follows the devices' distribution and the plan never sees the draws. One set
cannot serve both: with common draws a graph's 24 cells share their luck, so their errors
and coverage move together (2026-12-02, 48 common runs a cell: 14 independent blocks, the
whole graph 17 % above or 12 % below the prediction at once, p90 0.165 and coverage 0.735 for
a planner whose error net of each graph's luck had a p90 of 0.072); with draws of its own per
cell, a perfect planner would pick an option within 5 % of the best measured one about half
the time (``noise_floor_independent``).

Prediction per cell: :func:`lmteams.study.predict_option`, ``--samples`` Monte Carlo plays
of the engine's placement rule over draws from the same latency distribution, stragglers
and crashes, plus the engine's per-subtask overhead. That overhead is an artefact of this
benchmark's compressed time: the engine's ~10 ms of wall time per subtask is a modelled
second at the default time scale (a sixth of a mean call), where beside real LLM calls it
is noise. So it is measured where it is paid and held out from the runs it predicts: a
cell's accuracy runs and choice runs alternate, run by run, so both see the machine's load
of the moment; the accuracy runs are predicted with the overhead measured on the cell's
choice runs, and the recommendation (judged on the choice runs) is made with the overhead
measured on its accuracy runs. From a set of runs, the overhead is the per-subtask figure
at which the Monte Carlo model's mean makespan exceeds its mean at no overhead by the runs'
mean engine gap (makespan minus replay: the same calls' own modelled durations, on the
agents and in the order they ran, with nothing between them). No run's own makespan or
draws predict it. Measured on 16 runs, that figure has a standard error (the gaps' over the
model's slope), which the plan carries into the interval of the mean (``Overhead.errors``):
a mean of many runs cannot come closer to the prediction than the overhead it was made with.
The earlier design calibrated on a synthetic graph right before and after
each block of cells: on a loaded machine (four shards side by side, 40 + 16 runs a cell) those
calibrations caught load spikes (decentralized at n = 8: 12-18.5 modelled s per subtask,
against 1.9-4.3 quiet; before and after up to 3x apart), and every shard over-predicted, by
4-10 % on average and 35-70 % in its worst cells, all at n >= 5.

Figures (last JSON line), over the measured cells (graph x n x architecture), each cell's
measured mean over ``--repetitions`` runs:
- ``median_error``, ``p90_error``: of |predicted mean - measured mean| / measured mean, the
  measured mean over the cell's accuracy runs.
  Targets <= 0.08 and <= 0.15. Beside each, ``noise_floor``: what a perfect model would
  score at this many repetitions (the measured mean of K heavy-tailed runs scatters around
  the true mean; drawn from the predicted distributions), and ``bias``, the mean signed
  error (negative: the plan promises less time than teams take).
- ``interval_coverage``: share of measured means inside the predicted 90 % interval of the
  mean of K runs. Target 0.85..0.95. Beside it, two checks of the predicted spread:
  ``run_interval_coverage``, the share of single runs inside the predicted 90 % interval of
  one run, and ``spread_ratio``, the median over cells of the predicted per-run coefficient
  of variation over the measured one (1: the model's variance is the teams').
- ``best_choice_rate``: per graph, whether the option the planner recommends (objective
  ``fastest``, over the measured options) has a measured mean within 5 % of the best measured
  mean, means over the choice runs. Target >= 0.90. Its ``noise_floor_independent`` is what
  a perfect model would score were each option measured on draws of its own (no common
  draws): with many options within a few per cent of each other and means of K heavy-tailed
  runs, which one measures best is then mostly the draws' doing. The common draws lift the
  real floor above it.

Rarely a decentralized run at n = 8 on a chain-plus-free list livelocks for seconds on lost
claims (seen once: 5,104 conflicts per run, makespans 4-40x the centralized ones); no latency
model predicts that, and the cell's error shows it.

Caveats: a shared 2-core VM; a load spike that lands on a cell's accuracy runs and not on
its choice runs (or the other way round) is error.

Shards: ``--shard I/K`` measures graphs I, I + K, ... of the list only (seeds as in the whole
run), each shard measured and predicted in its own process; ``--save FILE`` writes its cells
(with the plan's draws, for the noise floors), and ``--merge FILE ...`` reports the figures
over every saved cell without measuring. So a run too long for one sitting can be split
across processes or days. Shards may run side by side on one machine: each cell's overhead
is measured under the load the shards put on it then.

Run: .venv/bin/python benchmarks/planner_accuracy.py [--quick]
     .venv/bin/python benchmarks/planner_accuracy.py --repetitions 40 --choice-repetitions 16
     .venv/bin/python benchmarks/planner_accuracy.py --shard 1/2 --save a.json  (and 2/2)
     .venv/bin/python benchmarks/planner_accuracy.py --merge a.json b.json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

from lmteams.bus import open_bus, run_server
from lmteams.errors import TaskFailedError
from lmteams.jobs._graph import TaskGraph
from lmteams.study import (
    Overhead,
    PlanOption,
    RunMetrics,
    StudyTeam,
    call_model,
    choose_option,
    open_team,
    paper_data_dir,
    paper_graphs,
    plan,
    run_team,
    sample_makespans,
    shipped_graphs,
    standard_error,
)

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, quiet_logs

DEVICE = "paper-resample"
FAULTS: dict[str, float] = {"straggler_rate": 0.10, "straggler_factor": 3.0, "crash_rate": 0.05}
ARCHITECTURES = ("centralized-greedy", "centralized-preassigned", "decentralized")
QUICK_GRAPHS = ("dataanalysis/p05", "svgutils/p09", "serial-p02", "fully-parallel-20")
_RETRIES = 3
_GRAPH_SEEDS = 1_000
"""Graph g's choice runs use seeds g * this + r: options of one graph share draws."""
_OWN_SEEDS = 100_000_000
"""Accuracy runs start here: each cell its own block of ``_GRAPH_SEEDS`` seeds."""
_RERUN_SEEDS = 1_000_000_000


def _own_seed(g: int, n: int, arch: str) -> int:
    """The first seed of a cell's accuracy runs, apart from every other cell's and the
    choice runs' (n < 100)."""
    return _OWN_SEEDS + ((g * 100 + n) * len(ARCHITECTURES) + ARCHITECTURES.index(arch)) * (
        _GRAPH_SEEDS
    )


def _graphs(quick: bool, names: str) -> dict[str, TaskGraph]:
    every = {**paper_graphs(paper_data_dir()), **shipped_graphs()}
    wanted = [g for g in names.split(",") if g] or (QUICK_GRAPHS if quick else list(every))
    return {k: every[k] for k in wanted}


def _shard(spec: str) -> tuple[int, int]:
    """``"I/K"`` as (I - 1, K); ``""`` is the whole run, (0, 1)."""
    if not spec:
        return 0, 1
    index, _, count = spec.partition("/")
    i, k = int(index), int(count or "0")
    if not 1 <= i <= k:
        raise SystemExit(f"--shard wants I/K with 1 <= I <= K, not {spec!r}")
    return i - 1, k


async def _measure(
    team: StudyTeam, graph: TaskGraph, n: int, arch: str, sets: list[tuple[int, int]]
) -> list[list[RunMetrics]]:
    """Per (first seed, count) in ``sets``, that many runs; the sets alternate run by run,
    so each sees the machine's load when the others do. A run whose subtask crashed three
    times (the engine fails the job) is rerun on other draws (the same seed would crash the
    same subtask again), as the paper's speedups count successful runs only."""
    out: list[list[RunMetrics]] = [[] for _ in sets]
    failed = [0] * len(sets)
    while any(len(runs) < count for runs, (_, count) in zip(out, sets, strict=True)):
        for i, (first, count) in enumerate(sets):
            if len(out[i]) >= count:
                continue
            seed = first + len(out[i]) + _RERUN_SEEDS * failed[i]
            try:
                out[i].append(await run_team(team, graph, n, architecture=arch, seed=seed))
            except TaskFailedError:
                failed[i] += 1
                if failed[i] > _RETRIES:
                    raise
    return out


class _Planner:
    """One graph's predictions on the benchmark's device, at the run's samples and seed."""

    def __init__(
        self, graph: TaskGraph, rates: list[float], sizes: list[int], *, reps: int,
        samples: int, seed: int,
    ) -> None:  # fmt: skip
        self.graph, self.rates, self.sizes = graph, rates, sizes
        self.reps, self.samples, self.seed = reps, samples, seed
        self.model = call_model(DEVICE, graph, **FAULTS)
        self._bare: dict[tuple[str, int], float] = {}
        """Mean makespan at no overhead, per (architecture, n): both sets of a cell need it."""

    def draws(self, arch: str, n: int, overhead: float) -> tuple[float, ...]:
        """The plan's own Monte Carlo makespans (same seed and count as :func:`plan`'s)."""
        return sample_makespans(
            self.graph, [self.model] * n, self.rates[:n], architecture=arch,
            overhead_s=overhead, samples=self.samples, seed=self.seed,
        ).makespans  # fmt: skip

    def overhead(self, arch: str, runs: list[RunMetrics]) -> tuple[float, float]:
        """The per-subtask overhead at which the model's mean makespan exceeds its mean at
        none by ``runs``' mean engine gap (secant steps from 0: the model is near linear
        in it), and its standard error: the mean gap's, over the same slope."""
        gaps = [r.engine_gap_s for r in runs]
        gap = statistics.fmean(gaps)
        error = standard_error(gaps)
        n = runs[0].n_agents
        slope = self._slope(arch, n, 1.0)
        if gap <= 0 or slope <= 0:
            return 0.0, error / slope if slope > 0 else 0.0
        guess = gap / slope
        if (again := self._slope(arch, n, guess)) > 0:
            guess, slope = gap / again, again
        return guess, error / slope

    def _slope(self, arch: str, n: int, overhead: float) -> float:
        """Modelled makespan added per second of overhead, from none to ``overhead``."""
        if (arch, n) not in self._bare:
            self._bare[arch, n] = statistics.fmean(self.draws(arch, n, 0.0))
        return (statistics.fmean(self.draws(arch, n, overhead)) - self._bare[arch, n]) / overhead

    def options(self, overheads: dict[str, dict[int, tuple[float, float]]]) -> list[PlanOption]:
        """The plan's options at the measured sizes, with these overheads (and their standard
        errors) by team size."""
        options = plan(
            self.graph, [DEVICE], max_agents=max(self.sizes),
            architectures=ARCHITECTURES,
            overheads={
                a: Overhead(
                    sizes=tuple(by_n),
                    seconds=tuple(x for x, _ in by_n.values()),
                    errors=tuple(e for _, e in by_n.values()),
                )
                for a, by_n in overheads.items()
            },
            repetitions=self.reps, samples=self.samples, seed=self.seed,
            **FAULTS,
        ).options  # fmt: skip
        return [o for o in options if o.n_agents in self.sizes]


def _noise_floor(
    cells: list[tuple[float, list[float]]], reps: int, trials: int = 200
) -> tuple[float, float]:
    """The median and p90 error a perfect model would score: each cell's measured mean drawn
    as K runs from its own predicted distribution (kept in ``samples``)."""
    rng = random.Random(7)
    medians, p90s = [], []
    for _ in range(trials):
        errors = []
        for predicted, samples in cells:
            mean = statistics.fmean(rng.choices(samples, k=reps))
            errors.append(abs(predicted - mean) / mean)
        medians.append(statistics.median(errors))
        p90s.append(_quantile(errors, 0.9))
    return statistics.fmean(medians), statistics.fmean(p90s)


def _choice_floor(
    options_of: dict[str, list[tuple[bool, list[float]]]], reps: int, trials: int = 200
) -> float:
    """The best-choice rate a perfect model would score: every option's measured mean drawn
    as K runs from its predicted distribution, the recommendation judged against them (with
    near-equal options, which of them measures best is up to the draws)."""
    rng = random.Random(8)
    hits = []
    for _ in range(trials):
        for options in options_of.values():
            means = [(chosen, statistics.fmean(rng.choices(d, k=reps))) for chosen, d in options]
            best = min(m for _, m in means)
            hits.append(next(m for chosen, m in means if chosen) <= best * 1.05)
    return statistics.fmean(hits)


def _cv(values: Sequence[float]) -> float:
    return statistics.pstdev(values) / statistics.fmean(values)


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _lower_is_better(name: str, value: float, target: float, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "value": round(value, 4),
        "baseline": target,
        "ratio": round(value / target, 4) if target else None,
        "target": target,
        "better": "lower",
        "met": value <= target,
        **extra,
    }


async def main(args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Measure and predict this shard's cells: their rows and the run's context."""
    sizes = [int(n) for n in args.sizes.split(",") if n] or (
        [1, 2, 4, 8] if args.quick else list(range(1, 9))
    )
    scale = args.time_scale or 0.01
    reps = args.repetitions or 16  # the median error's noise floor is 0.07 at 16, 0.11 at 6
    choice_reps = args.choice_repetitions
    samples = args.samples
    shard, shards = _shard(args.shard)
    # a graph's index (its seeds) is its place in the whole list, whichever shard runs it
    indexed = [
        (g, name, graph)
        for g, (name, graph) in enumerate(_graphs(args.quick, args.graphs).items())
        if g % shards == shard
    ]
    graphs = {name: graph for _, name, graph in indexed}
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    async with (
        run_server() as server,
        open_bus(server.url, name="bench") as bus,
        open_team(
            bus, [DEVICE], max(sizes), team="accuracy", time_scale=scale, seed=args.seed,
            common_draws=True, **FAULTS,
        ) as team,
    ):  # fmt: skip
        measured: dict[tuple[str, int, str], list[RunMetrics]] = {}
        paired: dict[tuple[str, int, str], list[RunMetrics]] = {}
        for g, name, graph in indexed:
            team.retune(graph)
            for arch in ARCHITECTURES:
                for n in sizes:
                    sets = [(_own_seed(g, n, arch), reps), (g * _GRAPH_SEEDS, choice_reps)]
                    measured[name, n, arch], paired[name, n, arch] = await _measure(
                        team, graph, n, arch, sets
                    )
            print(f"{name:<22} measured ({time.perf_counter() - started:.0f}s)", flush=True)
        rates = [m.tokens_per_s for m in team.members]
    # per graph, architecture and n: [the overhead measured on the choice runs (predicts
    # the accuracy runs), the one measured on the accuracy runs (makes the recommendation)]
    held: dict[str, dict[str, dict[int, list[tuple[float, float]]]]] = {}
    for name, graph in graphs.items():
        planner = _Planner(graph, rates, sizes, reps=reps, samples=samples, seed=args.seed)
        held[name] = {
            a: {
                n: [
                    planner.overhead(a, paired[name, n, a]),
                    planner.overhead(a, measured[name, n, a]),
                ]
                for n in sizes
            }
            for a in ARCHITECTURES
        }
        for_accuracy, for_choice = (
            {a: {n: pair[k] for n, pair in by_n.items()} for a, by_n in held[name].items()}
            for k in (0, 1)
        )
        best = choose_option(planner.options(for_choice), "fastest")
        for o in planner.options(for_accuracy):
            runs = measured[name, o.n_agents, o.architecture]
            spans = [r.makespan_s for r in runs]
            overhead, overhead_error = for_accuracy[o.architecture][o.n_agents]
            draws = planner.draws(o.architecture, o.n_agents, overhead)
            mean = statistics.fmean(spans)
            rows.append(
                {
                    "graph": name,
                    "n": o.n_agents,
                    "architecture": o.architecture,
                    "predicted": o.makespan_s,
                    "interval": [
                        round(o.prediction.mean_interval.low, 2),
                        round(o.prediction.mean_interval.high, 2),
                    ],
                    "measured": mean,
                    "paired": statistics.fmean(
                        r.makespan_s for r in paired[name, o.n_agents, o.architecture]
                    ),
                    "error": (o.makespan_s - mean) / mean,
                    "inside": mean in o.prediction.mean_interval,
                    "runs_inside": sum(x in o.prediction.run_interval for x in spans),
                    "spread_ratio": _cv(draws) / _cv(spans),
                    "runs": [round(x, 1) for x in spans],
                    "engine_gap": round(statistics.fmean(r.engine_gap_s for r in runs), 1),
                    "conflicts": round(statistics.fmean(r.conflicts for r in runs), 1),
                    "releases": sum(r.releases for r in runs),
                    "recommended": (o.n_agents, o.architecture)
                    == (best.n_agents, best.architecture),
                    "overhead": round(overhead, 3),
                    "overhead_error": round(overhead_error, 3),
                    "overhead_error_s": round(o.prediction.overhead_error_s, 2),
                    "gaps": [round(r.engine_gap_s, 1) for r in runs],
                    "paired_gaps": [
                        round(r.engine_gap_s, 1) for r in paired[name, o.n_agents, o.architecture]
                    ],
                    "draws": [round(x, 3) for x in draws],
                }
            )
    context = {
        "device": DEVICE,
        "faults": FAULTS,
        "architectures_measured": list(ARCHITECTURES),
        "seeds": "accuracy runs: each cell its own; choice runs: run r of every cell of "
        "graph g draws with seed 1000 g + r (lmteams.study.CommonDraws)",
        "overhead_s": {
            name: {
                a: {str(n): [[round(x, 3) for x in f] for f in pair] for n, pair in by_n.items()}
                for a, by_n in mine.items()
            }
            for name, mine in held.items()
        },
        "overhead_note": "per graph, architecture and team size, per subtask, modelled s, "
        "each [figure, standard error]: [measured on the choice runs (predicts the accuracy "
        "runs), measured on the accuracy runs (makes the recommendation)]",
        "repetitions": reps,
        "choice_repetitions": choice_reps,
        "team_sizes": sizes,
        "time_scale": scale,
        "samples": samples,
        "graphs": list(graphs),
        "shard": f"{shard + 1}/{shards}",
        "seconds": round(time.perf_counter() - started, 1),
    }
    return rows, context


def _merge(paths: list[str]) -> None:
    """Report over the cells of saved shards; a graph saved twice is refused."""
    rows: list[dict[str, Any]] = []
    contexts: list[dict[str, Any]] = []
    for path in paths:
        saved = json.loads(Path(path).read_text())
        contexts.append(saved["context"])
        rows += saved["rows"]
    graphs = [g for c in contexts for g in c["graphs"]]
    if len(set(graphs)) != len(graphs):
        raise SystemExit(f"the shards measured some graphs twice: {sorted(graphs)}")
    if len({(c["repetitions"], c["choice_repetitions"]) for c in contexts}) != 1:
        raise SystemExit("the shards ran different numbers of repetitions")
    _report(rows, contexts)


def _choices(rows: list[dict[str, Any]]) -> dict[str, bool]:
    """Per graph: is the recommended option's mean over the choice runs within 5 % of the
    best one's?"""
    by_graph: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_graph.setdefault(r["graph"], []).append(r)
    return {
        g: next(r["paired"] for r in mine if r["recommended"])
        <= min(r["paired"] for r in mine) * 1.05
        for g, mine in by_graph.items()
    }


def _report(rows: list[dict[str, Any]], contexts: list[dict[str, Any]]) -> None:
    reps = contexts[0]["repetitions"]
    choice_reps = contexts[0]["choice_repetitions"]
    cells = [(r["predicted"], r["draws"]) for r in rows]
    options_of: dict[str, list[tuple[bool, list[float]]]] = {}
    for r in rows:
        options_of.setdefault(r["graph"], []).append((r["recommended"], r["draws"]))
    choices = _choices(rows)
    errors = [abs(r["error"]) for r in rows]
    floor_median, floor_p90 = _noise_floor(cells, reps)
    coverage = statistics.fmean(r["inside"] for r in rows)
    worst = [
        {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items() if k != "draws"}
        for r in sorted(rows, key=lambda r: -abs(r["error"]))[:5]
    ]
    for r in rows:
        print(
            f"{r['graph']:<22} n={r['n']} {r['architecture']:<19} pred={r['predicted']:8.1f} "
            f"meas={r['measured']:8.1f} paired={r['paired']:8.1f} err={r['error']:+.3f} "
            f"inside={r['inside']} "
            f"gap={r['engine_gap']} conflicts={r['conflicts']} releases={r['releases']} "
            f"runs={r['runs']}"
        )
    by_arch = {
        a: {
            "bias": round(statistics.fmean(r["error"] for r in mine), 4),
            "median_error": round(statistics.median(abs(r["error"]) for r in mine), 4),
            "p90_error": round(_quantile([abs(r["error"]) for r in mine], 0.9), 4),
            "interval_coverage": round(statistics.fmean(r["inside"] for r in mine), 4),
        }
        for a in ARCHITECTURES
        if (mine := [r for r in rows if r["architecture"] == a])
    }
    figures = [
        _lower_is_better(
            "median_error", statistics.median(errors), 0.08,
            noise_floor=round(floor_median, 4),
            bias=round(statistics.fmean(r["error"] for r in rows), 4),
            by_architecture=by_arch, cells=len(rows),
        ),
        _lower_is_better(
            "p90_error", _quantile(errors, 0.9), 0.15, noise_floor=round(floor_p90, 4),
            worst=worst,
        ),
        {
            "name": "interval_coverage",
            "value": round(coverage, 4),
            "baseline": 0.90,
            "ratio": round(coverage / 0.90, 4),
            "target": [0.85, 0.95],
            "met": 0.85 <= coverage <= 0.95,
            "cells": len(rows),
            "independent_blocks": len(rows),
            "run_interval_coverage": round(
                sum(r["runs_inside"] for r in rows) / sum(len(r["runs"]) for r in rows), 4
            ),
            "spread_ratio": round(statistics.median(r["spread_ratio"] for r in rows), 4),
        },
        {
            "name": "best_choice_rate",
            "value": round(statistics.fmean(choices.values()), 4),
            "baseline": 0.87,
            "ratio": round(statistics.fmean(choices.values()) / 0.87, 4),
            "target": 0.90,
            "met": statistics.fmean(choices.values()) >= 0.90,
            "graphs": len(choices),
            "missed": sorted(g for g, ok in choices.items() if not ok),
            "baseline_is": "arXiv 2512.08296's scaling-law planner: best architecture 87%",
            "repetitions": choice_reps,
            "noise_floor_independent": round(_choice_floor(options_of, choice_reps), 4),
        },
    ]  # fmt: skip
    if len(contexts) == 1:
        emit(figures, **contexts[0])
    else:
        emit(figures, shards=contexts, repetitions=reps, choice_repetitions=choice_reps)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="four graphs; sizes 1, 2, 4, 8")
    parser.add_argument("--time-scale", type=float, default=0.0, help="wall s per modelled s")
    parser.add_argument(
        "--repetitions", type=int, default=0, help="accuracy runs per cell, own draws (16)"
    )
    parser.add_argument(
        "--choice-repetitions", type=int, default=16,
        help="choice runs per cell, on the graph's common draws",
    )  # fmt: skip
    parser.add_argument("--samples", type=int, default=1000, help="Monte Carlo runs per cell")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--graphs", default="", help="comma list of graph names (a smoke run)")
    parser.add_argument("--sizes", default="", help="comma list of team sizes (a smoke run)")
    parser.add_argument("--shard", default="", help="I/K: measure graphs I, I + K, ... only")
    parser.add_argument("--save", default="", help="write the measured cells to this JSON file")
    parser.add_argument("--merge", nargs="+", default=[], help="report over saved shards")
    arguments = parser.parse_args()
    quiet_logs()
    if arguments.merge:
        _merge(arguments.merge)
    else:
        measured_rows, run_context = anyio.run(main, arguments)
        if arguments.save:
            saved = {"context": run_context, "rows": measured_rows}
            Path(arguments.save).write_text(json.dumps(saved))
        _report(measured_rows, [run_context])
