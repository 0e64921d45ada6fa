"""Choosing the agents that answer a task and asking them all at once."""

from __future__ import annotations

import random
from collections.abc import Callable

import anyio
import msgspec

from lmteams.agents import AgentAnswer, Answer, Outcome, Prompt, StrategyContext, Task, agent_seed
from lmteams.errors import LmteamsError

__all__ = (
    "available_agents",
    "choose_agents",
    "ask_all",
    "prompt_for",
    "as_agent_answer",
    "not_enough_agents",
)

DEFAULT_VOTE_TEMPERATURE = 0.7
"""Identical greedy answers make a vote pointless: voters sample unless the task says how."""


def available_agents(ctx: StrategyContext) -> list[str]:
    """The members that may be asked (live, not draining), this coordinator always among them:
    it pulled the task, so it answers it even while it drains."""
    names = {m.name for m in ctx.membership.members() if m.available}
    return sorted({*names, ctx.agent_id})


GATHER_S = 3.0
"""How long a coordinator waits for enough members to be known before it gives up: one that
has just started has heard of its peers only after their next announcement."""


async def choose_agents(ctx: StrategyContext, task: Task) -> list[str] | None:
    """``task.agents`` distinct available agents, this one first, the rest drawn by task id;
    ``None`` when the team has not that many within ``GATHER_S``."""
    available = available_agents(ctx)
    with anyio.move_on_after(min(GATHER_S, ctx.ask_timeout_s)):
        while len(available) < task.agents:
            await ctx.membership.wait_changed()
            available = available_agents(ctx)
    if len(available) < task.agents:
        return None
    others = [a for a in available if a != ctx.agent_id]
    return [ctx.agent_id, *random.Random(task.id).sample(others, task.agents - 1)]


def not_enough_agents(ctx: StrategyContext, task: Task) -> Outcome:
    count = len(available_agents(ctx))
    return Outcome(
        ok=False,
        error_kind="agents",
        error=f"task {task.id} asks for {task.agents} agents but {count} are available "
        "in the team (live and not draining)",
    )


def prompt_for(task: Task, agent: str, **changes: object) -> Prompt:
    base = Prompt(
        task_id=task.id,
        prompt=task.prompt,
        system=task.system,
        max_tokens=task.max_tokens,
        temperature=task.temperature or DEFAULT_VOTE_TEMPERATURE,
        seed=agent_seed(task.id, agent) if task.seed is None else task.seed + len(agent),
    )
    return msgspec.structs.replace(base, **changes) if changes else base


async def ask_all(
    ctx: StrategyContext, agents: list[str], make: Callable[[str], Prompt]
) -> dict[str, Answer | LmteamsError]:
    """Ask every agent concurrently; a failed or late agent shows as its error, not a crash."""
    replies: dict[str, Answer | LmteamsError] = {}

    async def one(agent: str) -> None:
        try:
            replies[agent] = await ctx.ask(agent, make(agent))
        except LmteamsError as err:
            replies[agent] = err

    async with anyio.create_task_group() as tg:
        for agent in agents:
            tg.start_soon(one, agent)
    return replies


def as_agent_answer(answer: Answer, *, normalized: str, weight: float = 1.0) -> AgentAnswer:
    return AgentAnswer(
        agent=answer.agent,
        text=answer.text,
        device=answer.device,
        model=answer.model,
        tokens_in=answer.tokens_in,
        tokens_out=answer.tokens_out,
        seconds=answer.prompt_s + answer.generation_s,
        round=answer.round,
        normalized=normalized,
        weight=weight,
        public_key=answer.public_key,
        signature=answer.signature,
    )
