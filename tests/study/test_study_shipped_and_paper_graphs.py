"""The paper's nine task lists and the shipped graphs of the same shapes."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmteams.errors import GraphError
from lmteams.study import (
    SHIPPED_GRAPHS,
    chain_plus_free,
    load_paper_tasks,
    paper_graphs,
    shipped_graph,
    shipped_graphs,
    write_shipped_graphs,
)

# The paper data README: p02 = 16-chain + 4 free, p05 = 10 + 10, p09 = 2 + 18.
DOCUMENTED = {"p02": (16, 0.2), "p05": (10, 0.5), "p09": (2, 0.9)}


def test_nine_paper_graphs_have_the_documented_cp_and_p(paper_dir: Path) -> None:
    graphs = paper_graphs(paper_dir)
    assert sorted(graphs) == [
        f"{domain}/{level}"
        for domain in ("dataanalysis", "mathutilities20", "svgutils")
        for level in ("p02", "p05", "p09")
    ]
    for key, graph in graphs.items():
        cp, p = DOCUMENTED[key.split("/")[1]]
        assert graph.name == key
        assert len(graph.subtasks) == 20, key
        assert graph.cp == cp, key
        assert graph.parallel_fraction == pytest.approx(p), key
        free = [
            s
            for s in graph.subtasks
            if not s.deps and not any(s.id in o.deps for o in graph.subtasks)
        ]
        assert len(free) == 20 - cp, key


def test_paper_task_text_becomes_the_prompt(paper_dir: Path) -> None:
    graph = load_paper_tasks(paper_dir / "tasks" / "amdahl_mathutilities20" / "p02.json")
    first = graph.subtask("task-1")
    assert first.title
    assert "add" in first.prompt
    assert graph.subtask("task-7").deps == ("task-4", "task-6")  # extra edges are kept
    assert graph.description.startswith("Math Utils Library: ")


def test_missing_or_bad_paper_tasks(tmp_path: Path) -> None:
    with pytest.raises(GraphError, match="no paper task lists"):
        paper_graphs(tmp_path)
    bad = tmp_path / "p05.json"
    bad.write_text('{"project": "x", "tasks": [{"id": 1}]}')
    with pytest.raises(GraphError, match=r"invalid paper task list .*p05\.json"):
        load_paper_tasks(bad)


def test_shipped_graphs_are_what_the_generator_makes(tmp_path: Path) -> None:
    graphs = shipped_graphs()
    assert sorted(graphs) == sorted(SHIPPED_GRAPHS)
    for name, (chain, free) in SHIPPED_GRAPHS.items():
        assert graphs[name] == chain_plus_free(name, chain, free)
    package_dir = Path(__file__).parents[2] / "src" / "lmteams" / "study" / "graphs"
    for written in write_shipped_graphs(tmp_path):
        assert written.read_bytes() == (package_dir / written.name).read_bytes(), (
            f"{written.name} is stale: regenerate with write_shipped_graphs()"
        )


def test_shipped_shapes_match_the_paper(paper_dir: Path) -> None:
    paper = paper_graphs(paper_dir)
    for shipped, level in (("serial-p02", "p02"), ("mixed-p05", "p05"), ("parallel-p09", "p09")):
        graph = shipped_graph(shipped)
        reference = paper[f"mathutilities20/{level}"]
        assert (graph.cp, len(graph.subtasks)) == (reference.cp, len(reference.subtasks))
        assert graph.parallel_fraction == pytest.approx(reference.parallel_fraction)
    assert shipped_graph("fully-serial-20").parallel_fraction == 0.0
    assert shipped_graph("fully-parallel-20").cp == 1
    assert shipped_graph("fully-parallel-20").parallel_fraction == pytest.approx(0.95)


def test_unknown_shipped_graph_lists_the_known_ones() -> None:
    with pytest.raises(GraphError, match=r"no shipped task graph 'nope'.*serial-p02"):
        shipped_graph("nope")


def test_chain_plus_free_rejects_negative_sizes() -> None:
    with pytest.raises(GraphError, match="must be >= 0"):
        chain_plus_free("x", -1, 3)
