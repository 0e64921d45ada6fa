"""One agent's attempt at one subtask: a model call, or a strategy run as coordinator.

A subtask with a ``strategy`` (``vote``, ``quorum``, ``debate``, ...) is a verification node:
the agent that holds it coordinates the strategy over the team, as it would for a task.
Whatever happens, an attempt ends in an :class:`AttemptOutcome` (failures included); only
cancellation (a withdrawn claim) escapes it.
"""

from __future__ import annotations

import time

import anyio
import msgspec

from lmteams.agents import Task, WorkerAgent, get_strategy, new_task
from lmteams.errors import LmteamsError
from lmteams.hardware import GenerateRequest
from lmteams.jobs._board import Commit, JobBoard
from lmteams.jobs._ledger import Ledger

__all__ = ("AttemptOutcome", "run_attempt", "settle")


class AttemptOutcome(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    output: str = ""
    error: str = ""
    tokens_in: int = 0
    tokens_out: int = 0
    started_at: float
    ended_at: float


async def run_attempt(
    agent: WorkerAgent,
    *,
    prompt: str,
    system: str,
    max_tokens: int,
    strategy: str,
    timeout_s: float,
    label: str,
) -> AttemptOutcome:
    """Answer ``prompt`` on ``agent`` (within ``timeout_s``); ``label`` names it in strategies."""
    started = time.time()
    try:
        with anyio.fail_after(timeout_s):
            if strategy and strategy != "single":
                task = new_task(
                    prompt, task_id=label, system=system, max_tokens=max_tokens, strategy=strategy
                )
                return await _verify(agent, task, started)
            completion = await agent.complete(
                GenerateRequest(prompt=prompt, system=system or None, max_tokens=max_tokens)
            )
    except (LmteamsError, TimeoutError) as err:
        error = f"timed out after {timeout_s:g}s" if isinstance(err, TimeoutError) else str(err)
        return AttemptOutcome(ok=False, error=error, started_at=started, ended_at=time.time())
    return AttemptOutcome(
        ok=True,
        output=completion.text,
        tokens_in=completion.tokens_in,
        tokens_out=completion.tokens_out,
        started_at=started,
        ended_at=time.time(),
    )


async def _verify(agent: WorkerAgent, task: Task, started: float) -> AttemptOutcome:
    found = get_strategy(task.strategy)
    if found is None:
        error = f"strategy {task.strategy!r} is not loaded on agent {agent.context.actor_id}"
        return AttemptOutcome(ok=False, error=error, started_at=started, ended_at=time.time())
    outcome = await found.run(agent.strategy_context(), task)
    return AttemptOutcome(
        ok=outcome.ok,
        output=outcome.answer,
        error="" if outcome.ok else outcome.error,
        tokens_in=sum(a.tokens_in for a in outcome.answers),
        tokens_out=sum(a.tokens_out for a in outcome.answers),
        started_at=started,
        ended_at=time.time(),
    )


async def settle(
    board: JobBoard,
    ledger: Ledger,
    outcome: AttemptOutcome,
    *,
    job_id: str,
    index: int,
    claim_rev: int,
    agent: str,
    prompt: str,
) -> Commit:
    """Commit ``outcome`` under its claim (or fail the attempt), and count into ``ledger`` a
    copy the board refused: the one path the coordinator's reports and a self-organizing
    agent's own attempts take to the board."""
    if outcome.ok:
        result = await board.commit(
            job_id,
            index,
            claim_rev,
            agent,
            output=outcome.output,
            prompt=prompt,
            tokens_in=outcome.tokens_in,
            tokens_out=outcome.tokens_out,
            started_at=outcome.started_at,
            ended_at=outcome.ended_at,
        )
    else:
        result = await board.fail(job_id, index, claim_rev, agent, outcome.error)
    wasted = outcome.ended_at - outcome.started_at
    if result is Commit.FENCED:
        await ledger.add(job_id, fenced=1, wasted_s=wasted)
    elif result is Commit.LOST:
        await ledger.add(job_id, backups_lost=1, wasted_s=wasted)
    return result
