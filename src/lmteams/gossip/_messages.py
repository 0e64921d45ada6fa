"""Wire types of the gossip layer: SWIM probes, their acks, and full-state syncs.

Every protocol message carries the sender's incarnation and a bounded list of piggybacked
``Update`` records, so dissemination costs no messages of its own. Tags are prefixed
``swim_`` because the agents layer already has a ``ping`` on other subjects; a reader of a
``lmt.<team>.gossip.>`` capture can tell them apart.

Anyone on the bus can publish on a member's inbox, so the wire types carry their limits
(``msgspec.Meta``): a member name that is not one subject token, an incarnation that would
overflow when refuted, or a map or update list of unbounded size fails decoding, and the
message is refused before any of it reaches the table.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import msgspec

__all__ = (
    "MemberState",
    "MetaValue",
    "Update",
    "Ping",
    "PingReq",
    "Ack",
    "Sync",
    "SyncState",
    "InboxMessage",
    "MAX_INCARNATION",
)

MAX_INCARNATION = 2**53
"""Incarnations and versions go no higher (a refutation past it stays at it): every value
must still encode, and stay exact for JSON readers."""

MemberName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,128}$")]
"""A member id: one NATS subject token, as ``Subjects.gossip_member`` requires."""
SenderName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{0,128}$")]
"""A sender: a member id, or empty for an observer (``lmteams status``)."""
Counter = Annotated[int, msgspec.Meta(ge=0, le=MAX_INCARNATION)]
MetaKey = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]

MetaValue = Annotated[str, msgspec.Meta(max_length=1024)] | float
"""A value in a member's gossiped map: a label (device, model) or a number (load)."""
Meta = Annotated[dict[MetaKey, MetaValue], msgspec.Meta(max_length=64)]


class MemberState(StrEnum):
    """A member's liveness as one peer believes it; on the wire a plain string.

    The order matters: at equal incarnation a later state wins (``left`` over ``dead`` over
    ``suspect`` over ``alive``), which is what makes merging a join of a lattice.
    """

    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"


RANK: dict[MemberState, int] = {
    MemberState.ALIVE: 0,
    MemberState.SUSPECT: 1,
    MemberState.DEAD: 2,
    MemberState.LEFT: 3,
}


class Update(msgspec.Struct, frozen=True, kw_only=True):
    """What one peer believes about one member: liveness and, optionally, its map.

    ``meta`` is the member's whole map at ``version`` (the maps are small, so the delta of a
    change is the map); ``None`` means this update says nothing about the map.
    """

    member: MemberName
    state: MemberState
    incarnation: Counter
    version: Counter = 0
    meta: Meta | None = None


MAX_UPDATES = 4096  # a whole table in a sync: far above any team lmteams runs
Updates = Annotated[tuple[Update, ...], msgspec.Meta(max_length=MAX_UPDATES)]


class Ping(msgspec.Struct, frozen=True, kw_only=True, tag="swim_ping"):
    """A direct probe, sent as a request to the target's inbox; answered by ``Ack``."""

    sender: SenderName
    incarnation: Counter
    updates: Updates = ()


class PingReq(msgspec.Struct, frozen=True, kw_only=True, tag="swim_ping_req"):
    """Ask a member to probe ``target`` for the sender; answered by ``Ack`` only on success."""

    sender: SenderName
    incarnation: Counter
    target: MemberName
    updates: Updates = ()


class Ack(msgspec.Struct, frozen=True, kw_only=True, tag="swim_ack"):
    """Proof of life: from the target itself, or relayed for a ``PingReq``."""

    sender: SenderName
    incarnation: Counter
    target: SenderName = ""  # the member that answered (differs from sender when relayed)
    updates: Updates = ()


class Sync(msgspec.Struct, frozen=True, kw_only=True, tag="swim_sync"):
    """Anti-entropy push-pull: the sender's whole table, answered by the receiver's.

    A joining member sends it to the seed queue group; members send it to a random peer
    every few periods. An ``observer`` (``lmteams status``) pushes nothing and is not added.
    """

    sender: SenderName
    incarnation: Counter
    members: Updates = ()
    observer: bool = False


class SyncState(msgspec.Struct, frozen=True, kw_only=True, tag="swim_state"):
    """The reply to a ``Sync``: everything the responder knows, maps included."""

    sender: SenderName
    incarnation: Counter
    members: Updates = ()


InboxMessage = Ping | PingReq | Sync
"""What travels on a member's inbox ``lmt.<team>.gossip.swim.<member>``."""
