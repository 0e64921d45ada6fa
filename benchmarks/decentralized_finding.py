"""The paper's decentralized finding, retried on lmteams' job engine: do teams whose agents
claim their own subtasks run slower than one agent?

The paper (arXiv 2603.12229) measured a median speedup of 0.88x for decentralized teams
(agents claim tasks from a shared list) against 1.34x for pre-assigned ones. Here the same
question is asked of lmteams' engine, whose decentralized agents claim by compare-and-set on
the jobs bucket, either by rule (``choose = "first"``: the ready subtask with the longest
remaining chain) or by asking their model over the board (``choose = "model"``: a real model
call per claim, its tokens counted apart as coordination, its bad picks real lost claims).

Setup: one embedded nats-server, one process, one team of worker agents per claim setting,
reused for every run. Graphs: the paper's shapes as shipped (serial-p02, mixed-p05,
parallel-p09: 20 subtasks of 300 tokens). Team sizes 1..5 (``--quick``: 1, 3, 5). Scheduling:
the paper's synchronous rounds (a barrier after each round) unless ``--scheduling async``.
Modes, each run on the same team sizes and repetitions, interleaved so drift hits all:

- ``centralized-greedy``: a coordinator places ready subtasks by expected finish;
- ``decentralized-first``: agents claim by rule, no model call;
- ``decentralized-model``: agents ask their model which subtask to take; a simulated model
  answers well (the subtask its name suggests) or, with ``--claim-error`` (default 0.25), badly
  (the first listed, where every bad chooser collides); its call costs what a 16-token reply
  costs on the device;
- ``decentralized-model-full`` (simulated only): the same, with each claim call costing one
  whole call's latency, as the paper's agents' did (they re-read the whole board and answered
  at length every round).

Simulated agents: ``--device paper`` (default; lognormal fit of the paper's 73,953 measured
call latencies, a call of 300 tokens drawing one latency) or ``paper-resample``; makespans in
modelled seconds (wall over ``--time-scale``). ``--real``: a separate, small run on real
models instead: ``llama`` agents (SmolLM2-135M via llama.cpp, one thread each), n = 1..3, on a
scaled-down p05 shape (3-chain + 3 free, 40 tokens each), the three modes that need no
simulation, ``--repetitions`` (default 3) each; the real model's claim answers are whatever
it writes.

Per cell: ``speedup`` by the paper's definition (mean makespan of the same mode's successful
1-agent runs over the mean of its successful n-agent runs), ``speedup_vs_solo`` (over the
centralized 1-agent runs: one agent with no claiming to pay for), coordination tokens and
calls, work tokens, conflicts (lost claims). A failed run is counted, never averaged in.
Each cell's speedup has a bootstrap 95 % interval (both sides resampled). Summary figures:
per mode, the median cell speedup over n >= 2, ``run_median`` (the paper's statistic: the
cell's 1-agent mean over each run's makespan, median over runs), and the cells below 1x,
``surely_below_1x_cells`` those whose whole interval is.

Caveats: a shared 2-core VM. With simulated agents the bus and event loop add a few
milliseconds per subtask of wall time to calls of tens of milliseconds. With real agents the
n models share those 2 cores, so a real makespan also measures CPU sharing, not only
coordination: the real run says what coordination costs on this machine, not in general.

Run: .venv/bin/python benchmarks/decentralized_finding.py [--quick] [--real]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, NamedTuple

import anyio

from lmteams.bus import Bus, open_bus, run_server
from lmteams.errors import TaskFailedError
from lmteams.jobs._graph import TaskGraph
from lmteams.study import RunMetrics, chain_plus_free, open_team, run_team, shipped_graphs
from lmteams.study._stats import bootstrap_ratio

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, figure, quiet_logs

GRAPHS = ("serial-p02", "mixed-p05", "parallel-p09")
PAPER_MEDIAN = {"decentralized": 0.88, "pre-assigned": 1.34}
"""The paper's median speedups (over runs, n >= 2), for the figures' context."""
SOLO = "centralized-greedy"


class Mode(NamedTuple):
    architecture: str
    choose: str
    full_claims: bool


MODES: dict[str, Mode] = {
    "centralized-greedy": Mode("centralized-greedy", "first", False),
    "decentralized-first": Mode("decentralized", "first", False),
    "decentralized-model": Mode("decentralized", "model", False),
    "decentralized-model-full": Mode("decentralized", "model", True),
}
REAL_MODES = ("centralized-greedy", "decentralized-first", "decentralized-model")
REAL_GRAPH = chain_plus_free("mini-p05", 3, 3, work_tokens=40)

Runs = dict[tuple[str, str, int], list[RunMetrics | None]]
"""(graph, mode, n) -> its runs; None for a run that failed."""


async def _sweep(
    bus: Bus,
    args: argparse.Namespace,
    *,
    devices: list[str],
    graphs: list[TaskGraph],
    modes: list[str],
    sizes: list[int],
    repetitions: int,
) -> Runs:
    runs: Runs = defaultdict(list)
    for full in sorted({MODES[m].full_claims for m in modes}):
        mine = [m for m in modes if MODES[m].full_claims == full]
        async with open_team(
            bus,
            devices,
            max(sizes),
            team=f"finding{int(full)}",
            time_scale=args.time_scale,
            seed=args.seed,
            claim_error=args.claim_error,
            full_claims=full,
        ) as team:
            for graph in graphs:
                team.retune(graph)
                for rep in range(repetitions):
                    for n in sizes:
                        for name in mine[rep % len(mine) :] + mine[: rep % len(mine)]:
                            mode = MODES[name]
                            try:
                                run: RunMetrics | None = await run_team(
                                    team,
                                    graph,
                                    n,
                                    architecture=mode.architecture,
                                    scheduling=args.scheduling,
                                    choose=mode.choose,
                                    seed=args.seed + rep,
                                    task_timeout_s=args.task_timeout,
                                )
                            except TaskFailedError as exc:
                                print(f"failed: {graph.name} {name} n={n}: {exc}")
                                run = None
                            runs[graph.name, name, n].append(run)
                print(f"{graph.name}: {len(mine)} modes x {len(sizes)} sizes x {repetitions}")
    return runs


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def _cells(runs: Runs, seed: int) -> list[dict[str, Any]]:
    """One row per (graph, mode, n): speedups as ratios of mean makespans of successful runs,
    with a bootstrap 95 % interval; ``run_speedups`` as the paper's statistics take them (the
    1-agent mean over each run's makespan)."""
    ok = {key: [r.makespan_s for r in rs if r is not None] for key, rs in runs.items()}
    rng = random.Random(seed)
    rows = []
    for (graph, mode, n), spans in sorted(ok.items()):
        good = [r for r in runs[graph, mode, n] if r is not None]
        own, solo = ok.get((graph, mode, 1), []), ok.get((graph, SOLO, 1), [])
        low, high = bootstrap_ratio(own, spans, rng=rng) if own and spans else (None, None)
        rows.append(
            {
                "graph": graph,
                "mode": mode,
                "n": n,
                "runs": len(good),
                "failed": len(runs[graph, mode, n]) - len(good),
                "makespan_s": round(_mean(spans), 1),
                "speedup": round(_mean(own) / _mean(spans), 3) if own and spans else None,
                "interval": [round(low, 3), round(high, 3)] if low and high else None,
                "speedup_vs_solo": round(_mean(solo) / _mean(spans), 3) if solo and spans else None,
                "run_speedups": [round(_mean(own) / s, 3) for s in spans] if own else [],
                "work_span": good[0].work_span if good else None,
                "coordination_tokens": round(
                    _mean([r.coordination_tokens_in + r.coordination_tokens_out for r in good])
                ),
                "coordination_s": round(_mean([r.coordination_s for r in good]), 1),
                "work_tokens": round(_mean([r.tokens_in + r.tokens_out for r in good])),
                "conflicts": round(_mean([r.conflicts for r in good]), 1),
            }
        )
    return rows


def _print_table(rows: list[dict[str, Any]]) -> None:
    print(
        f"{'graph':<13} {'mode':<25} {'n':>2} {'ok':>3} {'makespan':>9} {'speedup':>8} "
        f"{'95% interval':>14} {'vs solo':>8} {'coord tok':>9} {'coord s':>8} {'work tok':>9} "
        f"{'conflicts':>9}"
    )
    for r in rows:
        interval = "{:.2f}-{:.2f}".format(*r["interval"]) if r["interval"] else "-"
        print(
            f"{r['graph']:<13} {r['mode']:<25} {r['n']:>2} {r['runs']:>3} {r['makespan_s']:>9} "
            f"{r['speedup']!s:>8} {interval:>14} {r['speedup_vs_solo']!s:>8} "
            f"{r['coordination_tokens']:>9} {r['coordination_s']:>8} {r['work_tokens']:>9} "
            f"{r['conflicts']:>9}"
        )


def _figures(rows: list[dict[str, Any]], modes: list[str], prefix: str) -> list[dict[str, Any]]:
    """Per mode: the median cell speedup over n >= 2, the paper's median over runs, and the
    cells below 1x (``surely_below_1x``: the whole 95 % interval is)."""
    out = []
    for mode in modes:
        cells = [r for r in rows if r["mode"] == mode and r["n"] >= 2 and r["speedup"]]
        if not cells:
            continue
        speedups = [r["speedup"] for r in cells]
        below = [f"{r['graph']} n={r['n']}" for r in cells if r["speedup"] < 1.0]
        sure = [f"{r['graph']} n={r['n']}" for r in cells if r["interval"][1] < 1.0]
        paper = "decentralized" if mode.startswith("decentralized") else None
        out.append(
            figure(
                f"{prefix}{mode}_median_speedup",
                statistics.median(speedups),
                1.0,
                None,
                cells=len(cells),
                run_median=round(statistics.median(s for r in cells for s in r["run_speedups"]), 3),
                below_1x=len(below),
                below_1x_cells=below,
                surely_below_1x_cells=sure,
                median_vs_solo=round(statistics.median(r["speedup_vs_solo"] for r in cells), 3),
                coordination_tokens_per_run=round(
                    statistics.fmean(r["coordination_tokens"] for r in cells)
                ),
                conflicts_per_run=round(statistics.fmean(r["conflicts"] for r in cells), 2),
                paper_median=PAPER_MEDIAN[paper] if paper else None,
            )
        )
    return out


async def main(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    if args.real:
        sizes, modes, graphs = [1, 2, 3], list(REAL_MODES), [REAL_GRAPH]
        devices, repetitions = [args.real_device], args.repetitions or 3
        args.time_scale = 1.0  # real models run at their own pace
    else:
        sizes = [1, 3, 5] if args.quick else [1, 2, 3, 4, 5]
        modes, devices = list(MODES), [args.device]
        repetitions = args.repetitions or (3 if args.quick else 5)
        every = shipped_graphs()
        graphs = [every[g] for g in (args.graphs.split(",") if args.graphs else GRAPHS)]
    if args.sizes:
        sizes = sorted({1, *(int(n) for n in args.sizes.split(","))})
    if args.modes:
        modes = [m for m in args.modes.split(",") if m in MODES]
        modes += [SOLO] if SOLO not in modes else []  # the solo baseline is always run
    async with run_server() as server, open_bus(server.url, name="bench") as bus:
        runs = await _sweep(
            bus,
            args,
            devices=devices,
            graphs=graphs,
            modes=modes,
            sizes=sizes,
            repetitions=repetitions,
        )
    rows = _cells(runs, args.seed)
    _print_table(rows)
    emit(
        _figures(rows, modes, "real_" if args.real else ""),
        cells=rows,
        mode="real" if args.real else "simulated",
        device=devices[0],
        scheduling=args.scheduling,
        claim_error=None if args.real else args.claim_error,
        time_scale=args.time_scale,
        team_sizes=sizes,
        repetitions=repetitions,
        graphs=[g.name for g in graphs],
        seconds=round(time.perf_counter() - started, 1),
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="sizes 1, 3, 5; 3 repetitions")
    parser.add_argument("--real", action="store_true", help="real SmolLM2-135M agents, n = 1..3")
    parser.add_argument("--device", default="paper", help="simulated device (paper, ...)")
    parser.add_argument("--real-device", default="llama", help="real device spec (--real)")
    parser.add_argument("--scheduling", default="rounds", choices=["rounds", "async"])
    parser.add_argument("--claim-error", type=float, default=0.25, help="bad-pick chance (sim)")
    parser.add_argument("--time-scale", type=float, default=0.01, help="wall s per modelled s")
    parser.add_argument("--repetitions", type=int, default=0, help="runs per cell")
    parser.add_argument("--task-timeout", type=float, default=120.0, help="seconds a subtask")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--graphs", default="", help="comma list of shipped graphs (sim)")
    parser.add_argument("--modes", default="", help=f"comma list of {', '.join(MODES)}")
    parser.add_argument("--sizes", default="", help="comma list of team sizes (1 is added)")
    arguments = parser.parse_args()
    quiet_logs()
    anyio.run(main, arguments)
