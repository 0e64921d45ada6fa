"""How a delivery ends when the model does not answer it, and the one write they all share.

A refused message, a task that cannot succeed, an id already answered, a try that raised, a
task that keeps failing: each is counted, logged, dead-lettered and told to the submitter's
inbox, and a task's result is written once (a stored result is never replaced).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from lmteams.agents._messages import Result
from lmteams.agents._results import TASKS, refusal
from lmteams.agents._runtime import dead_letter, reply_address
from lmteams.bus import Delivery, is_json, publish_durable, validate_token
from lmteams.errors import BusError, ConfigError, DecodeError, RevisionMismatchError

if TYPE_CHECKING:
    from lmteams.agents._worker import WorkerAgent

__all__ = ("Refusals",)


class Refusals:
    """The worker's endings besides an answer; counts go to the agent's counters."""

    def __init__(self, agent: WorkerAgent) -> None:
        self._agent = agent

    async def store(self, delivery: Delivery, result: Result, json: bool) -> bool:
        """Publish the task's one result; False when one was stored first (then it stays).

        Written once (``once=True``): neither a redelivery nor a later message with the same
        id can replace a stored result, inside the dedupe window or after it.
        """
        ctx = self._agent.context
        try:
            await publish_durable(
                ctx.bus,
                ctx.subjects.results(result.task_id),
                result,
                msg_id=f"result-{result.task_id}",
                sender=ctx.actor_id,
                json=json,
                once=True,
            )
        except RevisionMismatchError:
            self._agent.duplicates += 1
            ctx.log.info("task.already_answered", deliveries=delivery.deliveries, kept="stored")
            await delivery.ack()
            return False
        return True

    async def duplicate(self, delivery: Delivery, task_id: str, json: bool) -> None:
        """An answered id: ack without running the model; a second message is also reported.

        A redelivery (delivery 2 and up) is our own task whose ack was lost: nothing to say.
        A first delivery is another message with an answered id, refused as a duplicate.
        """
        self._agent.duplicates += 1
        self._agent.context.log.info("task.already_answered", deliveries=delivery.deliveries)
        if delivery.deliveries == 1:
            reason = f"task {task_id} is already answered; its stored result is kept"
            await self._report(delivery, task_id, "duplicate", reason, json)
        await delivery.ack()

    async def message(
        self, delivery: Delivery, task_id: str, kind: str, reason: str, json: bool
    ) -> None:
        """A message that never became a task: dead letter and the submitter's inbox only.

        Never a results subject: an undecodable body or a bad id names no task of ours, and a
        result published there could land on (or, in live subscribers, beat) a real one.
        """
        await self._report(delivery, task_id, kind, reason, json)
        await delivery.term()

    async def task(
        self, delivery: Delivery, task_id: str, kind: str, reason: str, json: bool
    ) -> None:
        """A task that can never succeed: its error result (if none is stored), never rerun."""
        result = refusal(task_id, self._agent.context.actor_id, kind, reason, delivery.deliveries)
        if await self.store(delivery, result, json):
            await self.message(delivery, task_id, kind, reason, json)

    async def poison(self, delivery: Delivery, why: str) -> None:
        """End a task that keeps failing: error result, dead letter, out of the queue."""
        self._agent.poisoned += 1
        n, limit = delivery.deliveries, self._agent.config.queue.max_deliveries
        reason = f"gave up after {n} deliveries (max_deliveries {limit}): {why}"
        task_id = self._task_id(delivery)
        self._agent.context.log.error("task.poison", task_id=task_id, deliveries=n, reason=reason)
        json = is_json(delivery.headers)
        if task_id:
            await self.task(delivery, task_id, "poison", reason, json)
        else:
            await self.message(delivery, task_id, "poison", reason, json)

    async def failed_try(self, delivery: Delivery, err: Exception) -> None:
        """One try raised: hand the task back for another, or end it at the last try."""
        ctx, queue = self._agent.context, self._agent.config.queue
        self._agent.failures += 1
        why = f"{type(err).__name__}: {err}"
        ctx.log.error("task.try_failed", deliveries=delivery.deliveries, error=why, exc_info=err)
        if delivery.settled:
            return
        try:
            if delivery.deliveries >= queue.max_deliveries:
                await self.poison(delivery, why)
            else:
                await delivery.nak(delay=queue.retry_delay_s * delivery.deliveries)
        except Exception:  # e.g. the bus is gone: ack_wait redelivers it, and we try again
            ctx.log.exception("task.settle_failed", deliveries=delivery.deliveries)

    async def _report(
        self, delivery: Delivery, task_id: str, kind: str, reason: str, json: bool
    ) -> None:
        """Count, log, dead-letter and tell the submitter's inbox (``Lmt-Reply-To``) why."""
        ctx = self._agent.context
        self._agent.refused += kind != "duplicate"
        self._agent.metrics.refused(kind)
        ctx.log.warning("task.refused", kind=kind, reason=reason, task_id=task_id)
        await dead_letter(ctx.bus, ctx.subjects, delivery.raw, kind, reason)
        inbox = reply_address(delivery.headers)
        if inbox is None:
            return
        result = refusal(task_id, ctx.actor_id, kind, reason)
        with contextlib.suppress(BusError):  # an inbox is best effort; the dead letter stays
            await ctx.bus.publish(inbox, result, sender=ctx.actor_id, json=json)

    def _task_id(self, delivery: Delivery) -> str:
        """The valid id of the task a delivery carries, or "" when it has none."""
        try:
            task = self._agent.context.bus.decode_raw(delivery.data, delivery.headers, TASKS)
            return validate_token(task.id, "task id")
        except (DecodeError, ConfigError):
            return ""
