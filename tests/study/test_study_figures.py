"""The sweep's figures, checked for layout, not pixels: nine graphs, three fault settings.

A reader must not squint: no panel, legend or title overlaps another once drawn, every text
is at least 8 pt, each legend entry is there once, and team sizes are whole numbers.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
from matplotlib.text import Text
from study_sweeps import simulated_sweep

from lmteams.study import PaperData, paper_graphs, shipped_graph
from lmteams.study._figures import cost_figure, speedup_figure, write_figures
from lmteams.study._stats import SweepStats, sweep_stats

FAULTS = ((0.0, 0.0), (0.1, 0.05), (0.3, 0.0))
SIZES = (1, 2, 4)


@pytest.fixture(scope="module")
def nine_graphs(paper_dir: Path) -> SweepStats:
    graphs = list(paper_graphs(paper_dir).values())
    assert len(graphs) == 9
    runs = simulated_sweep(
        graphs,
        SIZES,
        repetitions=2,
        architectures=("centralized-greedy", "decentralized"),
        schedulings=("async", "rounds"),
        faults=FAULTS,
        sigma=0.3,
    )
    return sweep_stats(runs, resamples=100)


@pytest.fixture(scope="module")
def quick_like() -> SweepStats:
    """The shipped quick sweep's shape: three graphs, one fault setting, one column of cost."""
    graphs = [shipped_graph(g) for g in ("serial-p02", "mixed-p05", "parallel-p09")]
    runs = simulated_sweep(
        graphs,
        SIZES,
        repetitions=2,
        architectures=("centralized-greedy", "decentralized"),
        schedulings=("async", "rounds"),
    )
    return sweep_stats(runs, resamples=50)


def _overlap(a: Any, b: Any) -> float:
    """Area two display boxes share, in square pixels."""
    width = min(a.x1, b.x1) - max(a.x0, b.x0)
    height = min(a.y1, b.y1) - max(a.y0, b.y0)
    return max(0.0, width) * max(0.0, height)


def _check_layout(fig: Any) -> list[str]:
    """Draw, then: nothing overlaps, all inside the figure, all text >= 8 pt; the legend's
    labels (unique) are returned."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [("axes", ax.get_tightbbox(renderer)) for ax in fig.axes]
    (legend,) = fig.legends
    boxes.append(("legend", legend.get_window_extent(renderer)))
    boxes.append(("title", fig._suptitle.get_window_extent(renderer)))
    for (name_a, a), (name_b, b) in itertools.combinations(boxes, 2):
        assert _overlap(a, b) < 1.0, f"{name_a} {a} overlaps {name_b} {b}"
    frame = fig.bbox
    for name, box in boxes:
        assert frame.x0 - 1 <= box.x0 and box.x1 <= frame.x1 + 1, f"{name} leaves the figure"
        assert frame.y0 - 1 <= box.y0 and box.y1 <= frame.y1 + 1, f"{name} leaves the figure"
    texts = [t for t in fig.findobj(Text) if t.get_text() and t.get_visible()]
    assert min(t.get_fontsize() for t in texts) >= 8
    labels = [t.get_text() for t in legend.get_texts()]
    assert len(labels) == len(set(labels)), labels
    for ax in fig.axes:
        assert list(ax.get_xticks()) == list(SIZES)
        shown = [t.get_text() for t in ax.get_xticklabels() if t.get_visible() and t.get_text()]
        assert shown in ([], [str(n) for n in SIZES])  # inner rows share the bottom row's
    bottom = fig.axes[-1]
    assert [t.get_text() for t in bottom.get_xticklabels()] == [str(n) for n in SIZES]
    return labels


def test_speedup_figure_is_faceted_by_p_and_architecture_and_nothing_overlaps(
    nine_graphs: SweepStats,
) -> None:
    fig = speedup_figure(nine_graphs)
    labels = _check_layout(fig)
    graphs = sorted({c.condition.graph for c in nine_graphs.cells})
    faults = {c.condition.faults for c in nine_graphs.cells}
    assert faults == {"no faults", "stragglers 10% x3, crashes 5%", "stragglers 30% x3"}
    assert set(graphs) | faults <= set(labels)
    assert "Amdahl 1/((1-p)+p/n)" in labels and "work/span bound min(n, W/S)" in labels
    rows = fig.axes[0].get_gridspec().get_geometry()
    assert rows == (3, 4)  # p = 0.2, 0.5, 0.9 by (2 architectures x 2 schedulings)
    for ax in fig.axes:
        title = ax.get_title()
        p = title.rpartition("p = ")[2]
        mine = {c.condition.graph for c in nine_graphs.cells if f"{c.condition.p:.2f}" == p}
        assert len(mine) == 3  # each domain's graph of that p
        # a series per graph of this p and fault setting, each with its error bars
        assert len(ax.containers) == len(mine) * len(faults), title
    assert fig.axes[0].get_title() == "centralized-greedy, async, p = 0.20"


def test_cost_figure_stays_a_few_lines_per_panel_with_nine_graphs(
    nine_graphs: SweepStats,
) -> None:
    fig = cost_figure(nine_graphs)
    labels = _check_layout(fig)
    assert {"centralized-greedy", "decentralized", "async", "barrier (rounds)"} <= set(labels)
    assert fig.axes[0].get_gridspec().get_geometry() == (4, len(FAULTS))
    assert {ax.get_title() for ax in fig.axes if ax.get_title()} == {
        "no faults",
        "stragglers 10% x3, crashes 5%",
        "stragglers 30% x3",
    }
    assert all(len(ax.containers) == 4 for ax in fig.axes)  # architectures x schedulings
    assert [ax.get_ylabel() for ax in fig.axes[:: len(FAULTS)]] == [
        "tokens per subtask",
        "bus messages per subtask",
        "idle fraction per agent",
        "lost claims per subtask",
    ]


@pytest.mark.parametrize("draw", [speedup_figure, cost_figure])
def test_a_small_sweeps_figures_keep_the_title_clear_of_the_legend(
    quick_like: SweepStats, draw: Any
) -> None:
    labels = _check_layout(draw(quick_like))
    assert "no faults" in labels or "centralized-greedy" in labels


def test_write_figures_writes_both_pngs(tmp_path: Path, paper: PaperData) -> None:
    graphs = list(paper_graphs(paper.root).values())[:2]
    stats = sweep_stats(simulated_sweep(graphs, (2,), repetitions=2), resamples=50)
    written = write_figures(stats, tmp_path)
    assert [p.name for p in written] == ["speedup.png", "cost_idle_conflicts.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written)
    assert write_figures(sweep_stats([]), tmp_path / "none") == []
