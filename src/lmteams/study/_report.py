"""A sweep's outputs: runs and cells as CSV and JSON, statistics, PNG figures, a report.

Files: ``runs.csv`` and ``runs.json`` (one row per run; the columns are documented in
``docs/runs-csv.md`` and equal :data:`RUNS_CSV_COLUMNS`), ``cells.csv`` (one row per
condition and team size: the speedup with its bootstrap interval), ``stats.json`` (cells,
tests and the bootstrap's seed), ``speedup.png``, ``cost_idle_conflicts.png`` and
``report.md``.

The report reads the sweep by the paper's definitions (:mod:`lmteams.study._stats`) and sets
each measured cell beside the paper's matching cells, recomputed from its ``runs.parquet``
(:func:`paper_speedups`). Amdahl's law is named a prediction, never a bound: for a task graph
the ceiling is the work/span bound ``min(n, W/S)``, which is at or above Amdahl's figure for
the paper's chain-plus-free graphs, so a cell may beat Amdahl and still be honest.
"""

from __future__ import annotations

import csv
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Final

import msgspec

from lmteams.errors import LmteamsError
from lmteams.study._figures import write_figures
from lmteams.study._findings import findings_markdown, paper_findings
from lmteams.study._metrics import RunMetrics
from lmteams.study._paper import PaperData
from lmteams.study._speedup import SpeedupRow, SpeedupSummary, paper_speedups, speedup_summary
from lmteams.study._stats import (
    CellStat,
    Condition,
    SweepStats,
    condition_of,
    faults_label,
    sweep_stats,
)

__all__ = ("CELLS_CSV_COLUMNS", "PAPER_MODE", "RUNS_CSV_COLUMNS", "paper_matches", "write_report")

_PAPER_QUOTED: Final = 2.19
RUNS_CSV_COLUMNS: Final = (
    *(f for f in RunMetrics.__struct_fields__ if f != "agents"),
    "faults",
    "cost_agent_s",
)
"""``runs.csv``'s header: every field of :class:`RunMetrics` but the per-agent records (in
``runs.json``), then the fault-setting label and the run's cost in agent-seconds."""
_CONDITION_COLUMNS: Final = (*Condition.__struct_fields__, "faults")
_CELL_FIELDS: Final = tuple(f for f in CellStat.__struct_fields__ if f not in {"condition"})
CELLS_CSV_COLUMNS: Final = (*_CONDITION_COLUMNS, *_CELL_FIELDS)
PAPER_MODE: Final = {
    "centralized-preassigned": "preassigned",
    "centralized-greedy": "preassigned",
    "decentralized": "decentralized",
}
"""The paper's mode each team architecture is set beside: ``centralized-preassigned`` and
``decentralized`` run the paper's own two modes; ``centralized-greedy`` (ready subtasks placed
by expected finish) is set beside the paper's centralized mode too, the nearest it had."""
_P_TOLERANCE: Final = 0.015


def _run_row(run: RunMetrics) -> dict[str, Any]:
    row = msgspec.structs.asdict(run)
    row["devices"] = "+".join(dict.fromkeys(run.devices))
    row["faults"] = faults_label(run.straggler_rate, run.straggler_factor, run.crash_rate)
    row["cost_agent_s"] = run.n_agents * run.makespan_s
    return {k: row[k] for k in RUNS_CSV_COLUMNS}


def _cell_row(cell: CellStat) -> dict[str, Any]:
    row = msgspec.structs.asdict(cell.condition)
    row["faults"] = cell.condition.faults
    row.update({k: getattr(cell, k) for k in _CELL_FIELDS})
    row["seeds"] = " ".join(str(s) for s in cell.seeds)
    return row


def _write_csv(path: Path, columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _paper_cells(paper_data: str | Path | None) -> tuple[list[str], list[SpeedupRow]]:
    """The paper's summary lines and its cells, or a line saying why there are none."""
    try:
        data = PaperData(paper_data)
        runs = data.runs
        summary = speedup_summary(runs)
        findings = findings_markdown(paper_findings(data, summary))
    except LmteamsError as exc:
        return [f"The paper's data was not available ({exc}); no comparison."], []
    return [
        *_paper_summary(summary),
        "",
        *("#" + line if line.startswith("## ") else line for line in findings),
    ], paper_speedups(runs)


def _paper_summary(summary: SpeedupSummary) -> list[str]:
    c, r = summary.cells, summary.runs
    return [
        f"Summaries of the paper quote a mean speedup of {_PAPER_QUOTED}x (no grouping of the "
        "released runs gives that mean). Recomputed from its "
        "`runs.parquet` by its own definition (mean successful 1-agent wall-clock over mean "
        "successful n-agent wall-clock, within model, domain, p and mode), for n >= 2:",
        "",
        "| unit | count | mean | median | below Amdahl's prediction |",
        "| --- | ---: | ---: | ---: | ---: |",
        f"| cells | {c.count} | {c.mean:.2f}x | {c.median:.2f}x | {c.fraction_below_amdahl:.0%} |",
        f"| runs | {r.count} | {r.mean:.2f}x | {r.median:.2f}x | {r.fraction_below_amdahl:.0%} |",
        "",
        "By mode (runs): "
        + ", ".join(f"{g.key} mean {g.mean:.2f}x (median {g.median:.2f}x)" for g in r.by_mode)
        + ". By p (cells): "
        + ", ".join(f"{g.key} {g.mean:.2f}x" for g in c.by_p)
        + ".",
    ]


def paper_matches(cell: CellStat, paper: Sequence[SpeedupRow]) -> list[SpeedupRow]:
    """The paper's cells a measured cell is set beside: same n, same p (within 0.015), the
    mode of :data:`PAPER_MODE`, and, for a paper graph (``domain/pXX``), the same domain;
    every model's cell matches, since the paper's models are not ours."""
    cond = cell.condition
    mode = PAPER_MODE.get(cond.architecture)
    domains = {row.domain for row in paper}
    domain, _, _ = cond.graph.partition("/")
    return [
        row
        for row in paper
        if row.mode == mode
        and row.n_agents == cell.n_agents
        and abs(row.p - cond.p) <= _P_TOLERANCE
        and (domain not in domains or row.domain == domain)
    ]


def _runs(cell: CellStat) -> str:
    return f"{cell.runs} (+{cell.failed_runs} failed)" if cell.failed_runs else str(cell.runs)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _fmt_ci(cell: CellStat) -> str:
    if cell.n_agents == 1:
        return "1.00"
    if cell.ci_low is None or cell.ci_high is None:
        return f"{cell.speedup:.2f} [one run: no interval]"
    return f"{cell.speedup:.2f} [{cell.ci_low:.2f}, {cell.ci_high:.2f}]"


def _predicted_speedups(runs: Sequence[RunMetrics]) -> dict[tuple[Condition, int], float]:
    """The simulator's speedup per cell: mean predicted 1-agent over n-agent makespan."""
    predicted: dict[tuple[Condition, int], list[float]] = defaultdict(list)
    for run in runs:
        if run.predicted_s:
            predicted[(condition_of(run), run.n_agents)].append(run.predicted_s)
    means = {key: statistics.fmean(v) for key, v in predicted.items()}
    return {
        (cond, n): means[(cond, 1)] / mean
        for (cond, n), mean in means.items()
        if (cond, 1) in means
    }


def _mean_idle_alone(stats: SweepStats) -> str:
    alone = [c.idle_fraction for c in stats.cells if c.n_agents == 1]
    return f"{statistics.fmean(alone):.0%}" if alone else "-"


def _measured_section(stats: SweepStats, runs: Sequence[RunMetrics]) -> list[str]:
    lines = [
        "## Measured speedups",
        "",
        "Times are modelled seconds (wall / time scale). Speedup is the paper's: the mean "
        "makespan of the condition's 1-agent runs over the mean makespan of its n-agent runs "
        "(a ratio of means, pooled over the repetitions), with a "
        f"{stats.confidence:.0%} bootstrap interval ({stats.bootstrap_resamples} resamples of "
        f"the runs on both sides, seed {stats.bootstrap_seed}). A condition is the graph, "
        "architecture, scheduling, devices and fault settings; the 1-agent baseline is not "
        "pooled across architectures or schedulings, because a one-agent job runs a different "
        "coordination path under each. `pred` is the simulator's speedup for the same option; "
        "Amdahl is a prediction, the work/span bound min(n, W/S) the ceiling.",
        "",
        "| graph | p | architecture | scheduling | devices | faults | n | runs | makespan s | "
        "speedup [95% CI] | Amdahl | work/span | pred | idle | conflicts | tokens | messages |",
        "| --- | ---: | --- | --- | --- | --- |" + " ---: |" * 11,
    ]
    below = above_bound = beyond_interval = no_interval = total = 0
    predicted = _predicted_speedups(runs)
    for cell in stats.cells:
        cond = cell.condition
        if cell.n_agents > 1:
            total += 1
            below += cell.speedup < cell.amdahl
            above = cell.speedup > cell.work_span
            above_bound += above
            no_interval += above and cell.ci_low is None
            beyond_interval += cell.ci_low is not None and cell.ci_low > cell.work_span
        lines.append(
            f"| {cond.graph} | {cond.p:.2f} | {cond.team} | {cond.scheduling} | {cond.devices} "
            f"| {cond.faults} | {cell.n_agents} | {_runs(cell)} | {cell.mean_makespan_s:.1f} | "
            f"{_fmt_ci(cell)} | {cell.amdahl:.2f} | {cell.work_span:.2f} | "
            f"{_fmt(predicted.get((cond, cell.n_agents)))} | {cell.idle_fraction:.0%} | "
            f"{cell.conflicts:.1f} | {cell.tokens + cell.coordination_tokens:.0f} | "
            f"{cell.messages:.0f} |"
        )
    lines += [
        "",
        f"{below} of {total} team cells (n >= 2) fall below Amdahl's prediction; "
        f"{above_bound} lie above the work/span bound: {beyond_interval} with the whole "
        f"interval above it, {no_interval} with no interval (a single run on a side). The bound "
        "is on the work: a ratio of mean makespans exceeds it only by sampling noise or by "
        "overhead a larger team overlaps, such as a lone agent idling between subtasks while "
        "the next is dealt or claimed (mean idle of the 1-agent runs here: "
        f"{_mean_idle_alone(stats)}).",
    ]
    return lines


def _tests_section(stats: SweepStats) -> list[str]:
    lines = [
        "",
        "## Tests",
        "",
        "On per-run speedups (a run's makespan over its condition's pooled 1-agent mean) of "
        "teams of two or more; two-sided."
        + ("" if stats.scipy else " scipy is not installed: no statistics."),
        "",
        "| test | question | groups (runs, median speedup) | statistic | p-value |",
        "| --- | --- | --- | ---: | ---: |",
    ]
    for t in stats.tests:
        groups = ", ".join(
            f"{g} ({n}, {m:.2f})" for g, n, m in zip(t.groups, t.sizes, t.medians, strict=True)
        )
        stat = f"{t.statistic:.1f}" if t.statistic is not None else "-"
        p = f"{t.p_value:.3g}" if t.p_value is not None else (t.note or "-")
        lines.append(f"| {t.test} | {t.question} | {groups} | {stat} | {p} |")
    if not stats.tests:
        lines.append("| - | the sweep has no two groups to compare | - | - | - |")
    return lines


def _paper_section(stats: SweepStats, summary: list[str], paper: Sequence[SpeedupRow]) -> list[str]:
    lines = ["", "## Beside the paper", "", *summary]
    if not paper:
        return lines
    lines += [
        "",
        "Cell by cell: each measured team cell beside the paper's cells of the same n and p "
        "(and domain, for the paper's own graphs), over its three models; lmteams' "
        "centralized-preassigned and centralized-greedy are set beside the paper's pre-assigned "
        "mode, decentralized beside decentralized. The paper's teams ran in synchronous rounds "
        "on hosted models, so the `rounds` rows are the like-for-like ones.",
        "",
        "| graph | p | architecture | scheduling | faults | n | lmteams [95% CI] | "
        "paper mode | paper cells | paper mean (min-max) | Amdahl | work/span |",
        "| --- | ---: | --- | --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    matched = 0
    for cell in stats.cells:
        rows = paper_matches(cell, paper) if cell.n_agents > 1 else []
        if not rows:
            continue
        matched += 1
        cond = cell.condition
        values = [r.speedup for r in rows]
        lines.append(
            f"| {cond.graph} | {cond.p:.2f} | {cond.team} | {cond.scheduling} | {cond.faults} "
            f"| {cell.n_agents} | {_fmt_ci(cell)} | {rows[0].mode} | {len(rows)} | "
            f"{statistics.fmean(values):.2f} ({min(values):.2f}-{max(values):.2f}) | "
            f"{cell.amdahl:.2f} | {cell.work_span:.2f} |"
        )
    unmatched = sum(c.n_agents > 1 for c in stats.cells) - matched
    lines += [
        "",
        f"{matched} measured cells have paper cells beside them"
        + (f"; {unmatched} have none (a p the paper did not run, or n > 5)." if unmatched else "."),
    ]
    return lines


def _report(
    runs: Sequence[RunMetrics], stats: SweepStats, name: str, paper_data: str | Path | None
) -> str:
    seeds = sorted({r.seed for r in runs})
    failed = [r for r in runs if not r.succeeded]
    failures = (
        f" Failed runs (a subtask out of retries): {len(failed)}, left out of every "
        f"statistic, as the paper leaves out its failed runs; the first: {failed[0].error}"
        if failed
        else ""
    )
    lines = [
        f"# Study: {name}",
        "",
        f"{len(runs)} runs; run seeds {', '.join(map(str, seeds))}; "
        f"retry limit {max((r.max_failures for r in runs), default=0)} failed attempts per "
        "subtask. Every run is in `runs.csv` (columns: docs/runs-csv.md), every cell in "
        "`cells.csv`, the tests and the bootstrap seed in `stats.json`." + failures,
        "",
        *_measured_section(stats, runs),
        *_tests_section(stats),
        "",
        "## Figures",
        "",
        "![speedup](speedup.png)",
        "",
        "![cost, idle and conflicts](cost_idle_conflicts.png)",
    ]
    summary, paper = _paper_cells(paper_data)
    lines += _paper_section(stats, summary, paper)
    lines += [
        "",
        "Reading the two together: the paper's agents run in synchronous rounds on hosted "
        "models whose latency is heavy-tailed, and pre-assigned or claim their subtasks by "
        "LLM reasoning; here the coordination is mechanical unless the runs' `choose` says "
        "`model`, so the gap between a cell's speedup and its work/span bound is the cost of "
        "the barrier, of claims and of the bus more than of the model's planning.",
    ]
    return "\n".join(lines) + "\n"


def write_report(
    runs: Sequence[RunMetrics],
    out_dir: str | Path,
    *,
    name: str = "experiment",
    paper_data: str | Path | None = None,
    seed: int | None = None,
) -> list[Path]:
    """Write the runs, cells, statistics, figures and ``report.md`` into ``out_dir``.

    ``seed`` seeds the bootstrap; by default the sweep's own (its runs' lowest seed), so a
    report rewritten from the same runs has the same intervals."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seed = seed if seed is not None else min((r.seed for r in runs), default=0)
    stats = sweep_stats(runs, seed=seed)
    written = [
        _write_csv(out / "runs.csv", RUNS_CSV_COLUMNS, (_run_row(r) for r in runs)),
        _write_csv(out / "cells.csv", CELLS_CSV_COLUMNS, (_cell_row(c) for c in stats.cells)),
    ]
    for file, value in (("runs.json", list(runs)), ("stats.json", stats)):
        (out / file).write_bytes(msgspec.json.format(msgspec.json.encode(value)) + b"\n")
        written.append(out / file)
    written += write_figures(stats, out)
    report = out / "report.md"
    report.write_text(_report(runs, stats, name, paper_data), encoding="utf-8")
    return [*written, report]
