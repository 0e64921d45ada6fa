"""Direct prompts from a coordinator: bounded, cancellable, and signed when they are votes.

A cancel may arrive while its prompt runs (the prompt's scope is cancelled) or before the
prompt is dequeued (it is remembered, a bounded number of them, and the prompt refused).
Cancels come on the agent's control subject, not its mailbox: the prompt they stop is what
keeps the mailbox busy.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import TYPE_CHECKING

import anyio
import msgspec

from lmteams.agents._messages import Answer, Cancel, Prompt, Stop
from lmteams.agents._results import facts, request_of
from lmteams.agents._tasks import generation_problem
from lmteams.bus import Codec, Incoming, Subscription
from lmteams.errors import AgentError, BusError
from lmteams.hardware import prompt_fit

if TYPE_CHECKING:
    from lmteams.agents._worker import WorkerAgent

__all__ = ("DirectPrompts",)

_CONTROL: Codec[Stop | Cancel] = Codec(Stop, Cancel)
_REMEMBERED_CANCELS = 1024  # cancels that arrived before their prompt; oldest forgotten first


class DirectPrompts:
    """The agent's ``Prompt`` handler and control subscription; it generates via the agent."""

    def __init__(self, agent: WorkerAgent) -> None:
        self._agent = agent
        self._running: dict[str, anyio.CancelScope] = {}
        self._early_cancels: OrderedDict[str, None] = OrderedDict()
        self._control: Subscription | None = None

    async def open(self) -> None:
        ctx = self._agent.context
        self._control = await ctx.bus.subscribe(
            ctx.subjects.control(ctx.actor_id), self._on_control, codec=_CONTROL
        )

    async def close(self) -> None:
        if self._control is not None:
            await self._control.unsubscribe()

    async def answer(self, msg: Prompt) -> Answer:
        """Run one prompt to its answer; a refusal or a cancel raises ``AgentError``."""
        agent = self._agent
        if msg.task_id in self._early_cancels:
            del self._early_cancels[msg.task_id]
            agent.cancelled += 1
            raise AgentError(f"prompt {msg.task_id} was cancelled by its sender before it ran")
        problem = generation_problem(
            msg, max_prompt_bytes=agent.config.max_prompt_bytes, what="prompt task id"
        )
        if problem:
            raise AgentError(f"prompt refused: {problem}")
        request = msgspec.structs.replace(request_of(msg), logprobs=msg.logprobs)
        assert agent.backend is not None
        fit = await prompt_fit(agent.backend, request)
        if fit.problem:
            raise AgentError(f"prompt refused: {fit.problem}")
        request = msgspec.structs.replace(request, max_tokens=fit.max_tokens)
        with anyio.CancelScope() as scope:
            self._running[msg.task_id] = scope
            try:
                completion = await agent._generate(request)
            finally:
                self._running.pop(msg.task_id, None)
        if scope.cancelled_caught:
            agent.cancelled += 1
            raise AgentError(f"prompt {msg.task_id} was cancelled by its sender")
        lp = completion.logprobs
        answer = Answer(
            task_id=msg.task_id,
            agent=agent.context.actor_id,
            text=completion.text,
            mean_logprob=sum(lp) / len(lp) if lp else None,
            round=msg.round,
            **facts(completion),
        )
        if msg.sign:
            answer = await agent._signed(answer)
        return answer

    async def sign(self, answer: Answer) -> Answer:
        """Sign a vote and broadcast it: a vote told differently to someone else shows up."""
        ctx, identity = self._agent.context, self._agent.identity
        signed = msgspec.structs.replace(
            answer,
            public_key=identity.public_key,
            signature=identity.sign_vote(answer.task_id, answer.round, answer.agent, answer.text),
        )
        with contextlib.suppress(BusError):
            await ctx.bus.publish(ctx.subjects.vote(answer.task_id), signed, sender=ctx.actor_id)
        return signed

    async def _on_control(self, incoming: Incoming[Stop | Cancel]) -> None:
        """Cancel a prompt now if it runs, or when it is dequeued; ``Stop`` is the daemon's."""
        match incoming.body:
            case Cancel(task_id=task_id):
                scope = self._running.get(task_id)
                self._agent.context.log.info("prompt.cancel", task_id=task_id, running=bool(scope))
                if scope is not None:
                    scope.cancel()
                    return
                self._early_cancels[task_id] = None
                while len(self._early_cancels) > _REMEMBERED_CANCELS:
                    self._early_cancels.popitem(last=False)
            case Stop():
                pass  # drain-and-leave belongs to whoever hosts the agent (the daemon)
