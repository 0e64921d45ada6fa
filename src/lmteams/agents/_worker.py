"""The worker agent: pulls the team's tasks, answers them with its backend, one result each.

The order of steps is the delivery guarantee: the result is published durably (deduplicated
by task id) *before* the task is acked, so a crash between the two means a redelivery whose
result is already stored; the redelivered copy is then acked without running the model again.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import time
from collections import OrderedDict
from typing import TypedDict

import anyio
import msgspec
import structlog

from lmteams.agents._actor import Actor, handler
from lmteams.agents._identity import AgentIdentity
from lmteams.agents._messages import (
    AgentInfo,
    Answer,
    Cancel,
    Heartbeat,
    Leave,
    Ping,
    Pong,
    Progress,
    Prompt,
    Result,
    Stage,
    Stop,
    Task,
)
from lmteams.agents._roster import Roster
from lmteams.agents._runtime import dead_letter, reply_address, unwrap_group
from lmteams.agents._strategy import StrategyContext, get_strategy, registered_strategies
from lmteams.agents._tasks import (
    MAX_PROMPT_BYTES,
    generation_problem,
    salvage_task_id,
    task_problem,
)
from lmteams.bus import (
    Codec,
    Delivery,
    Incoming,
    StreamSettings,
    Subscription,
    WorkQueue,
    WorkQueueSettings,
    ensure_team_streams,
    is_json,
    last_message,
    open_work_queue,
    publish_durable,
    validate_token,
)
from lmteams.errors import (
    AgentError,
    BusError,
    ConfigError,
    DecodeError,
    HardwareError,
    RevisionMismatchError,
)
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

log = structlog.get_logger(__name__)
_TASKS: Codec[Task] = Codec(Task)
_CONTROL: Codec[Stop | Cancel] = Codec(Stop, Cancel)
_REMEMBERED_CANCELS = 1024  # cancels that arrived before their prompt; oldest forgotten first


class _Facts(TypedDict):
    device: str
    model: str
    tokens_in: int
    tokens_out: int
    prompt_s: float
    generation_s: float


def _request(task: Task) -> GenerateRequest:
    return GenerateRequest(
        prompt=task.prompt,
        system=task.system,
        max_tokens=task.max_tokens,
        temperature=task.temperature,
        seed=task.seed,
    )


def _queue_s(submitted_at: float, started: float) -> float:
    """Seconds the task waited; 0 for a missing or impossible (future, non-finite) stamp."""
    if not math.isfinite(submitted_at) or not 0 < submitted_at <= started:
        return 0.0
    return started - submitted_at


def _facts(completion: Completion) -> _Facts:
    """What a completion tells about where and how fast it was made (answers and results)."""
    return {
        "device": completion.device,
        "model": completion.model,
        "tokens_in": completion.tokens_in,
        "tokens_out": completion.tokens_out,
        "prompt_s": completion.timings.prompt_s,
        "generation_s": completion.timings.generation_s,
    }


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
        self.cancelled = 0
        self.refused = 0  # messages and tasks refused with a dead letter (duplicates apart)
        self.failures = 0  # tries that raised (each handed back, or ended at the last try)
        self.poisoned = 0  # tasks ended after max_deliveries tries
        self.identity = AgentIdentity()
        self.roster: Roster | None = None
        self.tokens_per_s = 0.0
        self.prompt_tokens_per_s = 0.0
        self._prompts: dict[str, anyio.CancelScope] = {}
        self._early_cancels: OrderedDict[str, None] = OrderedDict()
        self._control: Subscription | None = None

    # --- life cycle ------------------------------------------------------------------------
    def open_backend(self) -> contextlib.AbstractAsyncContextManager[Backend]:
        """The backend this agent answers with; override to plant a custom one (tests, studies)."""
        return open_backend(self.config.backend)

    async def on_start(self) -> None:
        ctx = self.context
        self.backend = await self._stack.enter_async_context(self.open_backend())
        # the operator made them on a secured bus; a member only finds them (STREAM.INFO)
        await ensure_team_streams(ctx.bus, ctx.subjects, self.config.streams, update=False)
        self._queue = await open_work_queue(ctx.bus, ctx.subjects, self.config.queue)
        # Cancels bypass the mailbox: the prompt they stop is what keeps the mailbox busy.
        self._control = await ctx.bus.subscribe(
            ctx.subjects.control(ctx.actor_id), self._on_control, codec=_CONTROL
        )
        self.tokens_per_s, self.prompt_tokens_per_s = advertised_rates(
            self.backend, self.config.backend
        )
        self.roster = Roster(
            ctx.bus, ctx.subjects, liveness_s=max(2.0, 3 * self.config.heartbeat_s)
        )
        await self.roster.open()
        self.roster.see(ctx.actor_id, public_key=self.identity.public_key)
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
            tokens_per_s=self.tokens_per_s,
            prompt_tokens_per_s=self.prompt_tokens_per_s,
            public_key=self.identity.public_key,
        )
        await ctx.bus.publish(ctx.subjects.gossip("join"), info, sender=ctx.actor_id)
        ctx.log.info(
            "agent.joined", device=info.device, model=info.model, tokens_per_s=info.tokens_per_s
        )

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
        if self._control is not None:
            await self._control.unsubscribe()
        if self.roster is not None:
            await self.roster.close()
        with contextlib.suppress(BusError, OSError):
            await ctx.bus.publish(ctx.subjects.gossip("leave"), Leave(agent=ctx.actor_id))
        if self._queue is not None:
            await self._queue.close()
        await self._stack.aclose()
        ctx.log.info("agent.left", served=self.served)

    # --- direct requests -------------------------------------------------------------------
    @handler
    async def on_prompt(self, msg: Prompt) -> Answer:
        if msg.task_id in self._early_cancels:
            del self._early_cancels[msg.task_id]
            self.cancelled += 1
            raise AgentError(f"prompt {msg.task_id} was cancelled by its sender before it ran")
        problem = generation_problem(
            msg, max_prompt_bytes=self.config.max_prompt_bytes, what="prompt task id"
        )
        if problem:
            raise AgentError(f"prompt refused: {problem}")
        request = GenerateRequest(
            prompt=msg.prompt,
            system=msg.system,
            max_tokens=msg.max_tokens,
            temperature=msg.temperature,
            seed=msg.seed,
            logprobs=msg.logprobs,
        )
        assert self.backend is not None
        fit = await prompt_fit(self.backend, request)
        if fit.problem:
            raise AgentError(f"prompt refused: {fit.problem}")
        request = msgspec.structs.replace(request, max_tokens=fit.max_tokens)
        with anyio.CancelScope() as scope:
            self._prompts[msg.task_id] = scope
            try:
                completion = await self._generate(request)
            finally:
                self._prompts.pop(msg.task_id, None)
        if scope.cancelled_caught:
            self.cancelled += 1
            raise AgentError(f"prompt {msg.task_id} was cancelled by its sender")
        lp = completion.logprobs
        answer = Answer(
            task_id=msg.task_id,
            agent=self.context.actor_id,
            text=completion.text,
            mean_logprob=sum(lp) / len(lp) if lp else None,
            round=msg.round,
            **_facts(completion),
        )
        if msg.sign:
            answer = await self._signed(answer)
        return answer

    async def _signed(self, answer: Answer) -> Answer:
        """Sign a vote and broadcast it: a vote told differently to someone else shows up."""
        ctx = self.context
        signed = msgspec.structs.replace(
            answer,
            public_key=self.identity.public_key,
            signature=self.identity.sign_vote(
                answer.task_id, answer.round, answer.agent, answer.text
            ),
        )
        with contextlib.suppress(BusError):
            await ctx.bus.publish(ctx.subjects.vote(answer.task_id), signed, sender=ctx.actor_id)
        return signed

    @handler
    async def on_ping(self, msg: Ping) -> Pong:
        return Pong(
            agent=self.context.actor_id,
            state="draining" if self._draining else "serving",
            served=self.served,
            device=self.backend.device if self.backend else "",
            tokens_per_s=self.tokens_per_s,
            prompt_tokens_per_s=self.prompt_tokens_per_s,
            in_flight=self.in_flight,
            model=self.backend.model if self.backend else "",
        )

    async def _on_control(self, incoming: Incoming[Stop | Cancel]) -> None:
        """Cancel a prompt now if it runs, or when it is dequeued; ``Stop`` is the daemon's."""
        match incoming.body:
            case Cancel(task_id=task_id):
                scope = self._prompts.get(task_id)
                self.context.log.info("prompt.cancel", task_id=task_id, running=bool(scope))
                if scope is not None:
                    scope.cancel()
                    return
                self._early_cancels[task_id] = None
                while len(self._early_cancels) > _REMEMBERED_CANCELS:
                    self._early_cancels.popitem(last=False)
            case Stop():
                pass  # drain-and-leave belongs to whoever hosts the agent (the daemon)

    # --- the task path ---------------------------------------------------------------------
    async def _process(self, delivery: Delivery) -> None:
        """Handle one delivery. Whatever it carries, a failure fails this delivery alone.

        The actor's crash budget is for faults of the agent (its bus, its loop), never for
        what someone published: a try that raises is handed back with a delay, and the try
        numbered ``max_deliveries`` that fails ends the task (error result, dead letter).
        """
        try:
            await self._handle(delivery)
        except Exception as raised:  # any bug in one message's handling fails it alone
            await self._failed_try(delivery, unwrap_group(raised))

    async def _handle(self, delivery: Delivery) -> None:
        ctx = self.context
        json = is_json(delivery.headers)
        limit = self.config.queue.max_deliveries
        if delivery.deliveries > limit:  # every earlier try ended unsettled: a crash or a hang
            await self._poison(delivery, f"no try settled it in {limit} deliveries")
            return
        try:
            task = ctx.bus.decode_raw(delivery.data, delivery.headers, _TASKS)
        except DecodeError as err:
            reason = f"{err.field} {err.reason}".strip()
            task_id = salvage_task_id(delivery.data, json=json)
            await self._refuse_message(delivery, task_id, "decode", reason, json)
            return
        try:
            validate_token(task.id, "task id")
        except ConfigError as err:
            await self._refuse_message(delivery, "", "invalid", str(err), json)
            return
        with structlog.contextvars.bound_contextvars(task_id=task.id, agent_id=ctx.actor_id):
            if await last_message(
                ctx.bus, ctx.subjects.results_stream, ctx.subjects.results(task.id), direct=True
            ):
                await self._duplicate(delivery, task.id, json)
                return
            request = _request(task)
            problem = task_problem(task, max_prompt_bytes=self.config.max_prompt_bytes)
            kind = "invalid"
            if not problem:
                assert self.backend is not None
                fit = await prompt_fit(self.backend, request)
                problem, kind = fit.problem, "context"
                request = msgspec.structs.replace(request, max_tokens=fit.max_tokens)
            if problem:
                await self._refuse_task(delivery, task.id, kind, problem, json)
                return
            self.in_flight += 1
            try:
                await self._answer(delivery, task, request, json)
            except anyio.get_cancelled_exc_class():
                if not delivery.settled:  # cancelled mid-task (drain timeout): hand it back
                    with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                        await delivery.nak()
                        await self._progress(task.id, Stage.HANDED_BACK)
                raise
            finally:
                self.in_flight -= 1

    async def _answer(
        self, delivery: Delivery, task: Task, request: GenerateRequest, json: bool
    ) -> None:
        ctx = self.context
        started = time.time()
        await self._progress(task.id, Stage.CLAIMED, f"delivery {delivery.deliveries}")
        ctx.log.info("task.started", deliveries=delivery.deliveries)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._keep_claim, delivery)
            await self._progress(task.id, Stage.GENERATING)
            result = await self._run(task, request, delivery, started)
            tg.cancel_scope.cancel()
        if not await self._store(delivery, result, json):
            return
        await delivery.ack()
        self.served += 1
        await self._progress(task.id, Stage.DONE if result.ok else Stage.FAILED)
        ctx.log.info("task.done", ok=result.ok, tokens=result.tokens_out, seconds=result.total_s)

    async def _run(
        self, task: Task, request: GenerateRequest, delivery: Delivery, started: float
    ) -> Result:
        """The task's result; a backend failure or the task timeout is a result too."""
        try:
            with anyio.fail_after(self.config.task_timeout_s):
                if task.strategy != "single":
                    return await self._coordinate(task, delivery, started)
                completion = await self._generate(request)
                return self._result(task, delivery, started, completion=completion)
        except (HardwareError, TimeoutError) as err:
            kind = "timeout" if isinstance(err, TimeoutError) else "backend"
            self.context.log.warning("task.failed", kind=kind, error=str(err))
            return self._result(task, delivery, started, error=(kind, str(err) or kind))

    async def _coordinate(self, task: Task, delivery: Delivery, started: float) -> Result:
        """Run a multi-agent strategy with this agent as the task's coordinator."""
        ctx = self.context
        strategy = get_strategy(task.strategy)
        if strategy is None:
            missing = (
                "backend",
                f"strategy {task.strategy!r} is not loaded on agent {ctx.actor_id} "
                f"(it has {', '.join(registered_strategies())}); start agents with the "
                "`lmteams` command or import lmteams.consensus",
            )
            return self._result(task, delivery, started, error=missing)
        assert self.roster is not None
        outcome = await strategy.run(
            StrategyContext(
                bus=ctx.bus,
                subjects=ctx.subjects,
                agent_id=ctx.actor_id,
                roster=self.roster,
                identity=self.identity,
                ask_timeout_s=self.config.task_timeout_s,
            ),
            task,
        )
        base = self._result(task, delivery, started, error=(outcome.error_kind, outcome.error))
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
            device=self.backend.device if self.backend else "",
        )

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
            queue_s=_queue_s(task.submitted_at, started),
            total_s=time.time() - started,
            deliveries=delivery.deliveries,
        )
        if completion is None:
            assert error is not None
            return msgspec.structs.replace(base, error_kind=error[0], error=error[1])
        return msgspec.structs.replace(base, ok=True, answer=completion.text, **_facts(completion))

    async def _store(self, delivery: Delivery, result: Result, json: bool) -> bool:
        """Publish the task's one result; False when one was stored first (then it stays).

        Written once (``once=True``): neither a redelivery nor a later message with the same
        id can replace a stored result, inside the dedupe window or after it.
        """
        ctx = self.context
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
            self.duplicates += 1
            ctx.log.info("task.already_answered", deliveries=delivery.deliveries, kept="stored")
            await delivery.ack()
            return False
        return True

    async def _duplicate(self, delivery: Delivery, task_id: str, json: bool) -> None:
        """An answered id: ack without running the model; a second message is also reported.

        A redelivery (delivery 2 and up) is our own task whose ack was lost: nothing to say.
        A first delivery is another message with an answered id, refused as a duplicate.
        """
        ctx = self.context
        self.duplicates += 1
        ctx.log.info("task.already_answered", deliveries=delivery.deliveries)
        if delivery.deliveries == 1:
            reason = f"task {task_id} is already answered; its stored result is kept"
            await self._report(delivery, task_id, "duplicate", reason, json)
        await delivery.ack()

    async def _refuse_message(
        self, delivery: Delivery, task_id: str, kind: str, reason: str, json: bool
    ) -> None:
        """A message that never became a task: dead letter and the submitter's inbox only.

        Never a results subject: an undecodable body or a bad id names no task of ours, and a
        result published there could land on (or, in live subscribers, beat) a real one.
        """
        await self._report(delivery, task_id, kind, reason, json)
        await delivery.term()

    async def _refuse_task(
        self, delivery: Delivery, task_id: str, kind: str, reason: str, json: bool
    ) -> None:
        """A task that can never succeed: its error result (if none is stored), never rerun."""
        result = Result(
            task_id=task_id,
            ok=False,
            error_kind=kind,
            error=reason,
            agent=self.context.actor_id,
            deliveries=delivery.deliveries,
        )
        if await self._store(delivery, result, json):
            await self._report(delivery, task_id, kind, reason, json)
            await delivery.term()

    async def _poison(self, delivery: Delivery, why: str) -> None:
        """End a task that keeps failing: error result, dead letter, out of the queue."""
        ctx = self.context
        self.poisoned += 1
        n, limit = delivery.deliveries, self.config.queue.max_deliveries
        reason = f"gave up after {n} deliveries (max_deliveries {limit}): {why}"
        json = is_json(delivery.headers)
        task_id = self._task_id(delivery)
        ctx.log.error("task.poison", task_id=task_id, deliveries=n, reason=reason)
        if task_id:
            result = Result(
                task_id=task_id,
                ok=False,
                error_kind="poison",
                error=reason,
                agent=ctx.actor_id,
                deliveries=n,
            )
            if not await self._store(delivery, result, json):
                return
        await self._report(delivery, task_id, "poison", reason, json)
        await delivery.term()

    async def _failed_try(self, delivery: Delivery, err: Exception) -> None:
        """One try raised: hand the task back for another, or end it at the last try."""
        ctx = self.context
        self.failures += 1
        why = f"{type(err).__name__}: {err}"
        ctx.log.error("task.try_failed", deliveries=delivery.deliveries, error=why, exc_info=err)
        if delivery.settled:
            return
        try:
            if delivery.deliveries >= self.config.queue.max_deliveries:
                await self._poison(delivery, why)
            else:
                await delivery.nak(delay=self.config.queue.retry_delay_s * delivery.deliveries)
        except Exception:  # e.g. the bus is gone: ack_wait redelivers it, and we try again
            ctx.log.exception("task.settle_failed", deliveries=delivery.deliveries)

    async def _report(
        self, delivery: Delivery, task_id: str, kind: str, reason: str, json: bool
    ) -> None:
        """Count, log, dead-letter and tell the submitter's inbox (``Lmt-Reply-To``) why."""
        ctx = self.context
        self.refused += kind != "duplicate"
        ctx.log.warning("task.refused", kind=kind, reason=reason, task_id=task_id)
        await dead_letter(ctx.bus, ctx.subjects, delivery.raw, kind, reason)
        inbox = reply_address(delivery.headers)
        if inbox is None:
            return
        result = Result(
            task_id=task_id, ok=False, error_kind=kind, error=reason, agent=ctx.actor_id
        )
        with contextlib.suppress(BusError):  # an inbox is best effort; the dead letter stays
            await ctx.bus.publish(inbox, result, sender=ctx.actor_id, json=json)

    def _task_id(self, delivery: Delivery) -> str:
        """The valid id of the task a delivery carries, or "" when it has none."""
        try:
            task = self.context.bus.decode_raw(delivery.data, delivery.headers, _TASKS)
            return validate_token(task.id, "task id")
        except (DecodeError, ConfigError):
            return ""

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
                public_key=self.identity.public_key,
            )
            with contextlib.suppress(BusError):
                await ctx.bus.publish(ctx.subjects.gossip("heartbeat"), beat, sender=ctx.actor_id)
            await anyio.sleep(self.config.heartbeat_s)
