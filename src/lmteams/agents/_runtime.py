"""The runtime: hosts actors on one bus connection and supervises them one-for-one.

Many actors share a process (tests, edge devices, studies with hundreds of simulated agents)
or each has its own (production daemons); either way they meet only through subjects.
A crashed actor is restarted with exponential backoff, up to an intensity limit, so one
faulty agent cannot spin the process.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import structlog
from anyio.abc import TaskGroup, TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from lmteams import tracing
from lmteams.agents._actor import Actor
from lmteams.agents._identity import AgentIdentity
from lmteams.agents._membership import LocalMembership, Membership
from lmteams.agents._metrics import RuntimeMetrics
from lmteams.agents._ref import ActorRef
from lmteams.bus import (
    Backoff,
    Bus,
    ErrorReply,
    Incoming,
    RawMsg,
    Subjects,
    Subscription,
    validate_token,
)
from lmteams.errors import ConfigError, DecodeError

if TYPE_CHECKING:
    from lmteams.agents._worker import WorkerAgent

__all__ = (
    "ActorContext",
    "ActorState",
    "ActorStatistics",
    "RestartPolicy",
    "Runtime",
    "open_runtime",
    "dead_letter",
    "reply_address",
    "H_REPLY_TO",
    "IdentitySource",
)

log = structlog.get_logger(__name__)

H_DEAD_REASON = "Lmt-Dead-Reason"
H_DEAD_SUBJECT = "Lmt-Dead-Subject"
H_DEAD_TRUNCATED = "Lmt-Dead-Truncated"  # the original body's size, when only its head is kept
# A JetStream message keeps no reply subject (its reply is JetStream's ack), so a submitter
# that wants to hear of a refused message names an inbox in this header.
H_REPLY_TO = "Lmt-Reply-To"
# Only inboxes: a reply sent anywhere else (a results subject, $JS.API...) would let anyone
# make an agent publish, with its credentials, where they choose.
_INBOX = re.compile(r"_INBOX[A-Za-z0-9_-]{0,64}(\.[A-Za-z0-9_-]{1,128}){1,8}")


class ActorState(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    RESTARTING = "restarting"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"  # gave up after too many restarts


class RestartPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """One-for-one supervision: at most ``max_restarts`` within ``window_s``, then give up."""

    max_restarts: int = 5
    window_s: float = 60.0
    backoff_s: float = 0.1
    backoff_max_s: float = 5.0

    @property
    def backoff(self) -> Backoff:
        """Jittered, so actors that crashed on the same input do not restart in lock-step."""
        return Backoff(initial_s=self.backoff_s, max_s=self.backoff_max_s)


class ActorStatistics(msgspec.Struct, frozen=True, kw_only=True):
    actor_id: str
    state: ActorState
    processed: int
    errors: int
    restarts: int
    mailbox: int


IdentitySource = Callable[[str], AgentIdentity]
WorkerService = Callable[["WorkerAgent"], Coroutine[Any, Any, None]]
"""A duty a worker agent runs beside its task queue while it serves, given the agent."""
"""The signing identity of the actor with a given id; called once per actor, not per restart."""


class ActorContext:
    """What an actor knows of its place: id, team, bus, the team's membership, its key.

    ``identity`` belongs to the actor's cell, not to one incarnation: the team binds the key
    to the actor's name on its first join, so a restarted actor must sign with the same one.
    """

    def __init__(
        self,
        runtime: Runtime,
        actor_id: str,
        roles: tuple[str, ...],
        identity: AgentIdentity,
        *,
        restarts: int = 0,
    ) -> None:
        self.runtime = runtime
        self.actor_id = actor_id
        self.roles = roles
        self.identity = identity
        self.restarts = restarts  # how many times this actor was restarted before this start
        self.bus = runtime.bus
        self.subjects = runtime.subjects
        self.team = runtime.subjects.team
        self.membership = runtime.membership
        self.worker_services = runtime.worker_services
        self.log = log.bind(agent_id=actor_id, team=self.team)

    def ref(self, actor_id: str) -> ActorRef:
        return self.runtime.ref(actor_id)

    @property
    def self_ref(self) -> ActorRef:
        return self.runtime.ref(self.actor_id)


async def dead_letter(bus: Bus, subjects: Subjects, msg: RawMsg, kind: str, reason: str) -> None:
    """Keep an unusable message, with why, in the team's dead-letter stream.

    The message fitted the server's max payload; with our headers added it may not, so the
    body is then cut (and its size noted) rather than the dead letter lost.
    """
    headers = dict(msg.headers or {})
    headers[H_DEAD_REASON] = reason.replace("\r", " ").replace("\n", " ")[:1000]
    headers[H_DEAD_SUBJECT] = msg.subject
    data = bytes(msg.data)
    header_bytes = 64 + sum(
        len(f"{k}: {v}\r\n".encode(errors="replace")) for k, v in headers.items()
    )
    room = max(0, bus.nc.max_payload - header_bytes)
    if len(data) > room:
        headers[H_DEAD_TRUNCATED] = str(len(data))
        data = data[:room]
    await bus.publish_raw(subjects.dead(kind), data, headers)


def reply_address(headers: dict[str, str] | None) -> str | None:
    """The submitter's inbox from ``Lmt-Reply-To``, or None when absent or not an inbox."""
    value = (headers or {}).get(H_REPLY_TO, "")
    return value if _INBOX.fullmatch(value) else None


def unwrap_group(exc: Exception) -> Exception:
    """A task group wraps a lone failure in an ExceptionGroup; report the failure itself."""
    while isinstance(exc, ExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


class _Cell:
    """One hosted actor: its mailbox, subscriptions, counters and supervision loop."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        actor_id: str,
        factory: Callable[[], Actor],
        roles: tuple[str, ...],
        policy: RestartPolicy,
        drain_timeout: float,
    ) -> None:
        self.runtime = runtime
        self.actor_id = actor_id
        self.factory = factory
        self.roles = roles
        self.policy = policy
        self.drain_timeout = drain_timeout
        self.identity = runtime.identities(actor_id)
        self.state = ActorState.STARTING
        self.processed = 0
        self.errors = 0
        self.restarts = 0
        self.stop_requested = anyio.Event()
        self.stopped = anyio.Event()
        self._signalled = False  # whether spawn() has been told the actor started
        self._send: MemoryObjectSendStream[Incoming[Any]] | None = None
        self._log = log.bind(agent_id=actor_id, team=runtime.subjects.team)

    def statistics(self) -> ActorStatistics:
        depth = self._send.statistics().current_buffer_used if self._send else 0
        return ActorStatistics(
            actor_id=self.actor_id,
            state=self.state,
            processed=self.processed,
            errors=self.errors,
            restarts=self.restarts,
            mailbox=depth,
        )

    async def supervise(self, *, task_status: TaskStatus[None]) -> None:
        """Run incarnations until stopped; ``spawn`` returns after the first one starts or fails."""
        crashes: deque[float] = deque()
        status = task_status
        try:
            while not self.stop_requested.is_set():
                actor = self.factory()
                actor._context = ActorContext(
                    self.runtime, self.actor_id, self.roles, self.identity, restarts=self.restarts
                )
                try:
                    await self._incarnation(actor, status)
                    break
                except Exception as raised:
                    self._signal_started(status)  # spawn() returns; the supervisor keeps trying
                    exc = unwrap_group(raised)
                    self.errors += 1
                    self._log.error("actor.crashed", error=f"{type(exc).__name__}: {exc}")
                    with contextlib.suppress(Exception):
                        await actor.on_failure(exc)
                    now = time.monotonic()
                    crashes.append(now)
                    while crashes and now - crashes[0] > self.policy.window_s:
                        crashes.popleft()
                    if len(crashes) > self.policy.max_restarts:
                        self.state = ActorState.FAILED
                        self._log.error("actor.gave_up", crashes=len(crashes))
                        return
                    self.restarts += 1
                    self.state = ActorState.RESTARTING
                    delay = self.policy.backoff.delay(len(crashes) - 1)
                    self._log.warning("actor.restarting", in_s=round(delay, 3))
                    with anyio.move_on_after(delay):
                        await self.stop_requested.wait()
            self.state = ActorState.STOPPED
        finally:
            self._signal_started(status)  # never got going: do not leave spawn() waiting
            self.stopped.set()

    def _signal_started(self, status: TaskStatus[None] | None) -> None:
        """Tell ``spawn`` (once) that the actor is up, or that its first start failed."""
        if status is not None and not self._signalled:
            self._signalled = True
            status.started()

    async def _incarnation(self, actor: Actor, task_status: TaskStatus[None] | None) -> None:
        bus = self.runtime.bus
        subjects = self.runtime.subjects
        send, receive = anyio.create_memory_object_stream[Incoming[Any]](actor.mailbox_size)
        self._send = send
        subs: list[Subscription] = []
        try:
            await actor.on_start()
            codec = type(actor)._codec
            if codec is not None:
                subs.append(
                    await bus.subscribe(
                        subjects.agent(self.actor_id),
                        self._enqueue,
                        codec=codec,
                        on_decode_error=self._on_decode_error,
                    )
                )
                for role in self.roles:  # load-balanced: one member of the role gets each
                    role_sub = await bus.subscribe(
                        subjects.role(role),
                        self._enqueue,
                        codec=codec,
                        queue=role,
                        on_decode_error=self._on_decode_error,
                    )
                    subs.append(role_sub)
            self.state = ActorState.RUNNING
            self._log.info("actor.started", roles=list(self.roles))
            self._signal_started(task_status)
            mailbox_done = anyio.Event()
            body_done = anyio.Event()
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._serve, actor, receive, mailbox_done)
                tg.start_soon(self._run_body, actor, body_done)
                await self.stop_requested.wait()
                # graceful: no new messages, finish what is queued and in flight (bounded)
                self.state = ActorState.STOPPING
                for sub in subs:
                    await sub.unsubscribe()
                subs.clear()
                send.close()
                with anyio.move_on_after(self.drain_timeout):
                    await actor.on_drain()
                    await mailbox_done.wait()
                    if type(actor).on_drain is not Actor.on_drain:  # it ends its body itself
                        await body_done.wait()
                tg.cancel_scope.cancel()
        finally:
            send.close()
            for sub in subs:
                await sub.unsubscribe()
            with anyio.CancelScope(shield=True):
                await self._refuse_leftovers(receive)
                try:
                    await actor.on_stop()
                except Exception:
                    self._log.exception("actor.on_stop_failed")
            self._log.info("actor.stopped")

    async def _run_body(self, actor: Actor, done: anyio.Event) -> None:
        try:
            await actor.run()
        finally:
            done.set()

    async def _serve(
        self,
        actor: Actor,
        receive: MemoryObjectReceiveStream[Incoming[Any]],
        done: anyio.Event,
    ) -> None:
        """Handle messages in order, a batch per wake-up.

        Taking what is already queued without a checkpoint per message lets replies leave
        in one socket write; a checkpoint per message costs a loop iteration and a write each.
        """
        try:
            async with receive:
                async for first in receive:
                    await self._handle(actor, first)
                    for _ in range(actor.mailbox_size):
                        try:
                            queued = receive.receive_nowait()
                        except anyio.WouldBlock:
                            break
                        await self._handle(actor, queued)
        except anyio.EndOfStream:
            pass
        finally:
            done.set()

    async def _handle(self, actor: Actor, incoming: Incoming[Any]) -> None:
        body = incoming.body
        task_id = getattr(body, "task_id", None) or getattr(body, "id", "")
        tokens = structlog.contextvars.bind_contextvars(
            agent_id=self.actor_id, task_id=task_id, trace_id=incoming.trace
        )
        headers = incoming.msg.headers
        traced = tracing.continued(
            headers, body, agent=self.actor_id, task=str(task_id or ""), reply=bool(incoming.reply)
        )
        try:
            try:
                with traced:
                    reply = await actor.dispatch(body)
            except Exception as exc:
                self.errors += 1
                self._log.warning("actor.handler_error", error=f"{type(exc).__name__}: {exc}")
                if incoming.reply:
                    await self._reply(
                        incoming,
                        ErrorReply(
                            kind="handler",
                            message=f"{type(exc).__name__}: {exc}"[:1000],
                            task_id=str(task_id)[:200],
                        ),
                    )
                return
            self.processed += 1
            if reply is not None and incoming.reply:
                await self._reply(incoming, reply)
        finally:
            structlog.contextvars.reset_contextvars(**tokens)

    async def _enqueue(self, incoming: Incoming[Any]) -> None:
        send = self._send
        if send is None or self.state is not ActorState.RUNNING:
            await self._refuse(incoming, "actor_dead", f"actor {self.actor_id} is stopping")
            return
        try:
            send.send_nowait(incoming)
        except anyio.WouldBlock:
            if incoming.reply:  # a request: tell the caller now rather than time out
                await self._refuse(
                    incoming,
                    "busy",
                    f"mailbox of {self.actor_id} is full ({send.statistics().max_buffer_size})",
                )
            else:  # a tell: backpressure onto the subscription
                await send.send(incoming)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            await self._refuse(incoming, "actor_dead", f"actor {self.actor_id} is stopping")

    async def _refuse(self, incoming: Incoming[Any], kind: str, message: str) -> None:
        if incoming.reply:
            await self._reply(incoming, ErrorReply(kind=kind, message=message))

    async def _reply(self, incoming: Incoming[Any], body: msgspec.Struct) -> None:
        """Send a reply; one that cannot leave (too big, closed bus) fails that message only,
        never the actor: the crash budget is for the agent's faults, not its callers'."""
        try:
            await incoming.respond(body, sender=self.actor_id)
        except Exception as exc:
            self.errors += 1
            self._log.warning("actor.reply_failed", error=f"{type(exc).__name__}: {exc}"[:500])

    async def _refuse_leftovers(self, receive: MemoryObjectReceiveStream[Incoming[Any]]) -> None:
        """Refuse what is still queued, then close the mailbox (an actor whose start failed
        never served it, so nothing else closes it)."""
        with receive:
            while True:
                try:
                    incoming = receive.receive_nowait()
                except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                    return
                await self._refuse(incoming, "actor_dead", f"actor {self.actor_id} stopped")

    async def _on_decode_error(self, msg: RawMsg, err: DecodeError) -> None:
        self.errors += 1
        self.runtime.metrics.agent(self.actor_id).dead_letter("decode")
        await dead_letter(
            self.runtime.bus,
            self.runtime.subjects,
            msg,
            "decode",
            f"{err.field} {err.reason}".strip(),
        )


class Runtime:
    """Hosts actors on one bus connection for one team. Create with ``open_runtime``."""

    def __init__(
        self,
        bus: Bus,
        subjects: Subjects,
        tg: TaskGroup,
        *,
        membership: Membership | None = None,
        identities: IdentitySource | None = None,
        worker_services: Sequence[WorkerService] = (),
    ) -> None:
        self.bus = bus
        self.subjects = subjects
        self.membership: Membership = membership or LocalMembership()
        self.worker_services: tuple[WorkerService, ...] = tuple(worker_services)
        self.identities: IdentitySource = identities or (lambda _actor_id: AgentIdentity())
        self._tg = tg
        self._cells: dict[str, _Cell] = {}
        self.metrics = RuntimeMetrics(self)  # its own registry: `serve_metrics` exposes it

    async def spawn(
        self,
        factory: Callable[[], Actor] | Actor,
        *,
        actor_id: str,
        roles: tuple[str, ...] = (),
        policy: RestartPolicy | None = None,
        drain_timeout: float = 30.0,
    ) -> ActorRef:
        """Start an actor and return its ref once it serves (``on_start`` has run).

        Pass a factory (a class or a function) so a restart gets a fresh actor; an instance
        is reused as it is across restarts.
        """
        validate_token(actor_id, "actor id")
        if actor_id in self._cells and not self._cells[actor_id].stopped.is_set():
            raise ConfigError(f"an actor named {actor_id!r} already runs in this runtime")
        make = (lambda: factory) if isinstance(factory, Actor) else factory
        cell = _Cell(
            self,
            actor_id=actor_id,
            factory=make,
            roles=roles,
            policy=policy or RestartPolicy(),
            drain_timeout=drain_timeout,
        )
        self._cells[actor_id] = cell
        await self._tg.start(cell.supervise)
        return self.ref(actor_id)

    def ref(self, actor_id: str) -> ActorRef:
        return ActorRef(self.bus, self.subjects, actor_id)

    async def stop(self, actor_id: str, *, timeout: float | None = None) -> None:
        """Stop one actor gracefully (drain, then ``on_stop``) and wait until it has."""
        cell = self._cells.get(actor_id)
        if cell is None:
            return
        cell.stop_requested.set()
        with anyio.move_on_after(timeout if timeout is not None else cell.drain_timeout + 5):
            await cell.stopped.wait()

    async def stop_all(self) -> None:
        async with anyio.create_task_group() as tg:
            for actor_id in list(self._cells):
                tg.start_soon(self.stop, actor_id)

    def statistics(self) -> list[ActorStatistics]:
        return [cell.statistics() for cell in self._cells.values()]

    def state(self, actor_id: str) -> ActorState | None:
        cell = self._cells.get(actor_id)
        return cell.state if cell else None


@contextlib.asynccontextmanager
async def open_runtime(
    bus: Bus,
    team: str,
    *,
    membership: Membership | None = None,
    identities: IdentitySource | None = None,
    worker_services: Sequence[WorkerService] = (),
) -> AsyncIterator[Runtime]:
    """Host actors for the duration of the block; every actor is stopped gracefully on exit.

    ``membership`` is the team's view the actors read and publish to (a process that hosts
    the whole team needs none: :class:`LocalMembership`); ``identities`` gives each actor its
    signing key (a fresh one per actor by default; the daemon passes its stored key);
    ``worker_services`` run inside every worker agent for as long as it serves (team jobs:
    ``lmteams.jobs.job_service``), so a layer above can give workers new duties.
    """
    tracing.configure(f"lmteams-{team}")  # on only where the environment asks (lmteams.tracing)
    async with anyio.create_task_group() as tg:
        runtime = Runtime(
            bus,
            Subjects(team),
            tg,
            membership=membership,
            identities=identities,
            worker_services=worker_services,
        )
        try:
            yield runtime
        finally:
            with anyio.CancelScope(shield=True):
                await runtime.stop_all()
            tg.cancel_scope.cancel()
