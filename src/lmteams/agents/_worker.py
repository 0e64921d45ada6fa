"""The worker agent: pulls the team's tasks, answers them with its backend, one result each.

The order of steps is the delivery guarantee: the result is published durably (deduplicated
by task id) *before* the task is acked, so a crash between the two means a redelivery whose
result is already stored; the redelivered copy is then acked without running the model again.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time

import anyio
import msgspec
import structlog

from lmteams.agents._actor import Actor, handler
from lmteams.agents._messages import (
    AgentInfo,
    Answer,
    Heartbeat,
    Leave,
    Ping,
    Pong,
    Progress,
    Prompt,
    Result,
    Stage,
    Task,
)
from lmteams.agents._runtime import dead_letter
from lmteams.agents._tasks import salvage_task_id, task_problem
from lmteams.bus import (
    Codec,
    Delivery,
    StreamSettings,
    WorkQueue,
    WorkQueueSettings,
    ensure_team_streams,
    is_json,
    last_message,
    open_work_queue,
    publish_durable,
)
from lmteams.errors import BusError, DecodeError, HardwareError
from lmteams.hardware import Backend, BackendConfig, Completion, GenerateRequest, open_backend

__all__ = ("WorkerConfig", "WorkerAgent")

log = structlog.get_logger(__name__)
_TASKS: Codec[Task] = Codec(Task)


class WorkerConfig(msgspec.Struct, frozen=True, kw_only=True):
    """How one worker agent runs. Defaults suit a daemon; tests shorten the clocks."""

    backend: BackendConfig = BackendConfig()
    queue: WorkQueueSettings = WorkQueueSettings()
    streams: StreamSettings = StreamSettings()
    heartbeat_s: float = 2.0
    fetch_timeout_s: float = 1.0
    task_timeout_s: float = 600.0


class WorkerAgent(Actor):
    """Serves tasks from the team's queue and direct ``Prompt`` requests from coordinators."""

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

    # --- life cycle ------------------------------------------------------------------------
    def open_backend(self) -> contextlib.AbstractAsyncContextManager[Backend]:
        """The backend this agent answers with; override to plant a custom one (tests, studies)."""
        return open_backend(self.config.backend)

    async def on_start(self) -> None:
        ctx = self.context
        self.backend = await self._stack.enter_async_context(self.open_backend())
        await ensure_team_streams(ctx.bus, ctx.subjects, self.config.streams)
        self._queue = await open_work_queue(ctx.bus, ctx.subjects, self.config.queue)
        info = AgentInfo(
            agent=ctx.actor_id,
            team=ctx.team,
            roles=ctx.roles,
            device=self.backend.device,
            model=self.backend.model,
            backend=self.config.backend.kind,
            host=socket.gethostname(),
            pid=os.getpid(),
            started_at=time.time(),
        )
        await ctx.bus.publish(ctx.subjects.gossip("join"), info, sender=ctx.actor_id)
        ctx.log.info("agent.joined", device=info.device, model=info.model)

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._heartbeats)
            while not self._draining:
                assert self._queue is not None
                delivery = await self._queue.fetch(timeout=self.config.fetch_timeout_s)
                if delivery is not None:
                    await self._process(delivery)
            tg.cancel_scope.cancel()

    async def on_drain(self) -> None:
        self._draining = True
        self.context.log.info("agent.draining", in_flight=self.in_flight)

    async def on_stop(self) -> None:
        ctx = self.context
        with contextlib.suppress(BusError, OSError):
            await ctx.bus.publish(ctx.subjects.gossip("leave"), Leave(agent=ctx.actor_id))
        if self._queue is not None:
            await self._queue.close()
        await self._stack.aclose()
        ctx.log.info("agent.left", served=self.served)

    # --- direct requests -------------------------------------------------------------------
    @handler
    async def on_prompt(self, msg: Prompt) -> Answer:
        completion = await self._generate(
            GenerateRequest(
                prompt=msg.prompt,
                system=msg.system,
                max_tokens=msg.max_tokens,
                temperature=msg.temperature,
                seed=msg.seed,
                logprobs=msg.logprobs,
            )
        )
        lp = completion.logprobs
        return Answer(
            task_id=msg.task_id,
            agent=self.context.actor_id,
            text=completion.text,
            device=completion.device,
            model=completion.model,
            tokens_in=completion.tokens_in,
            tokens_out=completion.tokens_out,
            prompt_s=completion.timings.prompt_s,
            generation_s=completion.timings.generation_s,
            mean_logprob=sum(lp) / len(lp) if lp else None,
        )

    @handler
    async def on_ping(self, msg: Ping) -> Pong:
        return Pong(
            agent=self.context.actor_id,
            state="draining" if self._draining else "serving",
            served=self.served,
        )

    # --- the task path ---------------------------------------------------------------------
    async def _process(self, delivery: Delivery) -> None:
        ctx = self.context
        json = is_json(delivery.headers)
        try:
            task = ctx.bus.decode_raw(delivery.data, delivery.headers, _TASKS)
        except DecodeError as err:
            reason = f"{err.field} {err.reason}".strip()
            await self._refuse(
                delivery, salvage_task_id(delivery.data, json=json), "decode", reason, json
            )
            return
        problem = task_problem(task)
        if problem:
            await self._refuse(delivery, task.id, "invalid", problem, json)
            return
        with structlog.contextvars.bound_contextvars(task_id=task.id, agent_id=ctx.actor_id):
            if await last_message(
                ctx.bus, ctx.subjects.results_stream, ctx.subjects.results(task.id)
            ):
                self.duplicates += 1
                ctx.log.info("task.already_answered", deliveries=delivery.deliveries)
                await delivery.ack()
                return
            self.in_flight += 1
            try:
                await self._answer(delivery, task, json)
            finally:
                self.in_flight -= 1
                if not delivery.settled:  # cancelled mid-task (drain timeout): hand it back
                    with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                        await delivery.nak()
                        await self._progress(task.id, Stage.HANDED_BACK)

    async def _answer(self, delivery: Delivery, task: Task, json: bool) -> None:
        ctx = self.context
        started = time.time()
        await self._progress(task.id, Stage.CLAIMED, f"delivery {delivery.deliveries}")
        ctx.log.info("task.started", deliveries=delivery.deliveries)
        request = GenerateRequest(
            prompt=task.prompt,
            system=task.system,
            max_tokens=task.max_tokens,
            temperature=task.temperature,
            seed=task.seed,
        )
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._keep_claim, delivery)
                await self._progress(task.id, Stage.GENERATING)
                with anyio.fail_after(self.config.task_timeout_s):
                    completion = await self._generate(request)
                tg.cancel_scope.cancel()
        except (HardwareError, TimeoutError) as err:
            kind = "timeout" if isinstance(err, TimeoutError) else "backend"
            ctx.log.warning("task.failed", kind=kind, error=str(err))
            result = self._result(task, delivery, started, error=(kind, str(err) or kind))
        else:
            result = self._result(task, delivery, started, completion=completion)
        await publish_durable(
            ctx.bus,
            ctx.subjects.results(task.id),
            result,
            msg_id=f"result-{task.id}",
            sender=ctx.actor_id,
            json=json,
        )
        await delivery.ack()
        self.served += 1
        await self._progress(task.id, Stage.DONE if result.ok else Stage.FAILED)
        ctx.log.info("task.done", ok=result.ok, tokens=result.tokens_out, seconds=result.total_s)

    def _result(
        self,
        task: Task,
        delivery: Delivery,
        started: float,
        *,
        completion: Completion | None = None,
        error: tuple[str, str] | None = None,
    ) -> Result:
        base = Result(
            task_id=task.id,
            ok=False,
            agent=self.context.actor_id,
            strategy=task.strategy,
            queue_s=max(0.0, started - task.submitted_at) if task.submitted_at else 0.0,
            total_s=time.time() - started,
            deliveries=delivery.deliveries,
        )
        if completion is None:
            assert error is not None
            return msgspec.structs.replace(base, error_kind=error[0], error=error[1])
        return msgspec.structs.replace(
            base,
            ok=True,
            answer=completion.text,
            device=completion.device,
            model=completion.model,
            tokens_in=completion.tokens_in,
            tokens_out=completion.tokens_out,
            prompt_s=completion.timings.prompt_s,
            generation_s=completion.timings.generation_s,
        )

    async def _refuse(
        self, delivery: Delivery, task_id: str, kind: str, reason: str, json: bool
    ) -> None:
        """A task that can never succeed: dead-letter it, tell its caller, never redeliver."""
        ctx = self.context
        ctx.log.warning("task.refused", kind=kind, reason=reason, task_id=task_id)
        await dead_letter(ctx.bus, ctx.subjects, delivery.raw, kind, reason)
        if task_id:
            result = Result(
                task_id=task_id, ok=False, error_kind=kind, error=reason, agent=ctx.actor_id
            )
            await publish_durable(
                ctx.bus,
                ctx.subjects.results(task_id),
                result,
                msg_id=f"result-{task_id}",
                json=json,
            )
        await delivery.term()

    async def _keep_claim(self, delivery: Delivery) -> None:
        """Tell JetStream the task is still being worked on, well within ``ack_wait``."""
        interval = max(0.1, self.config.queue.ack_wait_s / 3)
        while True:
            await anyio.sleep(interval)
            with contextlib.suppress(Exception):
                await delivery.in_progress()

    async def _generate(self, request: GenerateRequest) -> Completion:
        assert self.backend is not None
        return await self.backend.generate(request)

    async def _progress(self, task_id: str, stage: Stage, detail: str = "") -> None:
        ctx = self.context
        progress = Progress(
            task_id=task_id, agent=ctx.actor_id, stage=stage, detail=detail, at=time.time()
        )
        with contextlib.suppress(BusError):
            await ctx.bus.publish(ctx.subjects.progress(task_id), progress, sender=ctx.actor_id)

    async def _heartbeats(self) -> None:
        ctx = self.context
        seq = 0
        while True:
            seq += 1
            beat = Heartbeat(
                agent=ctx.actor_id,
                seq=seq,
                in_flight=self.in_flight,
                served=self.served,
                state="draining" if self._draining else "serving",
            )
            with contextlib.suppress(BusError):
                await ctx.bus.publish(ctx.subjects.gossip("heartbeat"), beat, sender=ctx.actor_id)
            await anyio.sleep(self.config.heartbeat_s)
