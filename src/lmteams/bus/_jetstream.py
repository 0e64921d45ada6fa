"""JetStream pieces of a team: its durable streams and KV buckets.

Durable state lives in the server, never in lmteams: tasks survive agent crashes because
they sit in a work-queue stream until acked; results are deduplicated by task id; KV gives
compare-and-set for claims and leases. The helpers are idempotent so every agent may call them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import msgspec
import nats.errors
import nats.js.errors
import structlog
from nats.js import api
from nats.js.kv import KeyValue

from lmteams.bus._backoff import Backoff, retrying
from lmteams.bus._codec import encode, encode_json
from lmteams.bus._connection import Bus
from lmteams.bus._subjects import SubjectKind, Subjects
from lmteams.errors import BusError, EncodeError, RevisionMismatchError

__all__ = (
    "StreamSettings",
    "ensure_team_streams",
    "ensure_stream",
    "publish_durable",
    "PubAck",
    "KV",
    "KVEntry",
    "open_kv",
)

log = structlog.get_logger(__name__)
T = TypeVar("T")

_STREAM_IN_USE = 10058
_WRONG_LAST_SEQUENCE = (10071, 10164)
_SUBJECT_FULL = 10077  # a discard-new-per-subject stream already holds this subject's message
_H_EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
_WATCH_INACTIVE_S = 5.0


class StreamSettings(msgspec.Struct, frozen=True, kw_only=True):
    """How a team's streams are stored; R3 on a cluster for fault tolerance."""

    replicas: int = 1
    dedupe_window_s: float = 120.0
    results_max_age_s: float = 24 * 3600.0
    dead_max_age_s: float = 7 * 24 * 3600.0
    dead_max_msgs: int = 100_000  # a flood of bad input keeps the newest, never fills the disk
    dead_max_bytes: int = 256 * 1024 * 1024
    max_payload: int | None = None


class PubAck(msgspec.Struct, frozen=True, kw_only=True):
    stream: str
    seq: int
    duplicate: bool


_TRANSIENT = (
    nats.errors.NoRespondersError,
    nats.errors.TimeoutError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
)


# quick first tries (a new leader may already be there), then at most 1 s apart
_LEADER_ELECTION = Backoff(initial_s=0.05, max_s=1.0)


async def _retrying(what: str, call: Callable[[], Awaitable[T]], *, timeout: float) -> T:
    """Retry a JetStream call through leader elections until ``timeout``.

    While a cluster re-elects a stream or meta leader (a node died), requests get no
    responder or time out; only calls that are idempotent (stream config, publishes
    carrying a ``Nats-Msg-Id``) go through here.
    """
    return await retrying(
        f"JetStream {what}",
        call,
        retry_on=_TRANSIENT,
        timeout=timeout,
        backoff=_LEADER_ELECTION,
        hint="no stream leader?",
    )


async def ensure_stream(
    bus: Bus, config: api.StreamConfig, *, timeout: float = 20.0, update: bool = True
) -> api.StreamInfo:
    """Create the stream, or bring an existing one to this configuration.

    With ``update=False`` (agents and clients) an existing stream is taken as it is, found
    with STREAM.INFO alone: on a secured bus only the operator may create or change streams,
    so a member never needs, nor is granted, more than reading their info.
    """
    name = str(config.name)

    async def attempt() -> api.StreamInfo:
        if not update:
            try:
                return await bus.js.stream_info(name)
            except nats.js.errors.NotFoundError:
                pass
        try:
            return await bus.js.add_stream(config)
        except nats.js.errors.BadRequestError as err:
            if err.err_code != _STREAM_IN_USE:
                raise BusError(f"cannot create stream {name}: {err.description}") from err
            if not update:  # created by someone else in between
                return await bus.js.stream_info(name)
            return await bus.js.update_stream(config)

    try:
        return await _retrying(f"creating stream {name}", attempt, timeout=timeout)
    except BusError as err:
        if update:
            raise
        raise BusError(
            f"{err}; on a secured bus the operator creates the team's streams "
            "(`lmteams bus up --team T` or `lmteams up`) before agents and clients start"
        ) from err


async def ensure_team_streams(
    bus: Bus, subjects: Subjects, settings: StreamSettings | None = None, *, update: bool = True
) -> None:
    """The streams of a team: tasks (work queue), results, dead letters, jobs, job results.

    ``update=False`` keeps streams that exist as they are (see ``ensure_stream``).
    """
    s = settings or StreamSettings()
    ensure = functools.partial(ensure_stream, update=update)
    await ensure(
        bus,
        api.StreamConfig(
            name=subjects.tasks_stream,
            subjects=[subjects.tasks],
            retention=api.RetentionPolicy.WORK_QUEUE,
            storage=api.StorageType.FILE,
            num_replicas=s.replicas,
            duplicate_window=s.dedupe_window_s,
            max_msg_size=s.max_payload or -1,
        ),
    )
    await ensure(
        bus,
        api.StreamConfig(
            name=subjects.results_stream,
            subjects=[subjects.all(SubjectKind.RESULTS)],
            retention=api.RetentionPolicy.LIMITS,
            storage=api.StorageType.FILE,
            num_replicas=s.replicas,
            duplicate_window=s.dedupe_window_s,
            # A task has one result, and the server keeps the first: a later publish on the
            # same subject (a forged raw publish included) is refused, not stored over it.
            max_msgs_per_subject=1,
            discard=api.DiscardPolicy.NEW,
            discard_new_per_subject=True,
            allow_direct=True,  # duplicate checks read by direct get: light on the server
            max_age=s.results_max_age_s,
        ),
    )
    await ensure(
        bus,
        api.StreamConfig(
            name=subjects.dead_stream,
            subjects=[subjects.all(SubjectKind.DEAD)],
            retention=api.RetentionPolicy.LIMITS,
            storage=api.StorageType.FILE,
            num_replicas=s.replicas,
            max_age=s.dead_max_age_s,
            max_msgs=s.dead_max_msgs,
            max_bytes=s.dead_max_bytes,
            discard=api.DiscardPolicy.OLD,
        ),
    )
    await ensure(
        bus,
        api.StreamConfig(
            name=subjects.jobs_stream,
            subjects=[subjects.job_requests, subjects.job_reports],
            retention=api.RetentionPolicy.LIMITS,
            storage=api.StorageType.FILE,
            num_replicas=s.replicas,
            duplicate_window=s.dedupe_window_s,
            max_age=s.results_max_age_s,
        ),
    )
    await ensure(
        bus,
        api.StreamConfig(
            name=subjects.job_results_stream,
            subjects=[f"{subjects.root}.jobs.result.>"],
            retention=api.RetentionPolicy.LIMITS,
            storage=api.StorageType.FILE,
            num_replicas=s.replicas,
            duplicate_window=s.dedupe_window_s,
            max_msgs_per_subject=1,  # a job has one result: the first is kept
            discard=api.DiscardPolicy.NEW,
            discard_new_per_subject=True,
            allow_direct=True,
            max_age=s.results_max_age_s,
        ),
    )
    log.debug("bus.streams_ready", team=subjects.team, replicas=s.replicas)


async def publish_durable(
    bus: Bus,
    subject: str,
    body: msgspec.Struct,
    *,
    msg_id: str,
    sender: str | None = None,
    trace: str | None = None,
    json: bool = False,
    timeout: float = 5.0,
    once: bool = False,
) -> PubAck:
    """Publish into JetStream and wait for the stream's ack.

    ``msg_id`` becomes ``Nats-Msg-Id``: a second publish with the same id inside the dedupe
    window is acknowledged as a duplicate and stored once, which is what makes retrying
    through a leader election safe.

    ``once`` stores the message only if ``subject`` holds none yet (the server's optimistic
    concurrency, ``Nats-Expected-Last-Subject-Sequence: 0``), whatever the dedupe window:
    a later publish raises ``RevisionMismatchError`` and the stored message stays. The server
    checks this before the msg id, so a retry of a publish that was stored (its ack lost in a
    leader election) raises it too: either way, what is stored is the first message.
    """
    headers = bus.headers_for(body, sender=sender, trace=trace, msg_id=msg_id, json=json)
    if once:
        headers[_H_EXPECTED_LAST_SUBJECT_SEQ] = "0"
    data = encode_json(body) if json else encode(body)
    if len(data) > bus.nc.max_payload:  # nats-py would raise a bare MaxPayloadError
        raise EncodeError(
            f"message to {subject} is {len(data)} bytes, over the server's max_payload of "
            f"{bus.nc.max_payload} bytes: send less, or raise max_payload in the server config"
        )

    async def attempt() -> PubAck:
        try:
            return await _publish_acked(bus, subject, data, headers, timeout=min(timeout, 2.0))
        except nats.js.errors.APIError as err:
            if err.err_code == _SUBJECT_FULL or (once and err.err_code in _WRONG_LAST_SEQUENCE):
                raise RevisionMismatchError(
                    f"{subject} already holds a message; it is written once and was kept"
                ) from err
            raise BusError(
                f"JetStream refused the publish to {subject}: {err.description}"
            ) from err

    return await _retrying(f"publishing to {subject}", attempt, timeout=timeout)


class _PubAckReply(msgspec.Struct):
    """JetStream's answer to a publish: an ack, or an ``error`` object."""

    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: dict[str, Any] | None = None


_PUB_ACK = msgspec.json.Decoder(_PubAckReply)


async def _publish_acked(
    bus: Bus, subject: str, data: bytes, headers: dict[str, str], *, timeout: float
) -> PubAck:
    """``js.publish`` on the bus's own request path (the reply resolved where it is read).

    The same protocol and errors as nats-py's: an ``error`` reply raises the matching
    ``nats.js.errors.APIError``, nobody listening raises ``NoStreamResponseError``.
    """
    try:
        msg = await bus.nc.fast_request(subject, data, timeout=timeout, headers=headers)
    except nats.errors.NoRespondersError:
        raise nats.js.errors.NoStreamResponseError from None
    reply = _PUB_ACK.decode(msg.data)
    if reply.error is not None:
        nats.js.errors.APIError.from_error(reply.error)  # raises the specific error
    return PubAck(stream=reply.stream, seq=reply.seq, duplicate=reply.duplicate)


class KVEntry(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    value: bytes
    revision: int
    deleted: bool = False  # only a watch reports deletions


class KV:
    """A JetStream KV bucket with compare-and-set and per-key TTL.

    Reads go to the stream leader or a direct-get replica; KV does not promise
    read-your-writes across clients, so callers decide by revisions, never by re-reading.
    """

    def __init__(self, bus: Bus, kv: KeyValue, bucket: str) -> None:
        self._bus = bus
        self._kv = kv
        self.bucket = bucket
        self._prefix = f"$KV.{bucket}."

    async def get(self, key: str) -> KVEntry | None:
        """The live value of ``key``, or None when absent, deleted or expired."""
        try:
            entry = await self._kv.get(key)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        except nats.errors.Error as err:  # no answer (a timeout, or a permission refused)
            raise BusError(f"cannot read {self.bucket}/{key}: {err!r}") from err
        return KVEntry(key=key, value=entry.value or b"", revision=entry.revision or 0)

    async def create(self, key: str, value: bytes, *, ttl: float | None = None) -> int:
        """Write only if ``key`` is absent; return the revision (a fencing token).

        Raises ``RevisionMismatchError`` when someone else holds the key.
        """
        try:
            return await self._kv.create(key, value, msg_ttl=ttl)
        except nats.js.errors.KeyWrongLastSequenceError as err:
            raise RevisionMismatchError(f"{self.bucket}/{key} already exists") from err
        except nats.errors.Error as err:  # no answer (a timeout, or a permission refused)
            raise BusError(f"cannot create {self.bucket}/{key}: {err!r}") from err

    async def update(
        self, key: str, value: bytes, *, revision: int, ttl: float | None = None
    ) -> int:
        """Write only if the key is still at ``revision``; return the new revision.

        Renewing with a ``ttl`` restarts the key's time to live (nats-py's ``update`` cannot,
        so the expected-revision header is set here).
        """
        headers = {_H_EXPECTED_LAST_SUBJECT_SEQ: str(revision)}
        try:
            ack = await self._bus.js.publish(
                self._prefix + key, value, headers=headers, msg_ttl=ttl
            )
        except nats.js.errors.APIError as err:
            if err.err_code in _WRONG_LAST_SEQUENCE:
                raise RevisionMismatchError(
                    f"{self.bucket}/{key} is no longer at revision {revision}"
                ) from err
            raise
        return int(ack.seq)

    async def put(self, key: str, value: bytes) -> int:
        return await self._kv.put(key, value)

    async def delete(self, key: str, *, revision: int | None = None) -> None:
        try:
            await self._kv.delete(key, last=revision)
        except nats.js.errors.APIError as err:
            if err.err_code in _WRONG_LAST_SEQUENCE:
                raise RevisionMismatchError(f"{self.bucket}/{key} changed") from err
            raise

    @contextlib.asynccontextmanager
    async def watch(self, keys: str = ">") -> AsyncIterator[AsyncIterator[KVEntry | None]]:
        """Every current value matching ``keys``, then ``None`` once, then each change.

        A deleted or purged key arrives with an empty value and ``deleted`` set. The
        watcher is an ordered consumer: it resumes by itself after a reconnect.
        """
        try:
            # the server drops the watch's consumer this soon after it is stopped (nats-py's
            # default keeps it 5 minutes, and nats-server caps consumers per stream)
            watcher = await self._kv.watch(keys, inactive_threshold=_WATCH_INACTIVE_S)
        except nats.errors.Error as err:
            raise BusError(f"cannot watch {self.bucket}/{keys}: {err!r}") from err

        async def entries() -> AsyncIterator[KVEntry | None]:
            while True:
                try:
                    entry = await watcher.updates(timeout=3600.0)  # type: ignore[no-untyped-call]
                except nats.errors.TimeoutError:
                    continue
                if entry is None:
                    yield None
                    continue
                yield KVEntry(
                    key=entry.key,
                    value=entry.value or b"",
                    revision=entry.revision or 0,
                    deleted=entry.operation is not None,
                )

        try:
            yield entries()
        finally:
            with contextlib.suppress(nats.errors.Error):
                await watcher.stop()  # type: ignore[no-untyped-call]

    async def keys(self) -> list[str]:
        try:
            return list(await self._kv.keys())
        except nats.js.errors.NoKeysError:
            return []


async def open_kv(
    bus: Bus,
    bucket: str,
    *,
    ttl: float | None = None,
    history: int = 1,
    replicas: int = 1,
    write_once: bool = False,
) -> KV:
    """Open a KV bucket, creating it if absent (per-key TTL is always allowed).

    ``write_once`` makes the server refuse any write to a key that holds a value
    (``discard_new_per_subject`` on the bucket's stream): ``create`` is only a client-side
    promise, and a plain publish on ``$KV.<bucket>.<key>`` would replace the value. Only an
    identity that may change streams can set it; anyone else gets the bucket as it is.
    """
    try:
        try:
            kv = await bus.js.key_value(bucket)
        except nats.js.errors.BucketNotFoundError:
            kv = await bus.js.create_key_value(
                bucket=bucket, ttl=ttl, history=history, replicas=replicas
            )
        if write_once:
            await _make_write_once(bus, f"KV_{bucket}")
    except nats.errors.Error as err:  # no JetStream, no answer, or a permission refused
        raise BusError(f"cannot open KV bucket {bucket}: {err!r}") from err
    return KV(bus, kv, bucket)


async def _make_write_once(bus: Bus, stream: str) -> None:
    config = (await bus.js.stream_info(stream)).config
    if config.discard_new_per_subject:
        return
    try:
        await bus.js.update_stream(dataclasses.replace(config, discard_new_per_subject=True))
    except nats.errors.Error as err:  # not ours to change (a member on a secured bus)
        log.warning("bus.kv_not_write_once", stream=stream, error=repr(err))
