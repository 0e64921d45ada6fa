"""Pre-assigned placement's lists: dealt once, and kept whole when an agent leaves."""

from __future__ import annotations

import types
from typing import Any

import structlog
from hypothesis import given
from hypothesis import strategies as st

from lmteams.jobs._central import _Driver
from lmteams.jobs._graph import Subtask, TaskGraph
from lmteams.jobs._preassign import agent_lists, depth_first_indices


def _graph() -> TaskGraph:
    return TaskGraph(
        name="g",
        subtasks=(
            Subtask(id="a", title="a"),
            Subtask(id="b", title="b", deps=("a",)),
            Subtask(id="c", title="c"),
            Subtask(id="d", title="d"),
            Subtask(id="e", title="e", deps=("c", "d")),
            Subtask(id="f", title="f"),
        ),
    )


def _driver() -> Any:
    coordinator = types.SimpleNamespace(_log=structlog.get_logger())
    return _Driver(coordinator, "job-1")  # type: ignore[arg-type]


@given(st.integers(min_value=1, max_value=8))
def test_the_lists_hold_every_subtask_once_in_depth_first_order(n: int) -> None:
    graph = _graph()
    lists = agent_lists(graph, n)
    order = depth_first_indices(graph)
    assert sorted(i for q in lists for i in q) == list(range(len(graph.subtasks)))
    for queue in lists:
        assert queue == sorted(queue, key=order.index)


def test_a_departed_agents_list_goes_to_a_spare_member_whole() -> None:
    graph, driver = _graph(), _driver()
    first = driver._own_lists(graph, ["x", "y"])
    dealt = {a: list(q) for a, q in first.items()}
    moved = driver._own_lists(graph, ["x", "z"])  # y left, z joined
    assert moved == {"x": dealt["x"], "z": dealt["y"]}


def test_without_a_spare_the_list_merges_into_the_shortest_in_order() -> None:
    graph, driver = _graph(), _driver()
    dealt = {a: list(q) for a, q in driver._own_lists(graph, ["x", "y", "w"]).items()}
    merged = driver._own_lists(graph, ["x", "w"])  # y left, nobody joined
    target = min(("x", "w"), key=lambda a: (len(dealt[a]), a))
    order = depth_first_indices(graph)
    assert set(merged) == {"x", "w"}
    assert sorted(merged[target]) == sorted(dealt[target] + dealt["y"])
    assert merged[target] == sorted(merged[target], key=order.index)
    assert sorted(i for q in merged.values() for i in q) == list(range(len(graph.subtasks)))
