"""``lmteams study``: thin verbs over :mod:`lmteams.study`: graphs, paper data, predictions,
experiment sweeps."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, cast

import msgspec
import typer
from rich.table import Table

from lmteams.cli._common import err as _err
from lmteams.cli._common import fail
from lmteams.cli._common import out as _out
from lmteams.errors import ConfigError, LmteamsError
from lmteams.study import (
    DEFAULT_TOKENS_PER_S,
    PaperData,
    PaperFindings,
    Policy,
    RunMetrics,
    SpeedupRow,
    count_runs,
    example_config,
    findings_definitions,
    findings_tables,
    load_experiment,
    paper_data_dir,
    paper_findings,
    paper_graphs,
    paper_speedups,
    predict,
    resolve_graph,
    run_experiment,
    shipped_graphs,
    speedup_summary,
    write_report,
)

__all__ = ("study_app",)

study_app = typer.Typer(
    name="study",
    help="Task graphs, speedup predictions, and the paper's data (arXiv 2603.12229).",
    no_args_is_help=True,
)


JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
PaperDataOpt = Annotated[
    Path | None,
    typer.Option(
        "--paper-data",
        help="The paper's data directory (default: $LMTEAMS_PAPER_DATA, else the copy packaged "
        "with lmteams).",
    ),
]


_fail = fail


def _json(value: object) -> None:
    typer.echo(msgspec.json.format(msgspec.json.encode(value)).decode())


@study_app.command("graphs")
def graphs_cmd(paper_data: PaperDataOpt = None, json_out: JsonFlag = False) -> None:
    """List shipped and paper task graphs with N, CP, p, work and span."""
    found = dict(shipped_graphs())
    try:
        found.update(paper_graphs(paper_data_dir(paper_data)))
    except LmteamsError as exc:
        if paper_data is not None:
            raise _fail(exc) from exc
        _err.print(f"note: paper graphs left out: {exc}", highlight=False)
    rows = [
        {
            "name": name,
            "n": len(g.subtasks),
            "cp": g.cp,
            "p": g.parallel_fraction,
            "work_tokens": g.work,
            "span_tokens": g.span,
        }
        for name, g in found.items()
    ]
    if json_out:
        _json(rows)
        return
    table = Table(title="task graphs", title_justify="left")
    for column in ("name", "N", "CP", "p", "work tok", "span tok"):
        table.add_column(column, justify="left" if column == "name" else "right")
    for row in rows:
        table.add_row(
            str(row["name"]),
            str(row["n"]),
            str(row["cp"]),
            f"{row['p']:.2f}",
            str(row["work_tokens"]),
            str(row["span_tokens"]),
        )
    _out.print(table)


@study_app.command("paper")
def paper_cmd(
    paper_data: PaperDataOpt = None,
    json_out: JsonFlag = False,
    rows: Annotated[bool, typer.Option("--rows", help="Every cell, not the pivot.")] = False,
) -> None:
    """Recompute the paper's speedups and its other figures (success, cost, conflicts,
    stragglers, latency fits, Kruskal-Wallis per mode) from its runs and events."""
    try:
        data = PaperData(paper_data)
        runs = data.runs
        cells = paper_speedups(runs)
        summary = speedup_summary(runs)
        findings = paper_findings(data, summary)
    except LmteamsError as exc:
        raise _fail(exc) from exc
    if json_out:
        _json({"rows": cells, "summary": summary, "findings": findings})
        return
    table = Table(title="paper speedups (cells)", title_justify="left")
    if rows:
        for column in ("model", "domain", "p", "mode", "n", "runs", "speedup", "Amdahl"):
            table.add_column(column)
        for c in cells:
            table.add_row(
                c.model.partition("_")[2] or c.model, c.domain, c.p_label, c.mode,
                str(c.n_agents), str(c.runs),
                f"{c.speedup:.2f}", f"{c.amdahl:.2f}",
            )  # fmt: skip
    else:
        table.caption = "mean cell speedup / Amdahl's prediction, over models and domains"
        table.add_column("mode", no_wrap=True)
        table.add_column("p")
        sizes = sorted({c.n_agents for c in cells if c.n_agents > 1})
        for n in sizes:
            table.add_column(f"n={n}", justify="right", no_wrap=True)
        for mode in sorted({c.mode for c in cells}):
            for p_label in sorted({c.p_label for c in cells}):
                mine = [c for c in cells if c.mode == mode and c.p_label == p_label]
                table.add_row(mode, p_label, *(_mean_vs_amdahl(mine, n) for n in sizes))
    _out.print(table)
    for label, stats in (("cells", summary.cells), ("runs", summary.runs)):
        by_p = ", ".join(f"{g.key} {g.mean:.2f}" for g in stats.by_p)
        by_mode = ", ".join(f"{g.key} {g.mean:.2f} (median {g.median:.2f})" for g in stats.by_mode)
        _out.print(
            f"{label} n>=2: {stats.count}, mean {stats.mean:.2f}x, median {stats.median:.2f}x, "
            f"{stats.fraction_below_amdahl:.0%} below Amdahl; by p: {by_p}; by mode: {by_mode}",
            highlight=False,
        )
        if stats.wilcoxon_p is not None and stats.kruskal_h is not None:
            _out.print(
                f"  Wilcoxon below Amdahl p={stats.wilcoxon_p:.2g}; "
                f"Kruskal-Wallis across p H={stats.kruskal_h:.1f}",
                highlight=False,
            )
    if not summary.scipy:
        _out.print("(install scipy for the Wilcoxon and Kruskal-Wallis tests)", highlight=False)
    _print_findings(findings)


def _print_findings(findings: PaperFindings) -> None:
    for found in findings_tables(findings):
        table = Table(title=found.title, title_justify="left")
        for column in found.columns:
            named = column in ("figure", "mode", "model")
            table.add_column(column, justify="left" if named else "right", no_wrap=named)
        for row in found.rows:
            table.add_row(*row)
        _out.print(table)
    for name, text in findings_definitions().items():
        _out.print(f"{name}: {text}", highlight=False)


def _mean_vs_amdahl(cells: list[SpeedupRow], n: int) -> str:
    mine = [c for c in cells if c.n_agents == n]
    if not mine:
        return "-"
    mean = sum(c.speedup for c in mine) / len(mine)
    return f"{mean:.2f}/{mine[0].amdahl:.2f}"


def parse_team_sizes(spec: str) -> list[int]:
    """``"1..8"``, ``"1,2,4"`` or ``"3"`` as a list of team sizes."""
    sizes: list[int] = []
    for part in spec.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:\.\.\s*(\d+)\s*)?", part)
        if not match:
            raise ConfigError(f"--agents takes N, A..B or a comma list, not {spec!r}")
        low = int(match[1])
        high = int(match[2]) if match[2] else low
        if low < 1 or high < low:
            raise ConfigError(f"--agents range {part.strip()!r} must be 1 <= A <= B")
        sizes += range(low, high + 1)
    return sizes


@study_app.command("predict")
def predict_cmd(
    graph: Annotated[str, typer.Argument(help="File, shipped name, or paper key.")],
    *,
    agents: Annotated[str, typer.Option(help="Team sizes: N, A..B or a comma list.")] = "1..8",
    policy: Annotated[str, typer.Option(help="greedy | preassigned")] = "greedy",
    barrier: Annotated[bool, typer.Option("--barrier", help="Synchronous rounds.")] = False,
    tokens_per_s: Annotated[float, typer.Option(help="Every agent's rate.")] = DEFAULT_TOKENS_PER_S,
    overhead: Annotated[float, typer.Option(help="Seconds added to every task.")] = 0.0,
    paper_data: PaperDataOpt = None,
    json_out: JsonFlag = False,
) -> None:
    """Amdahl vs work/span vs a simulated schedule, for each team size."""
    try:
        task_graph = resolve_graph(graph, paper_data)
        rows = predict(
            task_graph,
            parse_team_sizes(agents),
            tokens_per_s=tokens_per_s,
            policy=cast(Policy, policy),  # simulate_schedule rejects anything else
            barrier=barrier,
            overhead_s=overhead,
        )
    except LmteamsError as exc:
        raise _fail(exc) from exc
    if json_out:
        _json(rows)
        return
    mode = f"{policy}{', barrier' if barrier else ''}"
    table = Table(
        title=f"{task_graph.name}: N={len(task_graph.subtasks)} CP={task_graph.cp} "
        f"p={task_graph.parallel_fraction:.2f} ({mode})",
        title_justify="left",
    )
    for column in ("agents", "Amdahl", "work/span", "simulated", "makespan s"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            str(row.n_agents),
            f"{row.amdahl:.2f}",
            f"{row.work_span:.2f}",
            f"{row.simulated:.2f}",
            f"{row.makespan_s:.1f}",
        )
    _out.print(table)


@study_app.command("run")
def run_cmd(
    config: Annotated[str, typer.Argument(help="Experiment TOML, or a shipped name (quick).")],
    *,
    out: Annotated[Path, typer.Option("--out", help="Directory for CSV, JSON, PNGs, report.")] = (
        Path("study-out")
    ),
    paper_data: PaperDataOpt = None,
) -> None:
    """Sweep team sizes x graphs x architectures on a real nats-server; write the results."""
    import anyio  # noqa: PLC0415 - keeps `lmteams --help` fast
    from rich.progress import Progress  # noqa: PLC0415

    try:
        path = Path(config)
        experiment = load_experiment(path if path.suffix else example_config(config))
        total = count_runs(experiment)
        with Progress(console=_err, transient=True) as bar:
            task = bar.add_task(f"study {experiment.name}", total=total)

            def advance(run: RunMetrics) -> None:
                bar.update(
                    task, advance=1, description=f"{run.graph} n={run.n_agents} {run.architecture}"
                )

            runs = anyio.run(lambda: run_experiment(experiment, on_run=advance))
        root = paper_data if paper_data is not None else experiment.paper_data
        written = write_report(runs, out, name=experiment.name, paper_data=root)
    except LmteamsError as exc:
        raise _fail(exc) from exc
    _out.print(f"{len(runs)} runs; wrote {', '.join(str(p) for p in written)}", highlight=False)
