"""A team's task queue as seen by one agent: fetch one delivery, then ack, nak or extend.

Wraps a durable JetStream pull consumer shared by every agent of the team: the stream's
work-queue retention hands each task to one agent at a time, and a task whose agent stops
acknowledging (a crash, a partition) is delivered again after ``ack_wait``.
"""

from __future__ import annotations

import contextlib

import msgspec
import nats.errors
import nats.js.errors
import structlog
from nats.aio.msg import Msg
from nats.js import api

from lmteams.bus._connection import Bus
from lmteams.bus._jetstream import _retrying
from lmteams.bus._subjects import TASKS_CONSUMER, Subjects
from lmteams.errors import BusError, ConfigError

__all__ = (
    "Delivery",
    "WorkQueue",
    "WorkQueueSettings",
    "open_work_queue",
    "open_consumer",
    "last_message",
)

log = structlog.get_logger(__name__)


class WorkQueueSettings(msgspec.Struct, frozen=True, kw_only=True):
    """The team's shared consumer, and when a task that keeps failing is given up.

    ``max_deliveries`` bounds the tries of a poison task: the agent that receives delivery
    number ``max_deliveries`` (or a later one) settles it for good, with an error result and
    a dead letter. The consumer itself never stops redelivering (``max_deliver = -1``), so a
    task cannot be left in the queue unanswered by JetStream giving up first.
    """

    durable: str = TASKS_CONSUMER
    ack_wait_s: float = 30.0
    max_deliveries: int = 5
    retry_delay_s: float = 1.0
    """A failed try is handed back after this many seconds times the deliveries so far."""
    max_ack_pending: int = 1000


class Delivery:
    """One task handed to this agent. Settle it exactly once: ack, nak or term."""

    __slots__ = ("_deliveries", "_msg", "settled")

    def __init__(self, msg: Msg) -> None:
        self._msg = msg
        self.settled = False
        self._deliveries = 0

    @property
    def data(self) -> bytes:
        return bytes(self._msg.data)

    @property
    def headers(self) -> dict[str, str] | None:
        return self._msg.headers

    @property
    def subject(self) -> str:
        return str(self._msg.subject)

    @property
    def raw(self) -> Msg:
        return self._msg

    @property
    def deliveries(self) -> int:
        """1 on first delivery, more when JetStream redelivered it."""
        if not self._deliveries:  # parsed from the reply subject: once, not on every read
            self._deliveries = int(self._msg.metadata.num_delivered)
        return self._deliveries

    async def ack(self) -> None:
        """Done: JetStream removes the task (work-queue retention).

        Not awaited by the server: callers ack only after the result is stored, so an ack
        that is lost redelivers a task whose stored result is then found, and acked again.
        """
        await self._msg.ack()
        self.settled = True

    async def nak(self, delay: float | None = None) -> None:
        """Hand the task back for another delivery (now, or after ``delay`` seconds)."""
        await self._msg.nak(delay=delay)
        self.settled = True

    async def term(self) -> None:
        """Never deliver again (a poison message that was dead-lettered)."""
        await self._msg.term()
        self.settled = True

    async def in_progress(self) -> None:
        """Still working: restart the ack-wait clock so the task is not redelivered."""
        await self._msg.in_progress()


class WorkQueue:
    def __init__(self, sub: object) -> None:
        self._sub = sub

    async def fetch(self, *, timeout: float = 1.0) -> Delivery | None:
        """The next task, or None when none arrived within ``timeout``."""
        try:
            msgs = await self._sub.fetch(1, timeout=timeout)  # type: ignore[attr-defined]
        except nats.errors.TimeoutError:
            return None
        return Delivery(msgs[0]) if msgs else None

    async def close(self) -> None:
        with contextlib.suppress(nats.errors.Error):
            await self._sub.unsubscribe()  # type: ignore[attr-defined]


async def open_work_queue(
    bus: Bus, subjects: Subjects, settings: WorkQueueSettings | None = None
) -> WorkQueue:
    """Bind to (creating if absent) the team's shared durable consumer on the tasks stream."""
    s = settings or WorkQueueSettings()
    if s.max_deliveries < 1:
        raise ConfigError(f"max_deliveries must be at least 1, got {s.max_deliveries}")
    queue = await open_consumer(
        bus,
        subjects.tasks_stream,
        subjects.tasks,
        durable=s.durable,
        ack_wait_s=s.ack_wait_s,
        max_ack_pending=s.max_ack_pending,
    )
    info = await queue._sub.consumer_info()  # type: ignore[attr-defined]
    bound = info.config.max_deliver or -1
    if 0 < bound <= s.max_deliveries:  # made by an older lmteams; we never change it here
        log.warning(
            "bus.consumer_gives_up_first",
            consumer=s.durable,
            max_deliver=bound,
            max_deliveries=s.max_deliveries,
            fix="delete the consumer (nats consumer rm) and let `lmteams bus up` recreate it",
        )
    return queue


async def open_consumer(
    bus: Bus,
    stream: str,
    subject: str,
    *,
    durable: str,
    ack_wait_s: float = 30.0,
    max_ack_pending: int = 1000,
) -> WorkQueue:
    """Bind to (creating if absent) a shared durable pull consumer: every binder takes turns,
    and a message is redelivered until someone acks it (``max_deliver = -1``: the callers
    end poison messages, not JetStream)."""
    config = api.ConsumerConfig(
        durable_name=durable,
        filter_subject=subject,
        ack_policy=api.AckPolicy.EXPLICIT,
        ack_wait=ack_wait_s,
        max_deliver=-1,
        max_ack_pending=max_ack_pending,
    )
    sub = await bus.js.pull_subscribe(subject, durable=durable, stream=stream, config=config)
    return WorkQueue(sub)


async def last_message(
    bus: Bus, stream: str, subject: str, *, timeout: float = 20.0, direct: bool = False
) -> tuple[bytes, dict[str, str]] | None:
    """The newest message stored for ``subject`` in ``stream``, or None.

    A read is idempotent, so it retries through a stream leader election (a killed node)
    instead of failing the caller on the first timeout. ``direct`` reads through JetStream's
    direct get (the stream must allow it): any replica answers, off the API queue, so it is
    cheap for the server but may lag the leader by a moment; callers whose correctness does
    not hang on the read (a duplicate check in front of a write-once publish) use it.
    """

    async def attempt() -> tuple[bytes, dict[str, str]] | None:
        if direct:
            return await _direct_last(bus, stream, subject)
        return await _leader_last(bus, stream, subject)

    return await _retrying(f"reading {subject} from {stream}", attempt, timeout=timeout)


async def _direct_last(bus: Bus, stream: str, subject: str) -> tuple[bytes, dict[str, str]] | None:
    """Direct get of the last message on ``subject``, on the bus's own request path.

    The server answers with the stored message (its headers plus ``Nats-*`` ones), or an empty
    message whose ``Status`` header says why (404: none stored).
    """
    try:
        msg = await bus.nc.fast_request(
            f"$JS.API.DIRECT.GET.{stream}.{subject}", b"", timeout=5.0, headers={}
        )
    except nats.errors.NoRespondersError:  # a stream made without allow_direct: ask its leader
        return await _leader_last(bus, stream, subject)
    headers = dict(msg.headers or {})
    status = headers.get("Status")
    if not msg.data and status:
        if status == "404":
            return None
        if status == "503":
            raise nats.js.errors.ServiceUnavailableError
        raise BusError(f"direct get of {subject} from {stream}: {status} {headers}")
    return bytes(msg.data), headers


async def _leader_last(bus: Bus, stream: str, subject: str) -> tuple[bytes, dict[str, str]] | None:
    """The last message on ``subject`` through the stream leader's API (``STREAM.MSG.GET``)."""
    try:
        msg = await bus.js.get_last_msg(stream, subject)
    except nats.js.errors.NotFoundError:
        return None
    return bytes(msg.data or b""), dict(msg.headers or {})
