"""One delivery from the team's queue, pulled to its one stored result.

The order of steps is the delivery guarantee: the result is published durably (deduplicated
by task id) *before* the task is acked, so a crash between the two means a redelivery whose
result is already stored; the redelivered copy is then acked without running the model again.
Every check that can refuse a delivery (tries spent, undecodable, bad id, already answered,
invalid or too long) runs before the model does.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING

import anyio
import msgspec
import structlog

from lmteams import tracing
from lmteams.agents._chunks import ChunkSink, streaming_to
from lmteams.agents._coordinate import coordinate
from lmteams.agents._messages import Progress, Result, Stage, Task
from lmteams.agents._refusals import Refusals
from lmteams.agents._results import TASKS, request_of, result_of
from lmteams.agents._runtime import unwrap_group
from lmteams.agents._tasks import salvage_task_id, task_problem
from lmteams.bus import Delivery, is_json, last_message, validate_token
from lmteams.errors import (
    BackendUnavailableError,
    BusError,
    ConfigError,
    DecodeError,
    HardwareError,
)
from lmteams.hardware import GenerateRequest, prompt_fit

if TYPE_CHECKING:
    from lmteams.agents._worker import WorkerAgent

__all__ = ("TaskPath",)


class TaskPath:
    """Pulls nothing itself: the agent's loop hands it each delivery it fetched."""

    def __init__(self, agent: WorkerAgent) -> None:
        self._agent = agent
        self.refusals = Refusals(agent)
        self._claimed: set[Delivery] = set()

    async def process(self, delivery: Delivery) -> None:
        """Handle one delivery. Whatever it carries, a failure fails this delivery alone.

        The actor's crash budget is for faults of the agent (its bus, its loop), never for
        what someone published: a try that raises is handed back with a delay, and the try
        numbered ``max_deliveries`` that fails ends the task (error result, dead letter).
        """
        try:
            await self._handle(delivery)
        except Exception as raised:  # any bug in one message's handling fails it alone
            await self.refusals.failed_try(delivery, unwrap_group(raised))

    async def _handle(self, delivery: Delivery) -> None:
        agent, refuse = self._agent, self.refusals
        ctx = agent.context
        json = is_json(delivery.headers)
        limit = agent.config.queue.max_deliveries
        agent.metrics.delivered(delivery.deliveries)
        if delivery.deliveries > limit:  # every earlier try ended unsettled: a crash or a hang
            await refuse.poison(delivery, f"no try settled it in {limit} deliveries")
            return
        try:
            task = ctx.bus.decode_raw(delivery.data, delivery.headers, TASKS)
        except DecodeError as err:
            reason = f"{err.field} {err.reason}".strip()
            task_id = salvage_task_id(delivery.data, json=json)
            await refuse.message(delivery, task_id, "decode", reason, json)
            return
        try:
            validate_token(task.id, "task id")
        except ConfigError as err:
            await refuse.message(delivery, "", "invalid", str(err), json)
            return
        with structlog.contextvars.bound_contextvars(task_id=task.id, agent_id=ctx.actor_id):
            if await last_message(
                ctx.bus, ctx.subjects.results_stream, ctx.subjects.results(task.id), direct=True
            ):
                await refuse.duplicate(delivery, task.id, json)
                return
            request = request_of(task)
            problem = task_problem(task, max_prompt_bytes=agent.config.max_prompt_bytes)
            kind = "invalid"
            if not problem:
                assert agent.backend is not None
                fit = await prompt_fit(agent.backend, request)
                problem, kind = fit.problem, "context"
                request = msgspec.structs.replace(request, max_tokens=fit.max_tokens)
            if problem:
                await refuse.task(delivery, task.id, kind, problem, json)
                return
            agent.in_flight += 1
            attributes: dict[str, tracing.AttributeValue] = {"lmteams.team": ctx.subjects.team}
            attributes["lmteams.agent"] = ctx.actor_id
            attributes |= {"lmteams.task": task.id, "lmteams.strategy": task.strategy}
            attributes |= {"messaging.system": "nats", "lmteams.deliveries": delivery.deliveries}
            traced = tracing.span(
                "process lmteams.task", kind="consumer", parent=delivery.headers,
                attributes=attributes,
            )  # fmt: skip
            try:
                with traced:
                    await self._answer(delivery, task, request, json)
            except anyio.get_cancelled_exc_class():
                if not delivery.settled:  # cancelled mid-task (drain timeout): hand it back
                    with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                        await delivery.nak()
                        await self._progress(task.id, Stage.HANDED_BACK)
                raise
            finally:
                agent.in_flight -= 1

    async def _answer(
        self, delivery: Delivery, task: Task, request: GenerateRequest, json: bool
    ) -> None:
        ctx = self._agent.context
        started = time.time()
        await self._progress(task.id, Stage.CLAIMED, f"delivery {delivery.deliveries}")
        ctx.log.info("task.started", deliveries=delivery.deliveries)
        self._claimed.add(delivery)
        try:
            result = await self._run(task, request, delivery, started)
        finally:
            self._claimed.discard(delivery)
        if not await self.refusals.store(delivery, result, json):
            return
        await delivery.ack()
        self._agent.served += 1
        self._agent.metrics.answered(result)
        await self._progress(task.id, Stage.DONE if result.ok else Stage.FAILED)
        ctx.log.info("task.done", ok=result.ok, tokens=result.tokens_out, seconds=result.total_s)

    async def _run(
        self, task: Task, request: GenerateRequest, delivery: Delivery, started: float
    ) -> Result:
        """The task's result; a backend failure or the task timeout is a result too.

        Except an unavailable backend (its server down or overloaded): the task is not at
        fault, so the try raises and is handed back, for a later try or another agent.
        """
        agent = self._agent
        me = agent.context.actor_id
        try:
            with anyio.fail_after(agent.config.task_timeout_s):
                if task.strategy != "single":
                    return await coordinate(agent, task, delivery, started)
                with streaming_to(self._sink(task, delivery)):
                    completion = await agent._generate(request)
                return result_of(task, me, delivery, started, completion=completion)
        except BackendUnavailableError:
            raise
        except (HardwareError, TimeoutError) as err:
            kind = "timeout" if isinstance(err, TimeoutError) else "backend"
            agent.context.log.warning("task.failed", kind=kind, error=str(err))
            return result_of(task, me, delivery, started, error=(kind, str(err) or kind))

    def _sink(self, task: Task, delivery: Delivery) -> ChunkSink | None:
        """Where a streamed task's chunks go; None (nothing published) unless it asked."""
        if not task.stream:
            return None
        ctx = self._agent.context
        return ChunkSink(
            ctx.bus,
            ctx.subjects.stream(task.id),
            task_id=task.id,
            agent=ctx.actor_id,
            delivery=delivery.deliveries,
        )

    async def keep_claims(self) -> None:
        """Tell JetStream the tasks being answered are still worked on, well within ``ack_wait``.

        One loop for the agent's life, not a task per task: a task that ends between two
        ticks costs nothing, and one that runs longer is extended at least every third of
        ``ack_wait``.
        """
        interval = max(0.1, self._agent.config.queue.ack_wait_s / 3)
        while True:
            await anyio.sleep(interval)
            for delivery in list(self._claimed):
                with contextlib.suppress(Exception):
                    await delivery.in_progress()

    async def _progress(self, task_id: str, stage: Stage, detail: str = "") -> None:
        ctx = self._agent.context
        progress = Progress(
            task_id=task_id, agent=ctx.actor_id, stage=stage, detail=detail, at=time.time()
        )
        with contextlib.suppress(BusError):
            await ctx.bus.publish(ctx.subjects.progress(task_id), progress, sender=ctx.actor_id)
