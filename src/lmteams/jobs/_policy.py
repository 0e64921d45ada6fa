"""What to run next, shared by the coordinator and by self-organizing agents.

Both architectures take ready subtasks longest-remaining-chain first (the list-scheduling
rule the planner's simulator models), and both pick a straggler for a backup copy by the
job's own measured durations, not by a device's advertised speed: a claim running far past
what committed subtasks of the same job took is the one whose backup can pay off.
"""

from __future__ import annotations

import functools
import statistics
import time

from lmteams.agents import MemberInfo, Membership
from lmteams.jobs._board import JobView
from lmteams.jobs._graph import TaskGraph
from lmteams.jobs._messages import SubtaskStatus

__all__ = (
    "POLL_S",
    "available_workers",
    "by_priority",
    "outputs_for",
    "remaining_chain",
    "straggler",
    "wake_in",
)

BACKUP_AFTER = 1.5
"""A claim running this many times the job's median committed duration may get a backup..."""

BACKUP_LATE_S = 0.05
"""... once it also overran that median by this many seconds: a copy of a subtask that is a
few milliseconds late costs more coordination (tens of milliseconds) than it can save."""


@functools.lru_cache(maxsize=256)
def remaining_chain(graph: TaskGraph) -> tuple[int, ...]:
    """Per subtask: work tokens along the heaviest chain from it to the end of the job."""
    index = {s.id: i for i, s in enumerate(graph.subtasks)}
    children: list[list[int]] = [[] for _ in graph.subtasks]
    for i, s in enumerate(graph.subtasks):
        for dep in set(s.deps):
            children[index[dep]].append(i)
    rest = [0] * len(graph.subtasks)
    for task_id in reversed(graph.topological_order()):
        i = index[task_id]
        tail = max((rest[c] for c in children[i]), default=0)
        rest[i] = graph.subtasks[i].work_tokens + tail
    return tuple(rest)


def by_priority(graph: TaskGraph, indices: list[int]) -> list[int]:
    """Longest remaining chain first, then written order."""
    rest = remaining_chain(graph)
    return sorted(indices, key=lambda i: (-rest[i], i))


POLL_S = 0.25
"""How long a job's driver waits for a change before it looks again (leases, stragglers)."""


def _late_after(view: JobView) -> float | None:
    """Seconds a claim may run before it counts as a straggler (None: nothing committed
    yet to measure by)."""
    durations = [s.ended_at - s.started_at for s in view.states if s.status is SubtaskStatus.DONE]
    if not durations:
        return None
    typical = max(statistics.median(durations), 1e-3)
    return max(BACKUP_AFTER * typical, typical + BACKUP_LATE_S)


def straggler(view: JobView) -> int | None:
    """The claimed subtask without a backup that has run longest past :func:`_late_after`."""
    after = _late_after(view)
    if after is None:
        return None
    now = time.time()
    late = [
        (now - s.claimed_at, s.index)
        for s in view.states
        if s.status is SubtaskStatus.CLAIMED and not s.backups and now - s.claimed_at > after
    ]
    return max(late)[1] if late else None


def wake_in(view: JobView | None) -> float:
    """How long a driver may wait for a change: :data:`POLL_S`, or less when a claim turns
    straggler sooner. Without it a backup would wait for the next poll, which at a study's
    time scales is longer than the subtasks themselves."""
    options = view.record.spec.options if view is not None else None
    if view is None or options is None or not options.backups or options.scheduling != "async":
        return POLL_S
    after = _late_after(view)
    if after is None:
        return POLL_S
    now = time.time()
    due = [
        s.claimed_at + after - now
        for s in view.states
        if s.status is SubtaskStatus.CLAIMED and not s.backups
    ]
    return min([POLL_S, *(d + 1e-3 for d in due if d > 0)])


def outputs_for(view: JobView, index: int) -> dict[str, str]:
    """The outputs of subtask ``index``'s dependencies, by id (all done when it is ready)."""
    graph = view.record.spec.graph
    ids = {s.id: i for i, s in enumerate(graph.subtasks)}
    return {d: view.states[ids[d]].output for d in graph.subtasks[index].deps}


def available_workers(membership: Membership) -> list[MemberInfo]:
    """Live, serving workers, the fastest (by advertised rate) first, then by name."""
    workers = [
        m
        for m in membership.members()
        if m.available and ("worker" in m.facts.roles or not m.facts.roles)
    ]
    return sorted(workers, key=lambda m: (-m.facts.tokens_per_s, m.name))
