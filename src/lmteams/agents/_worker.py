"""The worker agent: pulls the team's tasks, answers them with its backend, one result each.

This module is the agent's life cycle and wiring; each concern is its own piece, found by
name: ``_taskpath`` (one queued delivery to its one stored result), ``_refusals`` (dead
letters, duplicates, poison, the write-once result), ``_coordinate`` (running a strategy as
coordinator), ``_prompts`` (direct prompts, cancels, vote signing) and ``_presence`` (the
membership publisher: join, facts every heartbeat, leave, pong). Who else is in the team,
and with which key, is the runtime's membership (``context.membership``).
"""

from __future__ import annotations

import contextlib

import anyio
import msgspec

from lmteams.agents._actor import Actor, handler
from lmteams.agents._genai import traced_generate
from lmteams.agents._identity import AgentIdentity
from lmteams.agents._messages import Answer, Ping, Pong, Prompt
from lmteams.agents._metrics import AgentMeter
from lmteams.agents._presence import Presence
from lmteams.agents._prompts import DirectPrompts
from lmteams.agents._strategy import StrategyContext
from lmteams.agents._taskpath import TaskPath
from lmteams.agents._tasks import MAX_PROMPT_BYTES
from lmteams.bus import (
    StreamSettings,
    WorkQueue,
    WorkQueueSettings,
    ensure_team_streams,
    open_work_queue,
)
from lmteams.errors import AgentError
from lmteams.hardware import (
    Backend,
    BackendConfig,
    Completion,
    GenerateRequest,
    advertised_rates,
    open_backend,
    prompt_fit,
)

__all__ = ("WorkerConfig", "WorkerAgent")


class WorkerConfig(msgspec.Struct, frozen=True, kw_only=True):
    """How one worker agent runs. Defaults suit a daemon; tests shorten the clocks."""

    backend: BackendConfig = BackendConfig()
    queue: WorkQueueSettings = WorkQueueSettings()
    streams: StreamSettings = StreamSettings()
    heartbeat_s: float = 2.0
    fetch_timeout_s: float = 1.0
    task_timeout_s: float = 600.0
    max_prompt_bytes: int = MAX_PROMPT_BYTES
    """Longer prompts (with the system prompt, UTF-8) are refused before any tokenizing."""


class WorkerAgent(Actor):
    """Serves tasks from the team's queue and direct ``Prompt`` requests from coordinators.

    Subclasses may override ``open_backend`` (plant a backend), ``_generate`` (every call
    to the model, queued or direct) and ``_signed`` (how a vote is signed and broadcast).
    """

    mailbox_size = 16

    def __init__(self, config: WorkerConfig | None = None) -> None:
        self.config = config or WorkerConfig()
        self.backend: Backend | None = None
        self._stack = contextlib.AsyncExitStack()
        self._queue: WorkQueue | None = None
        self._draining = False
        self.served = 0
        self.in_flight = 0
        self.duplicates = 0
        self.cancelled = 0
        self.refused = 0  # messages and tasks refused with a dead letter (duplicates apart)
        self.failures = 0  # tries that raised (each handed back, or ended at the last try)
        self.poisoned = 0  # tasks ended after max_deliveries tries
        self.tokens_per_s = 0.0
        self.prompt_tokens_per_s = 0.0
        self._tasks = TaskPath(self)
        self._direct = DirectPrompts(self)
        self._presence = Presence(self)

    @property
    def identity(self) -> AgentIdentity:
        """The key this agent signs votes with: its cell's, the same across restarts."""
        return self.context.identity

    # --- life cycle ------------------------------------------------------------------------
    def open_backend(self) -> contextlib.AbstractAsyncContextManager[Backend]:
        """The backend this agent answers with; override to plant a custom one (tests, studies)."""
        return open_backend(self.config.backend)

    async def on_start(self) -> None:
        ctx = self.context
        ctx.runtime.metrics.agent(ctx.actor_id)  # its series are scraped, at 0, from the start
        self.backend = await self._stack.enter_async_context(self.open_backend())
        # the operator made them on a secured bus; a member only finds them (STREAM.INFO)
        await ensure_team_streams(ctx.bus, ctx.subjects, self.config.streams, update=False)
        self._queue = await open_work_queue(ctx.bus, ctx.subjects, self.config.queue)
        await self._direct.open()
        self.tokens_per_s, self.prompt_tokens_per_s = advertised_rates(
            self.backend, self.config.backend
        )

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._heartbeats)
            tg.start_soon(self._tasks.keep_claims)
            for service in self.context.worker_services:
                tg.start_soon(service, self)
            while not self._draining:
                assert self._queue is not None
                delivery = await self._queue.fetch(timeout=self.config.fetch_timeout_s)
                if delivery is not None:
                    await self._tasks.process(delivery)
            tg.cancel_scope.cancel()

    async def on_drain(self) -> None:
        self._draining = True
        self._presence.update()  # placement and strategies stop choosing it now
        self.context.log.info("agent.draining", in_flight=self.in_flight)

    async def on_stop(self) -> None:
        await self._direct.close()
        await self._presence.leave()
        if self._queue is not None:
            await self._queue.close()
        await self._stack.aclose()
        self.context.log.info("agent.left", served=self.served)

    async def _heartbeats(self) -> None:
        """Join the team, then keep its view of this agent's facts fresh.

        Not in ``on_start``: the actor's mailbox opens after it, and a member the view shows
        is one a dispatcher or a coordinator may ask at once (it would be told "stopping").
        """
        await self._presence.serve()

    # --- direct requests -------------------------------------------------------------------
    @handler
    async def on_prompt(self, msg: Prompt) -> Answer:
        return await self._direct.answer(msg)

    @handler
    async def on_ping(self, msg: Ping) -> Pong:
        return self._presence.pong()

    @property
    def metrics(self) -> AgentMeter:
        """This agent's Prometheus counters: its cell's, so they survive a restart."""
        return self.context.runtime.metrics.agent(self.context.actor_id)

    # --- for worker services ---------------------------------------------------------------
    @property
    def draining(self) -> bool:
        """True once the agent was told to stop: services finish what they hold, take nothing."""
        return self._draining

    def strategy_context(self) -> StrategyContext:
        """What a strategy needs to run with this agent as its coordinator."""
        ctx = self.context
        return StrategyContext(
            bus=ctx.bus,
            subjects=ctx.subjects,
            agent_id=ctx.actor_id,
            membership=ctx.membership,
            identity=self.identity,
            ask_timeout_s=self.config.task_timeout_s,
        )

    async def complete(self, request: GenerateRequest) -> Completion:
        """One model call on this agent's backend, fitted to its context, counted as in flight.

        Raises ``AgentError`` for a prompt that cannot fit; backend errors propagate.
        """
        assert self.backend is not None
        fit = await prompt_fit(self.backend, request)
        if fit.problem:
            raise AgentError(f"prompt refused: {fit.problem}")
        self.in_flight += 1
        try:
            return await self._generate(msgspec.structs.replace(request, max_tokens=fit.max_tokens))
        finally:
            self.in_flight -= 1

    # --- hooks -----------------------------------------------------------------------------
    async def _signed(self, answer: Answer) -> Answer:
        """Sign a vote and broadcast it: a vote told differently to someone else shows up."""
        return await self._direct.sign(answer)

    async def _generate(self, request: GenerateRequest) -> Completion:
        assert self.backend is not None
        completion = await traced_generate(self.backend, request, self.context.actor_id)
        self.metrics.generated(completion)
        return completion
