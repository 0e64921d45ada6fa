"""Centralized team runs: a coordinator hands ready subtasks to agents over the bus.

The coordinator follows the same rules as the simulator (:func:`simulate_schedule`), so a
measured run and its prediction differ only by what the model leaves out (bus latency,
jitter, stragglers, failures):

- ``greedy``: ready subtasks go longest-remaining-chain first, each to the agent expected to
  finish it earliest (by :func:`lmteams.hardware.expected_finish` over the agents' rates),
  which may mean waiting for a faster busy agent rather than using a slow idle one;
- ``preassigned``: the paper's rule (:func:`paper_preassignment`), each agent working through
  its own list in dependency order.

Asynchronously, the next subtask starts the moment an agent is free; in rounds, each agent
takes at most one subtask and the next round waits for the slowest (the paper's barrier).
A failed subtask goes back to be retried, on the same agent when pre-assigned.
"""

from __future__ import annotations

import anyio

from lmteams.hardware import AgentLoad, expected_finish
from lmteams.study._graph import TaskGraph
from lmteams.study._metrics import Recorder
from lmteams.study._schedule import Policy, _depth_first_order, paper_preassignment

__all__ = ("run_centralized",)


def _priorities(graph: TaskGraph, fastest: float) -> dict[str, tuple[float, int]]:
    """Longest remaining chain (seconds at the fastest rate) first, then written order."""
    rest: dict[str, float] = {}
    for task_id in reversed(graph.topological_order()):
        children = (c for c in graph.subtasks if task_id in c.deps)
        tail = max((rest[c.id] for c in children), default=0.0)
        rest[task_id] = graph.subtask(task_id).work_tokens / fastest + tail
    return {s.id: (-rest[s.id], i) for i, s in enumerate(graph.subtasks)}


async def run_centralized(rec: Recorder, policy: Policy, *, barrier: bool) -> None:
    """Play the graph out on ``rec``'s agents; returns when every subtask is done."""
    graph, n = rec.graph, rec.n
    rates = [m.tokens_per_s for m in rec.members]
    priority = _priorities(graph, max(rates))
    assignment = paper_preassignment(graph, n) if policy == "preassigned" else {}
    order = _depth_first_order(graph)
    queues = [[t for t in order if assignment.get(t) == a] for a in range(n)]
    rec.start_clock()
    if barrier:
        await _rounds(rec, policy, rates, priority, queues)
    else:
        await _async(rec, policy, rates, priority, queues)


async def _rounds(
    rec: Recorder,
    policy: Policy,
    rates: list[float],
    priority: dict[str, tuple[float, int]],
    queues: list[list[str]],
) -> None:
    graph, n = rec.graph, rec.n
    done: set[str] = set()
    results: dict[int, tuple[str, bool]] = {}

    async def one(agent: int, task_id: str) -> None:
        results[agent] = (task_id, await rec.execute(agent, graph.subtask(task_id)))

    while len(done) < len(graph.subtasks):
        rec.rounds += 1
        taken: dict[int, str] = {}
        if policy == "preassigned":
            for agent, queue in enumerate(queues):
                if queue and all(d in done for d in graph.subtask(queue[0]).deps):
                    taken[agent] = queue[0]
        else:
            for task_id in sorted(graph.ready(done), key=priority.__getitem__):
                idle = [a for a in range(n) if a not in taken]
                if not idle:
                    break
                work = graph.subtask(task_id).work_tokens
                taken[min(idle, key=lambda a: (work / rates[a], a))] = task_id
        results.clear()
        with anyio.fail_after(rec.timeout_s):
            async with anyio.create_task_group() as tg:
                for agent, task_id in taken.items():
                    tg.start_soon(one, agent, task_id)
        for agent, (task_id, ok) in results.items():
            if ok:
                done.add(task_id)
                if policy == "preassigned":
                    queues[agent].pop(0)


async def _async(
    rec: Recorder,
    policy: Policy,
    rates: list[float],
    priority: dict[str, tuple[float, int]],
    queues: list[list[str]],
) -> None:
    graph, n, scale = rec.graph, rec.n, rec.team.time_scale
    done: set[str] = set()
    started: set[str] = set()
    busy: dict[int, float] = {}  # agent -> expected modelled time it frees up
    send, receive = anyio.create_memory_object_stream[tuple[int, str, bool]](n)

    async def one(agent: int, task_id: str) -> None:
        ok = await rec.execute(agent, graph.subtask(task_id))
        await send.send((agent, task_id, ok))

    def start(tg: anyio.abc.TaskGroup, agent: int, task_id: str, now: float) -> None:
        started.add(task_id)
        busy[agent] = now + graph.subtask(task_id).work_tokens / rates[agent]
        tg.start_soon(one, agent, task_id)

    async with send, receive, anyio.create_task_group() as tg:
        while len(done) < len(graph.subtasks):
            now = (anyio.current_time() - rec.started) / scale
            if policy == "preassigned":
                for agent, queue in enumerate(queues):
                    head = queue[0] if queue else None
                    if agent in busy or head is None or head in started:
                        continue
                    if all(d in done for d in graph.subtask(head).deps):
                        start(tg, agent, head, now)
            else:
                ready = [t for t in graph.ready(done) if t not in started]
                for task_id in sorted(ready, key=priority.__getitem__):
                    if len(busy) == n:
                        break
                    work = graph.subtask(task_id).work_tokens
                    loads = [
                        AgentLoad(
                            agent=str(a),
                            tokens_per_s=rates[a],
                            queued_tokens=max(0.0, busy.get(a, now) - now) * rates[a],
                        )
                        for a in range(n)
                    ]
                    agent = min(
                        range(n), key=lambda a: (expected_finish(loads[a], work), a in busy, a)
                    )
                    if agent not in busy:  # else a faster busy agent finishes it sooner
                        start(tg, agent, task_id, now)
            with anyio.fail_after(rec.timeout_s):
                agent, task_id, ok = await receive.receive()
            del busy[agent]
            if ok:
                done.add(task_id)
                if policy == "preassigned":
                    queues[agent].remove(task_id)
            else:
                started.discard(task_id)
