"""The envelope: what every lmteams message carries in its NATS headers.

Routing facts live in headers, not the body, so a router, a tracer or a plain
``nats sub`` can see who sent what without decoding MessagePack.
"""

from __future__ import annotations

import itertools
import os
import re

import msgspec

from lmteams.errors import DecodeError

__all__ = (
    "Envelope",
    "LamportClock",
    "new_id",
    "check_envelope",
    "SCHEMA_VERSION",
    "MSGPACK",
    "JSON",
    "H_ENVELOPE",
    "H_CONTENT_TYPE",
    "H_MSG_ID",
)

SCHEMA_VERSION = 1
MSGPACK = "application/msgpack"
JSON = "application/json"

# One header carries the whole envelope, space-separated: "<schema> <type> <id> <sender>
# <trace> <clock>". nats-py handles headers one by one in Python, and seven separate headers
# cost more than the whole round trip (see benchmarks/bus_overhead.py); one header is cheap
# to write and to split for any client.
H_ENVELOPE = "Lmt"
H_CONTENT_TYPE = "Content-Type"  # sent only for JSON; MessagePack is the default
H_MSG_ID = "Nats-Msg-Id"  # JetStream's dedupe key, sent only on durable publishes
_FIELDS = 6

# what a well-formed header of this version looks like: a tag, an id, a sender and a trace
# without spaces, and a Lamport clock that fits in 64 bits
_WELL_FORMED = re.compile(rf"{SCHEMA_VERSION} [^ ]+ [^ ]+ [^ ]+ [^ ]+ [0-9]{{1,19}}")
_SCHEMA_NUMBER = re.compile(r"[0-9]{1,9}")


class _Ids:
    """The per-process id prefix and counter, in one object a forked child can re-seed."""

    __slots__ = ("counter", "prefix")

    def __init__(self) -> None:
        self.reseed()

    def reseed(self) -> None:
        self.prefix = f"{os.getpid():x}{os.urandom(4).hex()}"
        self.counter = itertools.count()


_ids = _Ids()
# A forked child inherits the parent's prefix and counter: without a new prefix its ids
# (task ids, ``Nats-Msg-Id``) would repeat the parent's and JetStream would drop them as
# duplicates.
os.register_at_fork(after_in_child=_ids.reseed)


def new_id() -> str:
    """A process-unique, roughly sortable id; cheap enough for every message.

    uuid4 costs a syscall-backed random read per call; a random per-process prefix plus a
    counter is unique across processes (forked children re-seed) and one order of magnitude
    faster on the hot path.
    """
    return f"{_ids.prefix}{next(_ids.counter):x}"


def check_envelope(raw: str) -> None:
    """Refuse an ``Lmt`` header this agent cannot read: another schema version, or malformed.

    Called for every received message, so the common case is one regular-expression match.
    The error names the header (``Lmt``) where body errors name a JSON path.
    """
    if _WELL_FORMED.fullmatch(raw):
        return
    fields = raw.split(" ")
    if not _SCHEMA_NUMBER.fullmatch(fields[0]):
        schema = fields[0][:20]
        reason = f"malformed {H_ENVELOPE} header: the schema version {schema!r} is not a number"
    elif int(fields[0]) != SCHEMA_VERSION:
        reason = f"unsupported schema version {int(fields[0])}, this agent speaks {SCHEMA_VERSION}"
    else:
        reason = (
            f"malformed {H_ENVELOPE} header: expected {_FIELDS} space-separated fields "
            "'<schema> <type> <id> <sender> <trace> <clock>' with a numeric clock, "
            f"got {raw[:80]!r}"
        )
    raise DecodeError(reason, field=H_ENVELOPE)


class Envelope(msgspec.Struct, frozen=True, kw_only=True):
    """Header fields of one message."""

    type: str = ""
    id: str = ""
    sender: str = ""
    trace: str = ""
    clock: int = 0
    schema: int = SCHEMA_VERSION
    content_type: str = MSGPACK

    @property
    def is_json(self) -> bool:
        return self.content_type.startswith(JSON)

    def header_value(self) -> str:
        return f"{self.schema} {self.type} {self.id} {self.sender} {self.trace} {self.clock}"

    def to_headers(self) -> dict[str, str]:
        headers = {H_ENVELOPE: self.header_value()}
        if self.content_type != MSGPACK:
            headers[H_CONTENT_TYPE] = self.content_type
        return headers

    @classmethod
    def from_headers(cls, headers: dict[str, str] | None) -> Envelope:
        """Read an envelope, tolerating plain clients that send few or no headers.

        A message with no ``Content-Type`` is MessagePack when it carries the lmteams
        envelope and JSON otherwise (a ``nats pub`` by hand).
        """
        if not headers:
            return _PLAIN_JSON
        raw = headers.get(H_ENVELOPE)
        content_type = headers.get(H_CONTENT_TYPE) or (MSGPACK if raw else JSON)
        if raw:
            parts = raw.split(" ")
            if len(parts) == _FIELDS:
                schema, type_, id_, sender, trace, clock = parts
                return cls(
                    type=type_,
                    id=id_,
                    sender=sender,
                    trace=trace,
                    clock=_to_int(clock),
                    schema=_to_int(schema, SCHEMA_VERSION),
                    content_type=content_type,
                )
        return cls(id=headers.get(H_MSG_ID, ""), content_type=content_type)


_PLAIN_JSON = Envelope(content_type=JSON)


def _to_int(value: str | None, default: int = 0) -> int:
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        return default


class LamportClock:
    """A Lamport logical clock: happens-before order across agents without synchronised time.

    Confined to the event loop of its connection (no lock): every send and receive of a
    ``Bus`` runs there.
    """

    __slots__ = ("_time",)

    def __init__(self) -> None:
        self._time = 0

    @property
    def time(self) -> int:
        return self._time

    def tick(self) -> int:
        """Advance for a local event (a send) and return the new time."""
        self._time += 1
        return self._time

    def observe(self, remote: int) -> int:
        """Merge a received timestamp: max(local, remote) + 1."""
        self._time = (remote if remote > self._time else self._time) + 1
        return self._time
