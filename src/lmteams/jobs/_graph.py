"""Task graphs: the subtasks a team splits a job into and the dependencies between them.

The paper's whole argument rests on two numbers of a graph, its size N and its critical path
CP (the longest dependency chain, counted in tasks), through ``p = (N - CP) / N``. Everything
else here (token-weighted span and work, levels, ready sets) is what a scheduler or a planner
needs to reason about the same graph in time rather than in task counts.

A :class:`TaskGraph` validates itself on construction and on decode, so code that holds one
never has to ask whether it is acyclic or whether every dependency exists, or whether a
prompt template names a dependency it does not have.

A graph is also a job's whole definition: its subtasks carry prompt templates (see
``_template``), token limits, an optional verification strategy and the roles that may take
them, and the graph carries how the job runs (:class:`JobOptions`, a ``[job]`` table in a
file) and, optionally, the one subtask whose output is the result.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping

import msgspec

from lmteams.errors import GraphError
from lmteams.jobs._options import JobOptions
from lmteams.jobs._template import check_templates

__all__ = ("DEFAULT_WORK_TOKENS", "Subtask", "TaskGraph")

DEFAULT_WORK_TOKENS = 300
"""Output tokens assumed for a subtask whose size nobody estimated (one small function)."""


class Subtask(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    """One unit of work that a single agent completes in one go.

    ``work_tokens`` estimates the output tokens the work takes, which is what makes a
    subtask's duration depend on the device that runs it. Every field after it has a
    default, so graph files written before jobs existed still load.
    """

    id: str
    title: str
    deps: tuple[str, ...] = ()
    work_tokens: int = DEFAULT_WORK_TOKENS
    prompt: str = ""
    """A sandboxed jinja2 template over ``task``, ``job``, ``deps`` and ``outputs``."""
    system: str = ""
    """The system prompt, plain text."""
    max_tokens: int = 0
    """Output limit of the model call; 0: ``work_tokens``."""
    strategy: str = ""
    """Empty: one agent answers; a consensus strategy (``vote``, ``quorum``, ``debate``)
    makes this a verification node that a team answers."""
    roles: tuple[str, ...] = ()
    """The agent roles that may take it; (): any worker."""

    @property
    def token_limit(self) -> int:
        """The ``max_tokens`` a model call for this subtask gets."""
        return self.max_tokens or self.work_tokens


class TaskGraph(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    """A named DAG of subtasks, kept in the order it was written (ties break by that order).

    Fields left at their defaults are not encoded (here and in :class:`Subtask`), so a graph
    on the bus or in a file carries only what its author set.
    """

    name: str
    description: str = ""
    subtasks: tuple[Subtask, ...]
    final: str = ""
    """The subtask whose output is the job's result; "": the outputs of the sinks."""
    job: JobOptions = JobOptions()

    def __post_init__(self) -> None:
        _validate(self)

    # --- sizes -------------------------------------------------------------------------------

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(s.id for s in self.subtasks)

    @property
    def sinks(self) -> tuple[str, ...]:
        """Subtasks nothing depends on, in written order: the result when ``final`` is ""."""
        needed = {d for s in self.subtasks for d in s.deps}
        return tuple(s.id for s in self.subtasks if s.id not in needed)

    @property
    def result_ids(self) -> tuple[str, ...]:
        """The subtasks whose outputs make the job's result."""
        return (self.final,) if self.final else self.sinks

    def subtask(self, task_id: str) -> Subtask:
        for s in self.subtasks:
            if s.id == task_id:
                return s
        raise GraphError(f"task graph {self.name!r} has no subtask {task_id!r}")

    @property
    def work(self) -> int:
        """Total tokens of work: one agent's time, up to its rate."""
        return sum(s.work_tokens for s in self.subtasks)

    @property
    def span(self) -> int:
        """Tokens along the heaviest dependency chain: no team finishes faster than this."""
        return sum(self.subtask(i).work_tokens for i in self.critical_path(weighted=True))

    @property
    def cp(self) -> int:
        """Critical path length in tasks, as the paper counts it."""
        return len(self.critical_path())

    @property
    def parallel_fraction(self) -> float:
        """The paper's ``p = (N - CP) / N``: the share of tasks off the critical path."""
        n = len(self.subtasks)
        return (n - self.cp) / n

    # --- structure ---------------------------------------------------------------------------

    def topological_order(self) -> tuple[str, ...]:
        """Dependencies first; among tasks ready together, the one written first goes first."""
        index = {s.id: i for i, s in enumerate(self.subtasks)}
        waiting = {s.id: len(set(s.deps)) for s in self.subtasks}
        dependents: dict[str, list[str]] = {s.id: [] for s in self.subtasks}
        for s in self.subtasks:
            for dep in set(s.deps):
                dependents[dep].append(s.id)
        heap = [index[i] for i, count in waiting.items() if count == 0]
        heapq.heapify(heap)
        order: list[str] = []
        while heap:
            task_id = self.subtasks[heapq.heappop(heap)].id
            order.append(task_id)
            for child in dependents[task_id]:
                waiting[child] -= 1
                if waiting[child] == 0:
                    heapq.heappush(heap, index[child])
        return tuple(order)

    def critical_path(self, *, weighted: bool = False) -> tuple[str, ...]:
        """Ids along the longest dependency chain, first task first.

        Counted in tasks by default (the paper's CP); ``weighted=True`` weighs each task by its
        ``work_tokens`` instead, which is the chain that bounds wall-clock time. Ties go to the
        chain that ends, and at each step continues, with the task written first.
        """
        index = {s.id: i for i, s in enumerate(self.subtasks)}
        length: dict[str, int] = {}
        previous: dict[str, str | None] = {}
        for task_id in self.topological_order():
            s = self.subtask(task_id)
            best: str | None = None
            for dep in sorted(set(s.deps), key=index.__getitem__):
                if best is None or length[dep] > length[best]:
                    best = dep
            own = s.work_tokens if weighted else 1
            length[task_id] = own + (length[best] if best is not None else 0)
            previous[task_id] = best
        end: str | None = None
        for s in self.subtasks:
            if end is None or length[s.id] > length[end]:
                end = s.id
        path: list[str] = []
        while end is not None:
            path.append(end)
            end = previous[end]
        return tuple(reversed(path))

    def measured_span(self, durations: Mapping[str, float]) -> float:
        """The heaviest dependency chain when each subtask takes ``durations[id]`` (absent:
        0): the critical path of a run, as :attr:`span` is of the token estimates."""
        finish: dict[str, float] = {}
        for task_id in self.topological_order():
            before = max((finish[d] for d in self.subtask(task_id).deps), default=0.0)
            finish[task_id] = durations.get(task_id, 0.0) + before
        return max(finish.values(), default=0.0)

    def levels(self) -> tuple[tuple[str, ...], ...]:
        """Tasks grouped by depth: level 0 has no dependencies, level k waits on level k-1.

        With unit tasks and enough agents, level k is exactly what runs in round k.
        """
        depth: dict[str, int] = {}
        for task_id in self.topological_order():
            deps = self.subtask(task_id).deps
            depth[task_id] = 1 + max((depth[d] for d in deps), default=-1)
        grouped: list[list[str]] = [[] for _ in range(max(depth.values()) + 1)]
        for s in self.subtasks:
            grouped[depth[s.id]].append(s.id)
        return tuple(tuple(level) for level in grouped)

    def ready(self, done: Iterable[str]) -> tuple[str, ...]:
        """Tasks not yet done whose dependencies all are, in written order."""
        finished = frozenset(done)
        unknown = finished - set(self.ids)
        if unknown:
            raise GraphError(
                f"task graph {self.name!r} has no subtask(s) {', '.join(sorted(unknown))} "
                "but they were reported done"
            )
        return tuple(
            s.id
            for s in self.subtasks
            if s.id not in finished and all(d in finished for d in s.deps)
        )


def _validate(graph: TaskGraph) -> None:
    """Raise :class:`GraphError` naming the first problem found, so a bad file is fixable."""
    if not graph.subtasks:
        raise GraphError(f"task graph {graph.name!r} has no subtasks")
    seen: dict[str, int] = {}
    for position, s in enumerate(graph.subtasks, start=1):
        if not s.id:
            raise GraphError(f"task graph {graph.name!r}: subtask #{position} has an empty id")
        if s.id in seen:
            raise GraphError(
                f"task graph {graph.name!r}: duplicate subtask id {s.id!r} "
                f"(subtasks #{seen[s.id]} and #{position})"
            )
        seen[s.id] = position
        if s.work_tokens <= 0:
            raise GraphError(
                f"task graph {graph.name!r}: subtask {s.id!r} has work_tokens={s.work_tokens}; "
                "work must be a positive number of tokens"
            )
        if s.max_tokens < 0:
            raise GraphError(
                f"task graph {graph.name!r}: subtask {s.id!r} has max_tokens={s.max_tokens}; "
                "use a positive limit, or 0 for work_tokens"
            )
    for s in graph.subtasks:
        for dep in s.deps:
            if dep not in seen:
                raise GraphError(
                    f"task graph {graph.name!r}: subtask {s.id!r} depends on unknown "
                    f"subtask {dep!r}"
                )
    cycle = _find_cycle(graph)
    if cycle:
        raise GraphError(
            f"task graph {graph.name!r} has a dependency cycle: {' -> '.join(cycle)} "
            "(each task depends on the next)"
        )
    if graph.final and graph.final not in seen:
        raise GraphError(f"task graph {graph.name!r}: final = {graph.final!r} is not a subtask id")
    check_templates(graph)


def _find_cycle(graph: TaskGraph) -> list[str]:
    """A cycle as a closed path ``[a, b, ..., a]`` or ``[]``; iterative, so long chains are fine."""
    deps = {s.id: s.deps for s in graph.subtasks}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = finished
    for root in deps:
        if root in state:
            continue
        path: list[str] = [root]
        cursors: list[int] = [0]
        state[root] = 1
        while path:
            node = path[-1]
            if cursors[-1] < len(deps[node]):
                nxt = deps[node][cursors[-1]]
                cursors[-1] += 1
                if state.get(nxt) == 1:
                    return [*path[path.index(nxt) :], nxt]
                if nxt not in state:
                    state[nxt] = 1
                    path.append(nxt)
                    cursors.append(0)
            else:
                state[node] = 2
                path.pop()
                cursors.pop()
    return []
