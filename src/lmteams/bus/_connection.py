"""``open_bus``: a narrow, typed face over nats-py.

nats-py's client exposes dozens of knobs; lmteams code sees publish, subscribe and request
on msgspec Structs, with the envelope in headers, strict decoding, and NATS errors mapped to
lmteams errors. The embedded server starts here when no URL is given.
"""

from __future__ import annotations

import contextlib
import functools
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from enum import StrEnum
from typing import Any, Generic, TypeVar

import anyio
import msgspec
import nats
import nats.errors
import structlog
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription

from lmteams import tracing
from lmteams.bus._backoff import Backoff
from lmteams.bus._codec import Codec, ErrorReply, encode, encode_json, type_tag
from lmteams.bus._envelope import (
    H_CONTENT_TYPE,
    H_ENVELOPE,
    H_MSG_ID,
    JSON,
    SCHEMA_VERSION,
    Envelope,
    LamportClock,
    check_envelope,
    new_id,
)
from lmteams.bus._fastclient import FastClient
from lmteams.bus._security import identity_of
from lmteams.bus._server import EmbeddedServer, ServerConfig, run_server
from lmteams.bus._subjects import inbox_prefix as inbox_prefix_of
from lmteams.bus._subjects import is_reply_address
from lmteams.errors import (
    ConfigError,
    DecodeError,
    EncodeError,
    NoRespondersError,
    NotConnectedError,
    RemoteError,
    RequestTimeoutError,
)

__all__ = (
    "Bus",
    "BusState",
    "BusStatistics",
    "Incoming",
    "Handler",
    "Subscription",
    "open_bus",
    "is_json",
    "RawMsg",
    "ENV_URL",
)

log = structlog.get_logger(__name__)
T = TypeVar("T")
ENV_URL = "LMTEAMS_NATS_URL"
_ENVELOPE_FIELDS = 6
_SCHEMA = str(SCHEMA_VERSION)
_DRAIN_S = 5.0  # what a closing connection may spend delivering what it already received


class BusState(StrEnum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


class BusStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of one connection's counters."""

    state: BusState
    server: str
    published: int
    received: int
    requests: int
    decode_errors: int
    handler_errors: int
    disconnects: int
    reconnects: int
    clock: int
    permission_violations: int = 0


class Incoming(Generic[T]):
    """One received message: decoded body, envelope, and the means to reply or ack.

    The envelope is parsed on first use: most handlers never read it.
    """

    __slots__ = ("_bus", "_envelope", "body", "msg")

    def __init__(self, bus: Bus, msg: Msg, body: T) -> None:
        self._bus = bus
        self.msg = msg
        self.body = body
        self._envelope: Envelope | None = None

    @property
    def envelope(self) -> Envelope:
        if self._envelope is None:
            self._envelope = Envelope.from_headers(self.msg.headers)
        return self._envelope

    @property
    def trace(self) -> str:
        """The trace id, read without building the whole envelope (hot path)."""
        headers = self.msg.headers
        raw = headers.get(H_ENVELOPE) if headers else None
        fields: list[str] = raw.split(" ") if raw else []
        return fields[4] if len(fields) == _ENVELOPE_FIELDS else ""

    @property
    def subject(self) -> str:
        return str(self.msg.subject)

    @property
    def reply(self) -> str:
        return str(self.msg.reply)

    async def respond(self, body: msgspec.Struct, *, sender: str | None = None) -> None:
        """Reply in the caller's encoding (JSON callers get JSON), keeping its trace id."""
        msg = self.msg
        if not _may_reply(msg):
            return
        headers = msg.headers
        await self._bus.publish(
            msg.reply, body, sender=sender, trace=self.trace or None, json=is_json(headers)
        )


def _may_reply(msg: Msg) -> bool:
    """Whether ``msg`` has a reply subject an agent may publish on (logged when refused)."""
    if not msg.reply:
        return False
    if not is_reply_address(msg.reply):
        log.warning("bus.reply_refused", subject=msg.subject, reply=msg.reply[:200])
        return False
    return True


def is_json(headers: dict[str, str] | None) -> bool:
    """Whether a message with these headers carries a JSON body (else MessagePack)."""
    return _is_json(headers, headers.get(H_ENVELOPE) if headers else None)


def _is_json(headers: dict[str, str] | None, envelope: str | None) -> bool:
    """JSON when the sender says so, or when a plain client sent no lmteams envelope."""
    if not headers:
        return True
    content_type = headers.get(H_CONTENT_TYPE)
    if content_type is None:
        return envelope is None
    return content_type.startswith(JSON)


Handler = Callable[[Incoming[Any]], Awaitable[None]]
RawMsg = Msg
"""A raw NATS message, as dead-letter and decode-error callbacks receive it."""
DecodeErrorHandler = Callable[[Msg, DecodeError], Awaitable[None]]


class Subscription:
    """A live subscription; ``unsubscribe`` is idempotent."""

    __slots__ = ("_sub", "subject")

    def __init__(self, sub: NatsSubscription, subject: str) -> None:
        self._sub = sub
        self.subject = subject

    async def unsubscribe(self) -> None:
        with contextlib.suppress(
            nats.errors.BadSubscriptionError, nats.errors.ConnectionClosedError
        ):
            await self._sub.unsubscribe()


@functools.lru_cache(maxsize=256)
def _reply_codec(types: tuple[type[Any], ...]) -> Codec[Any]:
    return Codec(*types, ErrorReply)


class Bus:
    """A connection to NATS speaking lmteams' envelope. Create with ``open_bus``."""

    def __init__(self, nc: FastClient, *, name: str, js_domain: str | None = None) -> None:
        self.nc = nc
        self.js = nc.jetstream(domain=js_domain) if js_domain else nc.jetstream()
        self.name = name.replace(" ", "_")  # the envelope header is space-separated
        self.clock = LamportClock()
        self.state = BusState.CONNECTED
        self._published = 0
        self._received = 0
        self._requests = 0
        self._decode_errors = 0
        self._handler_errors = 0
        self._disconnects = 0
        self._reconnects = 0
        self._permission_violations = 0

    # --- envelope --------------------------------------------------------------------------
    def headers_for(
        self,
        body: msgspec.Struct,
        *,
        sender: str | None = None,
        trace: str | None = None,
        msg_id: str | None = None,
        json: bool = False,
    ) -> dict[str, str]:
        """The envelope headers for one outgoing message (ticks the Lamport clock)."""
        headers = {H_ENVELOPE: self._envelope(body, sender, trace, msg_id)}
        context = tracing.headers()  # W3C trace context of the current span, if tracing is on
        if context is not None:
            headers |= context
        if json:
            headers[H_CONTENT_TYPE] = JSON
        if msg_id:
            headers[H_MSG_ID] = msg_id
        return headers

    def _envelope(
        self, body: msgspec.Struct, sender: str | None, trace: str | None, msg_id: str | None
    ) -> str:
        """The ``Lmt`` header value (ticks the Lamport clock)."""
        mid = msg_id or new_id()
        return (
            f"{_SCHEMA} {type_tag(body)} {mid} {sender or self.name} "
            f"{trace or mid} {self.clock.tick()}"
        )

    def _check_size(self, subject: str, data: bytes) -> None:
        """nats-py refuses a body over the server's ``max_payload`` with a bare error; say which."""
        if len(data) > self.nc.max_payload:
            raise EncodeError(
                f"message to {subject} is {len(data)} bytes, over the server's max_payload of "
                f"{self.nc.max_payload} bytes: send less, or raise max_payload in the server config"
            )

    def _ensure_open(self) -> None:
        if self.nc.is_closed:
            raise NotConnectedError("the bus connection is closed")

    # --- core NATS -------------------------------------------------------------------------
    async def publish(
        self,
        subject: str,
        body: msgspec.Struct,
        *,
        sender: str | None = None,
        trace: str | None = None,
        msg_id: str | None = None,
        json: bool = False,
        reply: str = "",
    ) -> None:
        """Publish one message; fire and forget (use ``request`` or JetStream for delivery)."""
        self._ensure_open()
        data = encode_json(body) if json else encode(body)
        self._check_size(subject, data)
        context = tracing.headers()
        if json or msg_id or context is not None:
            headers = self.headers_for(body, sender=sender, trace=trace, msg_id=msg_id, json=json)
            await self.nc.publish(subject, data, reply=reply, headers=headers)
        else:  # the common case: the envelope is the only header
            envelope = self._envelope(body, sender, trace, None)
            await self.nc.publish_enveloped(subject, data, envelope=envelope, reply=reply)
        self._published += 1

    async def publish_raw(
        self, subject: str, data: bytes, headers: dict[str, str] | None = None
    ) -> None:
        """Publish bytes as they are: for dead letters and for tests of hostile input."""
        self._ensure_open()
        self._check_size(subject, data)
        await self.nc.publish(subject, data, headers=headers)
        self._published += 1

    def decode(self, msg: Msg, codec: Codec[T]) -> T:
        """Decode one raw NATS message strictly; merges the sender's Lamport time."""
        return self.decode_raw(msg.data, msg.headers, codec)

    def decode_raw(self, data: bytes, headers: dict[str, str] | None, codec: Codec[T]) -> T:
        """``decode`` for bytes and headers from elsewhere (JetStream deliveries, stored msgs)."""
        raw = headers.get(H_ENVELOPE) if headers else None
        if raw:
            check_envelope(raw)  # another schema version, or a malformed header: refused
            with contextlib.suppress(ValueError):
                self.clock.observe(int(raw[raw.rfind(" ") + 1 :]))
        try:
            return codec.decode(data, json=_is_json(headers, raw))
        except DecodeError as err:
            fields: list[str] = raw.split(" ") if raw else []
            err.type_tag = fields[1] if len(fields) == _ENVELOPE_FIELDS else ""
            raise

    async def subscribe(
        self,
        subject: str,
        handler: Handler,
        *,
        codec: Codec[Any],
        queue: str = "",
        on_decode_error: DecodeErrorHandler | None = None,
        pending_msgs_limit: int = 65536,
    ) -> Subscription:
        """Call ``handler`` for each message, in order, decoded strictly with ``codec``.

        A message that does not decode never reaches the handler: it is counted, answered
        with an ``ErrorReply`` when it has a reply subject, and passed to ``on_decode_error``
        (the agents layer dead-letters it there). A raising handler is logged and counted,
        and the subscription keeps serving.
        """
        self._ensure_open()

        async def _callback(msg: Msg) -> None:
            self._received += 1
            try:
                body = self.decode(msg, codec)
            except DecodeError as err:
                self._decode_errors += 1
                log.warning(
                    "bus.decode_error", subject=msg.subject, field=err.field, reason=err.reason
                )
                try:
                    if msg.reply:
                        await self._reply_error(msg, "decode", err.reason, field=err.field)
                    if on_decode_error is not None:
                        await on_decode_error(msg, err)
                except Exception:  # refusing one message must not end the subscription
                    self._handler_errors += 1
                    log.exception("bus.decode_error_handler_failed", subject=msg.subject)
                return
            try:
                await handler(Incoming(self, msg, body))
            except Exception as exc:
                self._handler_errors += 1
                log.exception("bus.handler_error", subject=msg.subject)
                if msg.reply:
                    await self._reply_error(msg, "handler", f"{type(exc).__name__}: {exc}")

        sub = await self.nc.subscribe(
            subject, queue=queue, cb=_callback, pending_msgs_limit=pending_msgs_limit
        )
        # Returned subscriptions are live on the server: a request sent right after
        # ``subscribe`` returns must find its responder.
        await self.nc.flush()
        return Subscription(sub, subject)

    async def _reply_error(self, msg: Msg, kind: str, message: str, *, field: str = "") -> None:
        if not _may_reply(msg):
            return
        envelope = Envelope.from_headers(msg.headers)
        with contextlib.suppress(nats.errors.ConnectionClosedError):
            await self.publish(
                msg.reply,
                ErrorReply(kind=kind, message=message[:1000], field=field[:300]),
                trace=envelope.trace or None,
                json=envelope.is_json,
            )

    async def request(
        self,
        subject: str,
        body: msgspec.Struct,
        *,
        expect: type[T],
        timeout: float = 5.0,
        sender: str | None = None,
        trace: str | None = None,
    ) -> T:
        """Send a request and decode its reply as ``expect``.

        An ``ErrorReply`` from the other side raises ``RemoteError``; silence raises
        ``RequestTimeoutError``; nobody listening raises ``NoRespondersError``.
        """
        self._ensure_open()
        envelope = self._envelope(body, sender, trace, None)
        self._requests += 1
        data = encode(body)
        self._check_size(subject, data)
        context = tracing.headers()
        headers = None if context is None else {H_ENVELOPE: envelope} | context
        try:
            msg = await self.nc.fast_request(
                subject, data, timeout=timeout, envelope=envelope, headers=headers
            )
        except nats.errors.NoRespondersError:
            raise NoRespondersError(f"no agent is listening on {subject}") from None
        except nats.errors.TimeoutError:
            raise RequestTimeoutError(f"no reply on {subject} within {timeout:g}s") from None
        except nats.errors.ConnectionClosedError:
            raise NotConnectedError(
                f"the bus connection closed while a request on {subject} waited for its reply"
            ) from None
        self._received += 1
        reply = self.decode(msg, _reply_codec((expect,)))
        if isinstance(reply, ErrorReply):
            raise RemoteError(reply.kind, reply.message, task_id=reply.task_id)
        return reply  # type: ignore[no-any-return]

    async def flush(self, timeout: float = 5.0) -> None:
        await self.nc.flush(timeout=int(max(1, timeout)))

    def statistics(self) -> BusStatistics:
        server = self.nc.connected_url
        return BusStatistics(
            state=self.state,
            server=server.geturl() if server else "",
            published=self._published,
            received=self._received,
            requests=self._requests,
            decode_errors=self._decode_errors,
            handler_errors=self._handler_errors,
            disconnects=self._disconnects,
            reconnects=self._reconnects,
            clock=self.clock.time,
            permission_violations=self._permission_violations,
        )

    # --- connection events (wired by open_bus) ---------------------------------------------
    def _on_disconnected(self) -> None:
        self._disconnects += 1
        if self.state is not BusState.CLOSED:
            self.state = BusState.RECONNECTING

    def _on_reconnected(self) -> None:
        self._reconnects += 1
        self.state = BusState.CONNECTED


class _Reconnect:
    """nats-py's reconnect handler: the least-tried server, after a jittered backoff.

    Without jitter every client of a restarted server reconnects in lock-step.
    """

    def __init__(self) -> None:
        self.backoff = Backoff(initial_s=0.1, max_s=5.0).counter()

    def __call__(self, servers: list[Any], _info: dict[str, Any]) -> tuple[Any, float]:
        server = min(servers, key=lambda s: s.reconnects) if servers else None
        return server, self.backoff.next_delay()

    def reset(self) -> None:
        self.backoff.reset()


class _ConnectionEvents:
    """nats-py's connection callbacks: log every event and keep the Bus state current."""

    def __init__(self, log: Any, backoff: _Reconnect) -> None:
        self.log = log
        self.backoff = backoff
        self.bus: Bus | None = None
        self.connecting = True  # until the first connect succeeds

    async def error(self, exc: Exception) -> None:
        text = f"{exc}"
        if "permissions violation" in text.lower():
            # the server refused one publish or subscribe and keeps the connection: count it
            # so callers (and tests) can see what a credential was not allowed to do
            self.log.warning("bus.permission_denied", error=text)
            if self.bus is not None:
                self.bus._permission_violations += 1
            return
        refused = isinstance(exc, nats.errors.AuthorizationError)
        refused = refused or "authorization violation" in text.lower()
        self.log.warning("bus.error", error=f"{type(exc).__name__}: {text}")
        if refused and self.connecting:
            # nats-py retries a refused first login like a dead server, until the deadline;
            # raising from its error callback ends connect() now (wrong keys will not heal)
            raise nats.errors.AuthorizationError

    async def disconnected(self) -> None:
        closing = self.bus is not None and self.bus.state is BusState.CLOSED
        (self.log.debug if closing else self.log.warning)("bus.disconnected")
        if self.bus is not None:
            self.bus._on_disconnected()

    async def reconnected(self) -> None:
        self.backoff.reset()
        server = self.bus.nc.connected_url if self.bus is not None else None
        self.log.info("bus.reconnected", server=server.geturl() if server else "")
        if self.bus is not None:
            self.bus._on_reconnected()

    async def closed(self) -> None:
        self.log.info("bus.closed")
        if self.bus is not None:
            self.bus.state = BusState.CLOSED

    async def discovered(self) -> None:
        self.log.info("bus.discovered_server")

    async def lame_duck(self) -> None:
        self.log.warning("bus.lame_duck")


def _own_inbox_prefix(nkey_seed: str | None, user: str | None) -> str | None:
    """``_INBOX_<identity>`` for an identity that is one subject token, else nats-py's default
    (a user name with a dot cannot name a prefix, and no generated credential has one)."""
    identity = identity_of(nkey_seed=nkey_seed, user=user)
    if identity is None:
        return None
    with contextlib.suppress(ConfigError):
        return inbox_prefix_of(identity)
    return None


def _split_urls(url: str) -> list[str]:
    return [u.strip() for u in url.split(",") if u.strip()]


@contextlib.asynccontextmanager
async def open_bus(
    url: str | None = None,
    *,
    name: str = "lmteams",
    embedded: ServerConfig | None = None,
    token: str | None = None,
    user: str | None = None,
    password: str | None = None,
    nkey_seed: str | None = None,
    creds: str | None = None,
    tls: ssl.SSLContext | None = None,
    connect_timeout: float = 5.0,
    max_reconnect_attempts: int = -1,
    js_domain: str | None = None,
    inbox_prefix: str | None = None,
) -> AsyncIterator[Bus]:
    """Connect to NATS for the duration of the block, draining on exit.

    ``url`` may list several servers separated by commas (a cluster). With no URL (and no
    ``LMTEAMS_NATS_URL`` in the environment) lmteams starts its embedded nats-server with
    JetStream and stops it on exit. Credentials and TLS are passed through to nats-py.
    ``js_domain`` addresses a hub's JetStream from behind a leaf node.

    Replies come back under ``inbox_prefix``; by default ``_INBOX_<identity>`` for a
    connection that authenticates (its nkey's public key or its user name), so a secured
    bus can allow each identity its own replies only (see ``TeamSecurity``).
    """
    url = url or os.environ.get(ENV_URL) or None
    async with contextlib.AsyncExitStack() as stack:
        server: EmbeddedServer | None = None
        if url is None:
            server = await stack.enter_async_context(run_server(embedded))
            url = server.url
        backoff = _Reconnect()
        events = _ConnectionEvents(log.bind(bus=name), backoff)
        options: dict[str, Any] = {
            "servers": _split_urls(url),
            "name": name,
            "connect_timeout": connect_timeout,
            "max_reconnect_attempts": max_reconnect_attempts,
            "reconnect_to_server_handler": backoff,
            "error_cb": events.error,
            "disconnected_cb": events.disconnected,
            "reconnected_cb": events.reconnected,
            "closed_cb": events.closed,
            "discovered_server_cb": events.discovered,
            "lame_duck_mode_cb": events.lame_duck,
        }
        auth = {"token": token, "user": user, "password": password, "tls": tls}
        auth |= {"nkeys_seed": nkey_seed, "user_credentials": creds}
        options |= {k: v for k, v in auth.items() if v is not None}
        prefix = inbox_prefix or _own_inbox_prefix(nkey_seed, user)
        if prefix:
            options["inbox_prefix"] = prefix
        nc = FastClient()
        # nats-py retries a failing first connect without end; a user who typed a wrong URL
        # wants an error, so the first connect gets a deadline of one timeout per server.
        deadline = connect_timeout * len(options["servers"]) + 1.0
        try:
            with anyio.fail_after(deadline):
                await nc.connect(**options)
        except Exception as exc:
            with contextlib.suppress(Exception):
                await nc.close()
            reason = "no answer in time" if isinstance(exc, TimeoutError) else f"{exc}"
            hint = "Is the server up? (omit --nats to use the embedded server)"
            if isinstance(exc, nats.errors.AuthorizationError) or "uthorization" in reason:
                hint = (
                    "The server refused these credentials: pass --nkey-seed FILE (or "
                    "--user with $LMTEAMS_NATS_PASSWORD) as `lmteams bus up --secure` printed"
                )
            raise NotConnectedError(
                f"cannot connect to NATS at {url}: {type(exc).__name__}: {reason}. {hint}"
            ) from exc
        events.connecting = False
        events.log.info("bus.connected", server=url, embedded=server is not None)
        bus = events.bus = Bus(nc, name=name, js_domain=js_domain)
        try:
            yield bus
        finally:
            bus.state = BusState.CLOSED  # a deliberate close: disconnect events are expected
            # shielded and bounded: a cancelled caller must still close the connection, or
            # nats-py's reader and reconnect tasks outlive the block (and the event loop)
            with anyio.CancelScope(shield=True):
                with anyio.move_on_after(_DRAIN_S), contextlib.suppress(Exception):
                    await nc.drain()
                if not nc.is_closed:
                    with contextlib.suppress(Exception):
                        await nc.close()
