"""Wire types of the gossip layer: SWIM probes, their acks, and full-state syncs.

Every protocol message carries the sender's incarnation and a bounded list of piggybacked
``Update`` records, so dissemination costs no messages of its own. Tags are prefixed
``swim_`` because the agents layer already has a ``ping`` on other subjects; a reader of a
``lmt.<team>.gossip.>`` capture can tell them apart.
"""

from __future__ import annotations

from enum import StrEnum

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
)

MetaValue = str | float
"""A value in a member's gossiped map: a label (device, model) or a number (load)."""


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

    member: str
    state: MemberState
    incarnation: int
    version: int = 0
    meta: dict[str, MetaValue] | None = None


class Ping(msgspec.Struct, frozen=True, kw_only=True, tag="swim_ping"):
    """A direct probe, sent as a request to the target's inbox; answered by ``Ack``."""

    sender: str
    incarnation: int
    updates: tuple[Update, ...] = ()


class PingReq(msgspec.Struct, frozen=True, kw_only=True, tag="swim_ping_req"):
    """Ask a member to probe ``target`` for the sender; answered by ``Ack`` only on success."""

    sender: str
    incarnation: int
    target: str
    updates: tuple[Update, ...] = ()


class Ack(msgspec.Struct, frozen=True, kw_only=True, tag="swim_ack"):
    """Proof of life: from the target itself, or relayed for a ``PingReq``."""

    sender: str
    incarnation: int
    target: str = ""  # the member that answered (differs from sender when relayed)
    updates: tuple[Update, ...] = ()


class Sync(msgspec.Struct, frozen=True, kw_only=True, tag="swim_sync"):
    """Anti-entropy push-pull: the sender's whole table, answered by the receiver's.

    A joining member sends it to the seed queue group; members send it to a random peer
    every few periods. An ``observer`` (``lmteams status``) pushes nothing and is not added.
    """

    sender: str
    incarnation: int
    members: tuple[Update, ...] = ()
    observer: bool = False


class SyncState(msgspec.Struct, frozen=True, kw_only=True, tag="swim_state"):
    """The reply to a ``Sync``: everything the responder knows, maps included."""

    sender: str
    incarnation: int
    members: tuple[Update, ...] = ()


InboxMessage = Ping | PingReq | Sync
"""What travels on a member's inbox ``lmt.<team>.gossip.swim.<member>``."""
