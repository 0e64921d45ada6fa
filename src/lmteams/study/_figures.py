"""A sweep's figures, drawn from its cell statistics (:mod:`lmteams.study._stats`).

``speedup.png``: speedup against team size, one panel per parallel fraction p (rows) and
architecture (columns; one per scheduling of it, so a panel holds at most graphs x fault
settings series), each point a cell's ratio of mean makespans with its 95 % bootstrap
interval. Colour names the graph, marker the fault setting (and device mix); one legend
beside the grid names each of them once, with Amdahl's prediction and the work/span bound,
drawn on top of the data: the bound, not Amdahl, is the ceiling of a graph's speedup.

``cost_idle_conflicts.png``: per-subtask tokens and bus messages, idle fraction and lost
claims against team size, one column per fault setting. Graphs are folded into a mean with
the range across graphs as the bar, so nine graphs and several fault settings still leave
a handful of lines per panel; the per-graph values are in ``cells.csv``.

matplotlib is optional (``lmteams[study]``) and loaded on use, with the Agg backend.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast

from lmteams.study._stats import CellStat, SweepStats

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ("cost_figure", "speedup_figure", "write_figures")

_MARKERS: Final = ("o", "s", "^", "D", "v", "P", "X", "*")
_STYLES: Final = {"async": "-", "rounds": "--"}
_SCHEDULING: Final = {"async": "async", "rounds": "barrier (rounds)"}
_BOUND_STYLE: Final = {"color": "black", "linestyle": ":", "linewidth": 2.2, "zorder": 5}
_AMDAHL_STYLE: Final = {"color": "black", "linestyle": "--", "linewidth": 1.4, "zorder": 5}


def _pyplot() -> Any:
    import matplotlib  # noqa: PLC0415 - optional dependency (lmteams[study]), loaded on use

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 - after choosing the Agg backend

    return plt


def _p_label(p: float) -> str:
    return f"{p:.2f}"


def _variant(cell: CellStat, many_devices: bool) -> str:
    c = cell.condition
    return f"{c.faults}; {c.devices}" if many_devices else c.faults


def _handle(**style: Any) -> Any:
    from matplotlib.lines import Line2D  # noqa: PLC0415 - optional dependency

    return Line2D([], [], **style)


def _legend(fig: Figure, sections: Sequence[tuple[str, Sequence[tuple[str, Any]]]]) -> None:
    """One figure-level legend: a bold heading per section, then its entries, each once."""
    handles: list[Any] = []
    labels: list[str] = []
    headings: list[int] = []
    for heading, entries in sections:
        if not entries:
            continue
        headings.append(len(labels))
        handles.append(_handle(linestyle="none"))
        labels.append(heading)
        for label, handle in entries:
            handles.append(handle)
            labels.append(label)
    # tall enough for the legend, whatever the number of rows
    fig.set_figheight(max(fig.get_figheight(), 0.2 * len(labels) + 1.0))
    legend = fig.legend(handles, labels, loc="outside right upper", fontsize=9, frameon=False)
    for i in headings:
        legend.get_texts()[i].set_fontweight("bold")


def _errors(points: Sequence[tuple[float, float | None, float | None]]) -> list[list[float]]:
    """Error-bar lengths below and above each centre; none where there is no interval (and
    never negative: a mean of equal floats can land a hair outside their range)."""
    return [
        [max(0.0, c - low) if low is not None else 0.0 for c, low, _ in points],
        [max(0.0, high - c) if high is not None else 0.0 for c, _, high in points],
    ]


def _grid(plt: Any, rows: int, cols: int, *, row_height: float, **share: str) -> Any:
    """A grid of panels sharing team sizes, with room on the right for the legend."""
    return plt.subplots(
        rows,
        cols,
        figsize=(4.2 * cols + 3.6, row_height * rows + 0.8),
        squeeze=False,
        sharex=True,
        layout="constrained",
        **share,
    )


def _title(fig: Figure, first: str, second: str) -> None:
    """Two short lines at the top left, clear of the legend in the right margin."""
    fig.suptitle(f"{first}\n{second}", x=0.01, ha="left", fontsize=10.5)


def _int_ticks(ax: Any, sizes: Sequence[int]) -> None:
    ax.set_xticks(list(sizes))
    ax.set_xticklabels([str(n) for n in sizes])
    ax.set_xlim(min(sizes) - 0.4, max(sizes) + 0.4)


def speedup_figure(stats: SweepStats) -> Figure:
    """Speedup vs team size, faceted by p (rows) and architecture (columns)."""
    plt = _pyplot()
    cells = list(stats.cells)
    ps = sorted({_p_label(c.condition.p) for c in cells}, key=float)
    teams = sorted({(c.condition.team, c.condition.scheduling) for c in cells})
    graphs = sorted({c.condition.graph for c in cells})
    many_devices = len({c.condition.devices for c in cells}) > 1
    variants = sorted({_variant(c, many_devices) for c in cells})
    sizes = sorted({c.n_agents for c in cells})
    colours = plt.get_cmap("tab10" if len(graphs) <= 10 else "tab20")
    colour = {g: colours(i % colours.N) for i, g in enumerate(graphs)}
    marker = {v: _MARKERS[i % len(_MARKERS)] for i, v in enumerate(variants)}
    fig, axes = _grid(plt, len(ps), len(teams), row_height=3.1, sharey="row")
    series: dict[tuple[str, tuple[str, str], str, str], list[CellStat]] = defaultdict(list)
    for c in cells:
        cond = c.condition
        panel = (cond.team, cond.scheduling)
        series[(_p_label(cond.p), panel, cond.graph, _variant(c, many_devices))].append(c)
    # spread a panel's series a little along x so their intervals do not hide each other
    per_panel: dict[tuple[str, tuple[str, str]], list[tuple[str, str]]] = defaultdict(list)
    for p, team, graph, variant in sorted(series):
        per_panel[(p, team)].append((graph, variant))
    for row, p in enumerate(ps):
        for col, team in enumerate(teams):
            ax = axes[row][col]
            mine = per_panel.get((p, team), [])
            for i, (graph, variant) in enumerate(mine):
                run = sorted(series[(p, team, graph, variant)], key=lambda c: c.n_agents)
                shift = (i / (len(mine) - 1) - 0.5) * 0.36 if len(mine) > 1 else 0.0
                ax.errorbar(
                    [c.n_agents + shift for c in run],
                    [c.speedup for c in run],
                    yerr=_errors([(c.speedup, c.ci_low, c.ci_high) for c in run]),
                    color=colour[graph],
                    marker=marker[variant],
                    markersize=6,
                    capsize=2,
                    linewidth=1.2,
                    elinewidth=0.8,
                    alpha=0.9,
                )
            _bounds(ax, cells, p, team, sizes)
            _int_ticks(ax, sizes)
            ax.set_title(f"{team[0]}, {_SCHEDULING.get(team[1], team[1])}, p = {p}", fontsize=10)
            ax.grid(alpha=0.3)
            if col == 0:
                ax.set_ylabel("speedup over 1 agent")
            if row == len(ps) - 1:
                ax.set_xlabel("team size n")
    _legend(
        fig,
        [
            ("graph", [(g, _handle(color=colour[g], linewidth=2.5)) for g in graphs]),
            (
                "faults; devices" if many_devices else "faults",
                [(v, _handle(color="k", marker=marker[v], linestyle="none")) for v in variants],
            ),
            (
                "reference",
                [
                    ("Amdahl 1/((1-p)+p/n)", _handle(**_AMDAHL_STYLE)),
                    ("work/span bound min(n, W/S)", _handle(**_BOUND_STYLE)),
                ],
            ),
        ],
    )
    _title(
        fig,
        "Speedup = mean 1-agent makespan / mean n-agent makespan",
        f"bars: {stats.confidence:.0%} bootstrap interval (none where a side has one run)",
    )
    return cast("Figure", fig)


def _bounds(
    ax: Any, cells: Sequence[CellStat], p: str, team: tuple[str, str], sizes: Sequence[int]
) -> None:
    """Amdahl's curve for the row's p and each distinct work/span bound of its graphs."""
    mine = [
        c
        for c in cells
        if _p_label(c.condition.p) == p and (c.condition.team, c.condition.scheduling) == team
    ]
    if not mine:
        return
    # both are functions of a continuous n: drawn smooth, not as segments between team sizes
    grid = [min(sizes) + i * (max(sizes) - min(sizes)) / 100 for i in range(101)]
    p_value = mine[0].condition.p
    ax.plot(grid, [1.0 / ((1.0 - p_value) + p_value / n) for n in grid], **_AMDAHL_STYLE)
    ratios = set()
    for graph in sorted({c.condition.graph for c in mine}):
        # W/S is where a graph's bound min(n, W/S) stops growing with n
        capped = [
            c.work_span for c in mine if c.condition.graph == graph and c.work_span < c.n_agents
        ]
        ratios.add(round(min(capped), 6) if capped else float("inf"))
    for ratio in sorted(ratios):
        ax.plot(grid, [min(n, ratio) for n in grid], **_BOUND_STYLE)


_Metric = tuple[str, Callable[[CellStat], float]]
_COST_METRICS: Final[tuple[_Metric, ...]] = (
    ("tokens per subtask", lambda c: (c.tokens + c.coordination_tokens) / max(1, c.tasks)),
    ("bus messages per subtask", lambda c: c.messages / max(1, c.tasks)),
    ("idle fraction per agent", lambda c: c.idle_fraction),
    ("lost claims per subtask", lambda c: c.conflicts / max(1, c.tasks)),
)


def cost_figure(stats: SweepStats) -> Figure:
    """Tokens, messages, idle and conflicts vs team size; one column per fault setting."""
    plt = _pyplot()
    cells = list(stats.cells)
    many_devices = len({c.condition.devices for c in cells}) > 1
    variants = sorted({_variant(c, many_devices) for c in cells})
    teams = sorted({c.condition.team for c in cells})
    scheds = sorted({c.condition.scheduling for c in cells})
    sizes = sorted({c.n_agents for c in cells})
    colours = plt.get_cmap("tab10")
    colour = {t: colours(i % colours.N) for i, t in enumerate(teams)}
    n_graphs = len({c.condition.graph for c in cells})
    fig, axes = _grid(plt, len(_COST_METRICS), len(variants), row_height=2.6, sharey="row")
    lines = [(t, s) for t in teams for s in scheds]
    for col, variant in enumerate(variants):
        for row, (label, metric) in enumerate(_COST_METRICS):
            ax = axes[row][col]
            for i, (team, sched) in enumerate(lines):
                by_n: dict[int, list[float]] = defaultdict(list)
                for c in cells:
                    cond = c.condition
                    if (cond.team, cond.scheduling, _variant(c, many_devices)) == (
                        team,
                        sched,
                        variant,
                    ):
                        by_n[c.n_agents].append(metric(c))
                if not by_n:
                    continue
                ns = sorted(by_n)
                shift = (i / (len(lines) - 1) - 0.5) * 0.25 if len(lines) > 1 else 0.0
                mean = [statistics.fmean(by_n[n]) for n in ns]
                ax.errorbar(
                    [n + shift for n in ns],
                    mean,
                    yerr=_errors(
                        [(m, min(by_n[n]), max(by_n[n])) for m, n in zip(mean, ns, strict=True)]
                    ),
                    color=colour[team],
                    linestyle=_STYLES.get(sched, "-"),
                    marker="o",
                    markersize=4,
                    capsize=2.5,
                )
            _int_ticks(ax, sizes)
            ax.grid(alpha=0.3)
            ax.set_ylim(0, max(ax.get_ylim()[1] * 1.08, 1e-9))
            if row == 0:
                ax.set_title(variant, fontsize=10)
            if col == 0:
                ax.set_ylabel(label)
            if row == len(_COST_METRICS) - 1:
                ax.set_xlabel("team size n")
    _legend(
        fig,
        [
            ("architecture", [(t, _handle(color=colour[t], linewidth=2.5)) for t in teams]),
            (
                "scheduling",
                [
                    (_SCHEDULING.get(s, s), _handle(color="k", linestyle=_STYLES.get(s, "-")))
                    for s in scheds
                ],
            ),
        ],
    )
    _title(
        fig,
        f"Cost and coordination, mean over {n_graphs} graph(s)",
        "bars: the range across graphs",
    )
    return cast("Figure", fig)


def write_figures(stats: SweepStats, out: Path) -> list[Path]:
    """``speedup.png`` and ``cost_idle_conflicts.png`` in ``out``; nothing without cells."""
    if not stats.cells:
        return []
    plt = _pyplot()
    written = []
    for name, draw in (("speedup.png", speedup_figure), ("cost_idle_conflicts.png", cost_figure)):
        fig = draw(stats)
        written.append(out / name)
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written
