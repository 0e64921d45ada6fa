"""The paper's pre-assignment: every subtask fixed to an agent before the run starts.

The paper's centralized harness dealt its task list out before any agent began, and each
agent then worked its own list in order. The job engine's ``placement = "preassigned"``
runs exactly this, and the planner's simulator models it, so both take it from here.
"""

from __future__ import annotations

from lmteams.errors import ConfigError
from lmteams.jobs._graph import TaskGraph

__all__ = ("agent_lists", "depth_first_indices", "depth_first_order", "paper_preassignment")


def paper_preassignment(graph: TaskGraph, n_agents: int) -> dict[str, int]:
    """The paper harness's assignment: chains stay on one agent, the rest go round-robin.

    Tasks are visited in depth-first dependency order (dependencies first, in written order);
    a task with dependencies goes to the agent of its *last listed* dependency, any other task
    to the next agent in turn. This is the rule of ``_pre_assign_tasks`` in the paper's code.
    """
    if n_agents < 1:
        raise ConfigError(f"n_agents must be >= 1, got {n_agents}")
    assignment: dict[str, int] = {}
    turn = 0
    for task_id in depth_first_order(graph):
        deps = graph.subtask(task_id).deps
        if deps:
            assignment[task_id] = assignment[deps[-1]]
        else:
            assignment[task_id] = turn % n_agents
            turn += 1
    return assignment


def depth_first_order(graph: TaskGraph) -> list[str]:
    """Subtask ids with every dependency before its dependents, in written order: the order
    the paper's harness deals tasks out and a pre-assigned agent works its list."""
    deps = {s.id: s.deps for s in graph.subtasks}
    order: list[str] = []
    seen: set[str] = set()
    for root in deps:
        stack: list[tuple[str, int]] = [(root, 0)]
        while stack:
            node, cursor = stack.pop()
            if cursor == 0:
                if node in seen:
                    continue
                seen.add(node)
            if cursor < len(deps[node]):
                stack.append((node, cursor + 1))
                if deps[node][cursor] not in seen:
                    stack.append((deps[node][cursor], 0))
            else:
                order.append(node)
    return order


def depth_first_indices(graph: TaskGraph) -> list[int]:
    """:func:`depth_first_order` as subtask indices."""
    index = {s.id: i for i, s in enumerate(graph.subtasks)}
    return [index[t] for t in depth_first_order(graph)]


def agent_lists(graph: TaskGraph, n_agents: int) -> list[list[int]]:
    """Per agent, the indices of its subtasks in the order it works them (depth-first)."""
    assignment = paper_preassignment(graph, n_agents)
    lists: list[list[int]] = [[] for _ in range(n_agents)]
    for i in depth_first_indices(graph):
        lists[assignment[graph.subtasks[i].id]].append(i)
    return lists
