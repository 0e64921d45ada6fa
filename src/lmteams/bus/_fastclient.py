"""nats-py's client, lean on the paths every lmteams message takes.

- Headers: nats-py encodes and parses every header in Python with per-character work. The
  subclass keeps nats-py's exact bytes and parse results (property tests compare them) with
  less work, and an lmteams message, whose only header is the envelope, is written in one
  step (``publish_enveloped``) and read by a one-line fast path.
- Flush: nats-py's ``_send_ping`` writes PING straight to the socket, ahead of commands still
  in the pending buffer, so ``flush()`` could return before the server had seen a SUB sent
  just before it (a request right after ``subscribe`` then found no responders, about one
  run in twenty). Here PING queues behind pending commands: a PONG means all were processed.
- Requests: nats-py delivers a reply through the reply subscription's queue to that
  subscription's task, which resolves the caller's future, which ``asyncio.wait_for`` wraps
  in one more, with a timer per request. ``fast_request`` resolves the caller's future in
  the reading task itself, and one timer, set for the earliest deadline, expires them all.
  Closing the connection fails the requests still waiting, at once, with
  ``ConnectionClosedError`` (nats-py leaves its own to their timeouts).

The class overrides private methods of nats-py, so it is pinned to the releases it was read
against (``NATS_PY_RANGE``, the bound in pyproject.toml): a test fails on any other.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from typing import Any

import nats.errors
from nats.aio.client import NO_RESPONDERS_STATUS, PING_PROTO, Client
from nats.aio.msg import Msg
from nats.errors import BadHeaderError
from nats.js.api import Header
from nats.protocol.command import hpub_cmd

__all__ = ("FastClient", "parse_header_lines", "encode_header_block", "NATS_PY_RANGE")

NATS_PY_RANGE = ("2.9", "2.17")
"""nats-py releases [low, high) whose private methods this client was checked against."""

_CRLF = b"\r\n"
_WHITESPACE = re.compile(r"\s")
_BAD_SUBJECT = re.compile(r"[ \t\r\n]")  # nats-py's publish-side check: no protocol injection
_HEADER_KEY = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # nats-py's rule for names
_NEWLINES = str.maketrans({"\r": " ", "\n": " "})
_valid_keys: set[str] = set()
_ENVELOPE_LINE = b"Lmt: "


def encode_header_block(headers: dict[str, str]) -> bytearray:
    """Byte for byte what nats-py's ``_send_publish`` writes, with one encode per block."""
    lines = ["NATS/1.0\r\n"]
    for k, v in headers.items():
        key = k.strip()
        if not key:
            continue
        if key not in _valid_keys:
            if not _HEADER_KEY.fullmatch(key):
                raise BadHeaderError(key)
            _valid_keys.add(key)
        lines.append(f"{key}: {v.strip().translate(_NEWLINES)}\r\n")
    lines.append("\r\n")
    return bytearray("".join(lines).encode())


def parse_header_lines(raw: bytes) -> dict[str, str]:
    """Same result as ``nats.aio.client.Client._parse_header_lines`` for every input."""
    if (
        raw.startswith(_ENVELOPE_LINE)
        and raw.find(_CRLF) == len(raw) - 4
        and raw.endswith(b"\r\n\r\n")
    ):  # lmteams' own messages: the envelope line alone
        return {"Lmt": raw[4:-4].strip().decode("utf-8", "replace")}
    out: dict[str, str] = {}
    for line in raw.split(_CRLF):
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        try:
            key = name.strip().decode("ascii")
        except UnicodeDecodeError:
            continue
        if _WHITESPACE.search(key):
            continue
        out[key] = value.strip().decode("utf-8", "replace")
    return out


class FastClient(Client):
    """A nats-py ``Client`` with cheaper headers and replies resolved where they are read."""

    _parse_header_lines = staticmethod(parse_header_lines)

    def __init__(self) -> None:
        super().__init__()
        self._waiting: dict[str, tuple[asyncio.Future[Msg], float]] = {}
        self._tokens = itertools.count()
        self._mux_prefix = ""  # "<inbox prefix>.<nuid>." once the reply subscription exists
        self._mux_sid = -1
        self._expiry: asyncio.TimerHandle | None = None
        self._expiry_at = 0.0

    async def publish_enveloped(
        self, subject: str, payload: bytes, *, envelope: str, reply: str = ""
    ) -> None:
        """``publish`` with the envelope as the only header, checked as nats-py checks."""
        if not subject or _BAD_SUBJECT.search(subject) or (reply and _BAD_SUBJECT.search(reply)):
            raise nats.errors.BadSubjectError
        if self.is_closed:
            raise nats.errors.ConnectionClosedError
        if self.is_draining_pubs:
            raise nats.errors.ConnectionDrainingError
        size = len(payload)
        if not self.is_connected and (
            self._max_pending_size <= 0 or size + self._pending_data_size > self._max_pending_size
        ):
            raise nats.errors.OutboundBufferLimitError
        if size > self._max_payload:
            raise nats.errors.MaxPayloadError
        header = f"NATS/1.0\r\nLmt: {envelope.strip().translate(_NEWLINES)}\r\n\r\n".encode()
        await self._write_hpub(subject, reply, header, payload)

    async def fast_request(
        self,
        subject: str,
        payload: bytes,
        *,
        timeout: float,
        envelope: str = "",
        headers: dict[str, str] | None = None,
    ) -> Msg:
        """``request``, one hop shorter; same errors (``TimeoutError``, ``NoRespondersError``).

        ``envelope`` alone is the hot path (one header, written in one step); ``headers``
        (JetStream publishes with their expectations, direct gets) are encoded as nats-py does.
        """
        if self.is_draining_pubs:
            raise nats.errors.ConnectionDrainingError
        if not self._mux_prefix:
            await self._open_mux()
        loop = asyncio.get_running_loop()
        token = f"{next(self._tokens):x}"
        future: asyncio.Future[Msg] = loop.create_future()
        deadline = loop.time() + timeout
        self._waiting[token] = (future, deadline)
        if self._expiry is None or deadline < self._expiry_at:
            self._expire_at(loop, deadline)
        try:
            reply = self._mux_prefix + token
            if headers is None:
                await self.publish_enveloped(subject, payload, envelope=envelope, reply=reply)
            else:
                await self.publish(subject, payload, reply=reply, headers=headers)
            msg = await future
        finally:
            del self._waiting[token]
        if msg.headers and msg.headers.get(Header.STATUS) == NO_RESPONDERS_STATUS:
            raise nats.errors.NoRespondersError
        return msg

    async def _close(self, status: int, do_cbs: bool = True) -> None:
        try:
            await super()._close(status, do_cbs)
        finally:
            self._fail_waiting()

    def _fail_waiting(self) -> None:
        """A closed connection will never carry the replies: fail their callers now."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        for future, _deadline in self._waiting.values():
            if not future.done():
                future.set_exception(nats.errors.ConnectionClosedError())

    def _expire_at(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        self._expiry_at = when
        self._expiry = loop.call_at(when, self._expire, loop)

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        """Fail the requests past their deadline; wake again at the earliest one left."""
        self._expiry = None
        now = loop.time()
        earliest = float("inf")
        for future, deadline in self._waiting.values():
            if future.done():
                continue
            if deadline <= now:
                future.set_exception(nats.errors.TimeoutError())
            elif deadline < earliest:
                earliest = deadline
        if earliest != float("inf"):
            self._expire_at(loop, earliest)

    async def _open_mux(self) -> None:
        # the prefix is set before the first await so concurrent first requests share one
        # subscription; until its sid is known, replies take the subscription's callback
        self._mux_prefix = f"{self._inbox_prefix.decode()}.{self._nuid.next().decode()}."
        sub = await self.subscribe(self._mux_prefix + "*", cb=self._resolve_queued)
        self._mux_sid = sub._id

    async def _resolve_queued(self, msg: Msg) -> None:
        self._resolve(msg.subject[len(self._mux_prefix) :], msg)

    def _resolve(self, token: str, msg: Msg) -> None:
        waiting = self._waiting.get(token)
        if waiting is not None and not waiting[0].done():
            waiting[0].set_result(msg)

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes
    ) -> None:
        if sid != self._mux_sid:
            await super()._process_msg(sid, subject, reply, data, headers)
            return
        self.stats["in_msgs"] += 1
        self.stats["in_bytes"] += len(data)
        msg = self._build_message(sid, subject, reply, data, await self._process_headers(headers))
        self._resolve(msg.subject[len(self._mux_prefix) :], msg)

    async def _send_ping(self, future: asyncio.Future[Any] | None = None) -> None:
        self._pongs.append(future if future is not None else asyncio.Future())
        await self._send_command(PING_PROTO)  # behind what is pending, never ahead of it
        await self._flush_pending()

    async def _send_publish(
        self,
        subject: str,
        reply: str,
        payload: bytes,
        payload_size: int,
        headers: dict[str, Any] | None,
    ) -> None:
        if headers is None or not subject:
            await super()._send_publish(subject, reply, payload, payload_size, headers)
            return
        await self._write_hpub(subject, reply, encode_header_block(headers), payload)

    async def _write_hpub(
        self, subject: str, reply: str, header: bytes | bytearray, payload: bytes
    ) -> None:
        """Queue one HPUB and wake the flusher, as nats-py's ``_send_publish`` does."""
        self.stats["out_msgs"] += 1
        self.stats["out_bytes"] += len(payload)
        await self._send_command(hpub_cmd(subject, reply, header, payload))
        if self._flush_queue is not None and self._flush_queue.empty():
            await self._flush_pending()
