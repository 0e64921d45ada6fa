"""A worker as a task's coordinator: it runs the task's multi-agent strategy over the team."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from lmteams import tracing
from lmteams.agents._messages import Result, Task
from lmteams.agents._results import result_of
from lmteams.agents._strategy import get_strategy, registered_strategies
from lmteams.bus import Delivery

if TYPE_CHECKING:
    from lmteams.agents._worker import WorkerAgent

__all__ = ("coordinate",)


async def coordinate(agent: WorkerAgent, task: Task, delivery: Delivery, started: float) -> Result:
    """Run ``task.strategy`` with ``agent`` as coordinator; a strategy not loaded is an error."""
    ctx = agent.context
    strategy = get_strategy(task.strategy)
    if strategy is None:
        missing = (
            "backend",
            f"strategy {task.strategy!r} is not loaded on agent {ctx.actor_id} "
            f"(it has {', '.join(registered_strategies())}); start agents with the "
            "`lmteams` command or import lmteams.consensus",
        )
        return result_of(task, ctx.actor_id, delivery, started, error=missing)
    attributes = {"lmteams.team": ctx.subjects.team, "lmteams.agent": ctx.actor_id}
    attributes |= {"lmteams.task": task.id, "lmteams.strategy": task.strategy}
    with tracing.span(f"coordinate {task.strategy}", attributes=attributes) as traced:
        outcome = await strategy.run(agent.strategy_context(), task)
        traced.set({"lmteams.rounds": outcome.rounds, "lmteams.messages": outcome.messages})
    error = (outcome.error_kind, outcome.error)
    base = result_of(task, ctx.actor_id, delivery, started, error=error)
    return msgspec.structs.replace(
        base,
        ok=outcome.ok,
        answer=outcome.answer,
        error="" if outcome.ok else outcome.error,
        error_kind="" if outcome.ok else outcome.error_kind,
        tokens_in=sum(a.tokens_in for a in outcome.answers),
        tokens_out=sum(a.tokens_out for a in outcome.answers),
        answers=outcome.answers,
        rounds=outcome.rounds,
        messages=outcome.messages,
        tally=outcome.tally,
        flagged=outcome.flagged,
        device=agent.backend.device if agent.backend else "",
    )
