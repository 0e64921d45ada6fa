"""Everything the paper (arXiv 2603.12229) reports, recomputed from its released data.

:mod:`._speedup` recomputes the speedups; this module adds the rest of the paper's figures, so a
reader can check each against its released runs and events rather than take it on trust:
success rates, tokens and messages per team size, test failures, concurrent writes and
rewrites, idle rounds, the straggler gap, per-model latency fits, and the Kruskal-Wallis H per
mode and pooled. Each :class:`PaperFigure` carries the value computed here and, where summaries of
the paper state one, the quoted value, so a mismatch shows beside its number instead of hiding
in prose.

Definitions follow the paper's notebook (``analyze_experiments.ipynb``): messages are
``agent_reply`` events; a test failure is a ``run_tests`` event with return code 1-3; a rewrite
is an ``edit_file`` of a path the run already edited in an earlier round; an idle round has
replies but no ``complete_task``; the straggler gap of a round is its slowest timed reply minus
the mean of its timed replies (rounds with at least two), the latencies as
:func:`read_llm_calls` times them; latency fits use successful pre-assigned runs, as the
notebook's latency figure does. Costs (tokens, messages) are over successful runs, which is
what gives the 181k-to-581k decentralized growth; failure and conflict counts are over all
runs, since a run that failed is where conflicts are most likely to have happened.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Final

import msgspec

from lmteams.study._paper import (
    LlmCall,
    PaperData,
    PaperRun,
    _parquet_file,
    _read_columns,
    fit_lognormal,
)
from lmteams.study._speedup import SpeedupSummary, speedup_summary

__all__ = (
    "PaperFigure",
    "FindingsTable",
    "LatencyFit",
    "PaperFindings",
    "findings_definitions",
    "findings_markdown",
    "findings_tables",
    "paper_findings",
)

ALL: Final = "all"
"""The ``mode`` of a figure pooled over both modes."""
_MODES: Final = ("preassigned", "decentralized")
_FAILED_TESTS: Final = frozenset({1, 2, 3})
"""Return codes the notebook counts as a failed test run (pytest: failures, interrupted,
internal error); 4 and 5 are usage errors and no tests collected."""
_ISSUE: Final = "as cited for the paper in lmteams issue 16"
_SUMMARIES: Final = "summaries of the paper"

_DEFINITIONS: Final = {
    "success_rate": "share of runs marked successful in runs.parquet (all runs)",
    "tokens": "mean input + output tokens per successful run",
    "messages": "mean agent replies (agent_reply events) per successful run",
    "test_failures": "mean run_tests events with return code 1-3 per run (all runs)",
    "concurrent_writes": "mean concurrent_writes (runs.parquet) per run (all runs)",
    "rewrites": "mean edit_file of a path already edited in an earlier round, per run (all runs)",
    "idle_rounds": "mean rounds with replies but no complete_task, per run (all runs)",
    "straggler_gap_s": "mean over rounds with >= 2 timed replies of slowest minus mean "
    "reply latency, seconds (all runs)",
    "speedup_median": "median over successful team runs (n >= 2) of the cell's mean 1-agent "
    "wall-clock over the run's wall-clock",
    "speedup_mean": "mean of the same per-run speedups",
    "kruskal_h": "Kruskal-Wallis H of the per-run speedups across p (0.2, 0.5, 0.9)",
    "latency_fit": "lognormal MLE of reply latencies (round start to reply, 0-180 s) in "
    "successful pre-assigned runs; value = fitted median, seconds",
}
_QUOTES: Final[dict[tuple[str, str, int | None], tuple[float, str]]] = {
    ("tokens", "decentralized", 1): (181_000.0, _ISSUE),
    ("tokens", "decentralized", 5): (581_000.0, _ISSUE),
    ("speedup_median", "decentralized", None): (0.88, _SUMMARIES),
    ("speedup_median", "preassigned", None): (1.36, _SUMMARIES),
    ("speedup_mean", ALL, None): (2.19, f"{_SUMMARIES}; no grouping of the released runs gives it"),
    ("kruskal_h", "preassigned", None): (61.4, f"{_SUMMARIES}, across dependency types"),
}
_TEAM_METRICS: Final = (
    "success_rate",
    "tokens",
    "messages",
    "test_failures",
    "concurrent_writes",
    "rewrites",
    "idle_rounds",
    "straggler_gap_s",
)


class PaperFigure(msgspec.Struct, frozen=True, kw_only=True):
    """One number of the paper: computed here, and quoted where a summary of the paper has it."""

    metric: str
    mode: str
    """``preassigned``, ``decentralized`` or ``all`` (both pooled)."""
    n_agents: int | None
    """Team size, or ``None`` for all team sizes together."""
    value: float
    count: int
    """Runs (or rounds, for the straggler gap) the value is computed over."""
    quoted: float | None = None
    source: str
    """The definition, and where the quoted value comes from when there is one."""
    p_value: float | None = None


class LatencyFit(msgspec.Struct, frozen=True, kw_only=True):
    """One model's reply latencies: the lognormal fit and the empirical tail beside it."""

    model: str
    value: float
    """The fitted median, seconds."""
    quoted: float | None = None
    mu: float
    sigma: float
    calls: int
    mean_s: float
    p95_s: float
    """Empirical 95th percentile, seconds: where a lognormal understates the tail, this shows."""
    source: str


class PaperFindings(msgspec.Struct, frozen=True, kw_only=True):
    by_team_size: tuple[PaperFigure, ...]
    """Each of ``_TEAM_METRICS`` per mode, per team size and over all sizes (``n_agents`` None)."""
    statistics: tuple[PaperFigure, ...]
    """Speedup median and mean, Kruskal-Wallis H per mode and pooled (H needs scipy)."""
    latency: tuple[LatencyFit, ...]
    runs: int
    events: int
    """Events read (only the four types the counts need)."""


class FindingsTable(msgspec.Struct, frozen=True, kw_only=True):
    """A rendered table, shared by the CLI (rich) and reports (Markdown) so both print alike."""

    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


def _figure(
    metric: str,
    mode: str,
    n: int | None,
    value: float,
    count: int,
    *,
    p_value: float | None = None,
) -> PaperFigure:
    quoted, origin = _QUOTES.get((metric, mode, n), (None, None))
    source = _DEFINITIONS[metric] + (f"; quoted: {origin}" if origin else "")
    return PaperFigure(
        metric=metric,
        mode=mode,
        n_agents=n,
        value=value,
        count=count,
        quoted=quoted,
        source=source,
        p_value=p_value,
    )


class _EventCounts(msgspec.Struct, kw_only=True):
    """Per-run counts out of ``events.parquet``; runs without events count zero."""

    messages: Counter[str]
    test_failures: Counter[str]
    rewrites: Counter[str]
    idle_rounds: Counter[str]
    events: int


def _event_counts(data: PaperData) -> _EventCounts:
    ev = _read_columns(
        _parquet_file(data.root, "events.parquet"),
        ("type", "run_dir", "round", "path", "returncode"),
        filters=[("type", "in", ["agent_reply", "complete_task", "run_tests", "edit_file"])],
    )
    messages, failures = Counter[str](), Counter[str]()
    replied: set[tuple[str, float]] = set()
    completed: set[tuple[str, float]] = set()
    edits: list[tuple[str, str, float]] = []
    first_edit: dict[tuple[str, str], float] = {}
    for kind, run_dir, rnd, path, code in zip(
        ev["type"], ev["run_dir"], ev["round"], ev["path"], ev["returncode"], strict=True
    ):
        if kind == "agent_reply":
            messages[run_dir] += 1
            if rnd is not None:
                replied.add((run_dir, rnd))
        elif kind == "complete_task" and rnd is not None:
            completed.add((run_dir, rnd))
        elif kind == "run_tests" and code is not None and int(code) in _FAILED_TESTS:
            failures[run_dir] += 1
        elif kind == "edit_file" and path is not None and rnd is not None:
            edits.append((run_dir, path, rnd))
            key = (run_dir, path)
            first_edit[key] = min(rnd, first_edit.get(key, rnd))
    rewrites = Counter(run_dir for run_dir, path, rnd in edits if rnd > first_edit[run_dir, path])
    idle = Counter(run_dir for run_dir, rnd in replied - completed)
    return _EventCounts(
        messages=messages,
        test_failures=failures,
        rewrites=rewrites,
        idle_rounds=idle,
        events=len(ev["type"]),
    )


def _straggler_gaps(calls: Iterable[LlmCall]) -> dict[tuple[str, int], list[float]]:
    """Per (mode, team size): each round's slowest timed reply minus the round's mean."""
    rounds: dict[tuple[str, int], list[LlmCall]] = defaultdict(list)
    for call in calls:
        rounds[(call.run_dir, call.round)].append(call)
    gaps: dict[tuple[str, int], list[float]] = defaultdict(list)
    for mine in rounds.values():
        if len(mine) >= 2:
            latencies = [c.latency_s for c in mine]
            gaps[(mine[0].mode, mine[0].n_agents)].append(
                max(latencies) - statistics.fmean(latencies)
            )
    return gaps


def _per_team_size(
    metric: str,
    runs: Sequence[PaperRun],
    value: Callable[[PaperRun], float],
) -> list[PaperFigure]:
    figures = []
    for mode in _MODES:
        mine = [r for r in runs if r.mode == mode]
        for n in (*sorted({r.n_agents for r in mine}), None):
            group = [r for r in mine if n is None or r.n_agents == n]
            if group:
                figures.append(
                    _figure(metric, mode, n, statistics.fmean(map(value, group)), len(group))
                )
    return figures


def _gap_figures(gaps: Mapping[tuple[str, int], list[float]]) -> list[PaperFigure]:
    figures = []
    for mode in _MODES:
        sizes = sorted(n for m, n in gaps if m == mode)
        for n in (*sizes, None):
            pooled = [g for (m, k), v in gaps.items() if m == mode and n in (None, k) for g in v]
            if pooled:
                figures.append(
                    _figure("straggler_gap_s", mode, n, statistics.fmean(pooled), len(pooled))
                )
    return figures


def _statistics(summary: SpeedupSummary) -> list[PaperFigure]:
    figures = []
    scopes = [(ALL, summary.runs), *((m, summary.runs_by_mode[m]) for m in _MODES)]
    for mode, stats in scopes:
        if stats.count == 0:
            continue
        figures.append(_figure("speedup_median", mode, None, stats.median, stats.count))
        figures.append(_figure("speedup_mean", mode, None, stats.mean, stats.count))
        if stats.kruskal_h is not None:
            figures.append(
                _figure(
                    "kruskal_h", mode, None, stats.kruskal_h, stats.count, p_value=stats.kruskal_p
                )
            )
    return figures


def _latency_fits(calls: Iterable[LlmCall], runs: Iterable[PaperRun]) -> list[LatencyFit]:
    kept = {r.run_dir for r in runs if r.success and r.mode == "preassigned"}
    by_model: dict[str, list[float]] = defaultdict(list)
    for call in calls:
        if call.run_dir in kept:
            by_model[call.model].append(call.latency_s)
    fits = []
    for model, latencies in sorted(by_model.items()):
        if len(latencies) < 2:
            continue
        fit = fit_lognormal(latencies)
        fits.append(
            LatencyFit(
                model=model,
                value=fit.median_s,
                mu=fit.mu,
                sigma=fit.sigma,
                calls=fit.n,
                mean_s=fit.mean_s,
                p95_s=statistics.quantiles(latencies, n=20)[-1],
                source=_DEFINITIONS["latency_fit"],
            )
        )
    return fits


def paper_findings(data: PaperData, summary: SpeedupSummary | None = None) -> PaperFindings:
    """Every figure above from ``data``; pass ``summary`` when the caller already has it."""
    runs = data.runs
    counts = _event_counts(data)
    per_run: dict[str, Callable[[PaperRun], float]] = {
        "test_failures": lambda r: counts.test_failures[r.run_dir],
        "concurrent_writes": lambda r: r.concurrent_writes,
        "rewrites": lambda r: counts.rewrites[r.run_dir],
        "idle_rounds": lambda r: counts.idle_rounds[r.run_dir],
    }
    succeeded = [r for r in runs if r.success]
    by_team_size = [
        *_per_team_size("success_rate", runs, lambda r: float(r.success)),
        *_per_team_size("tokens", succeeded, lambda r: r.input_tokens + r.output_tokens),
        *_per_team_size("messages", succeeded, lambda r: counts.messages[r.run_dir]),
        *(f for metric, value in per_run.items() for f in _per_team_size(metric, runs, value)),
        *_gap_figures(_straggler_gaps(data.llm_calls)),
    ]
    return PaperFindings(
        by_team_size=tuple(by_team_size),
        statistics=tuple(_statistics(summary or speedup_summary(runs))),
        latency=tuple(_latency_fits(data.llm_calls, runs)),
        runs=len(runs),
        events=counts.events,
    )


def _fmt(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    if metric == "success_rate":
        return f"{value:.1%}"
    if metric == "tokens":
        return f"{value / 1000:.0f}k"
    return f"{value:.2f}" if metric.startswith(("speedup", "straggler")) else f"{value:.1f}"


def _cell(figure: PaperFigure | None) -> str:
    if figure is None:
        return "-"
    text = _fmt(figure.metric, figure.value)
    if figure.quoted is not None:
        text += f" (paper {_fmt(figure.metric, figure.quoted)})"
    return text


def findings_tables(findings: PaperFindings) -> tuple[FindingsTable, ...]:
    """The findings as three tables of strings: by team size, statistics, latency fits."""
    sizes = sorted({f.n_agents for f in findings.by_team_size if f.n_agents is not None})
    cells = {(f.metric, f.mode, f.n_agents): f for f in findings.by_team_size}
    team_rows = tuple(
        (metric, mode, *(_cell(cells.get((metric, mode, n))) for n in (*sizes, None)))
        for metric in _TEAM_METRICS
        for mode in _MODES
        if any(k[:2] == (metric, mode) for k in cells)
    )
    stat_rows = tuple(
        (
            f.metric,
            f.mode,
            _fmt(f.metric, f.value),
            _fmt(f.metric, f.quoted),
            "-" if f.p_value is None else f"{f.p_value:.2g}",
            str(f.count),
        )
        for f in findings.statistics
    )
    latency_rows = tuple(
        (
            fit.model,
            str(fit.calls),
            f"{fit.mu:.3f}",
            f"{fit.sigma:.3f}",
            f"{fit.value:.1f}",
            f"{fit.mean_s:.1f}",
            f"{fit.p95_s:.1f}",
        )
        for fit in findings.latency
    )
    return (
        FindingsTable(
            title="paper findings by team size (value, and the paper's where quoted)",
            columns=("figure", "mode", *(f"n={n}" for n in sizes), "all"),
            rows=team_rows,
        ),
        FindingsTable(
            title="paper statistics over team runs (n >= 2)",
            columns=("figure", "mode", "value", "paper", "p", "runs"),
            rows=stat_rows,
        ),
        FindingsTable(
            title="reply latency, lognormal fit per model (successful pre-assigned runs)",
            columns=("model", "calls", "mu", "sigma", "median s", "mean s", "p95 s"),
            rows=latency_rows,
        ),
    )


def findings_definitions() -> dict[str, str]:
    """What each figure's name means, for a legend under the tables."""
    return dict(_DEFINITIONS)


def findings_markdown(findings: PaperFindings) -> list[str]:
    """The findings as Markdown lines: the three tables and a legend of definitions."""
    lines = [
        "## The paper's figures recomputed from its data",
        "",
        f"From {findings.runs} runs and {findings.events} events of the paper's released data; "
        "`paper` is the value summaries of the paper quote, where one exists.",
    ]
    for table in findings_tables(findings):
        lines += ["", f"### {table.title}", ""]
        lines.append("| " + " | ".join(table.columns) + " |")
        lines.append("|" + "|".join(" --- " for _ in table.columns) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in table.rows]
    lines += ["", "Definitions:", ""]
    lines += [f"- `{name}`: {text}" for name, text in _DEFINITIONS.items()]
    return lines
