"""One peer's membership table: what it believes about every member, merged as a lattice.

Liveness merges by ``(incarnation, rank of state)`` and maps by ``version``: both are joins
of a semilattice, so any two peers that have seen the same updates, in any order and with any
duplicates, hold the same table. That is what lets piggybacking drop and reorder updates
freely and lets anti-entropy repair whatever it lost.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

import msgspec

from lmteams.gossip._messages import RANK, MemberState, MetaValue, Update

__all__ = ("Change", "ChangeKind", "Entry", "MembershipTable")


class ChangeKind(StrEnum):
    """What a merge did to a member, as reported in events."""

    JOINED = "joined"  # first heard of
    ALIVE = "alive"  # back from suspect or dead (a refutation or a rejoin)
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"
    UPDATED = "updated"  # same liveness, newer map


class Change(msgspec.Struct, frozen=True, kw_only=True):
    """One effect of a merge; ``previous`` is None for a member not known before."""

    member: str
    kind: ChangeKind
    state: MemberState
    incarnation: int
    previous: MemberState | None = None


class Entry:
    """A mutable row; the table hands out ``Update`` snapshots, never the row."""

    __slots__ = ("incarnation", "meta", "state", "version")

    def __init__(
        self, state: MemberState, incarnation: int, version: int, meta: dict[str, MetaValue]
    ) -> None:
        self.state = state
        self.incarnation = incarnation
        self.version = version
        self.meta = meta

    def snapshot(self, member: str) -> Update:
        return Update(
            member=member,
            state=self.state,
            incarnation=self.incarnation,
            version=self.version,
            meta=dict(self.meta),
        )


_LIVE = (MemberState.ALIVE, MemberState.SUSPECT)


class MembershipTable:
    """Every member one peer has heard of, the peer itself included."""

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}

    def __contains__(self, member: str) -> bool:
        return member in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, member: str) -> Entry | None:
        return self._entries.get(member)

    def names(self) -> list[str]:
        return list(self._entries)

    def live(self) -> list[str]:
        """Members that should be probed: alive or suspected (not yet confirmed dead)."""
        return [m for m, e in self._entries.items() if e.state in _LIVE]

    def count(self, state: MemberState) -> int:
        return sum(1 for e in self._entries.values() if e.state is state)

    def snapshot(self, member: str) -> Update:
        return self._entries[member].snapshot(member)

    def snapshots(self) -> tuple[Update, ...]:
        return tuple(e.snapshot(m) for m, e in sorted(self._entries.items()))

    def differing(self, known: Iterable[Update]) -> tuple[Update, ...]:
        """The rows that differ from ``known`` (a peer's table): what that peer lacks."""
        theirs = {u.member: (u.incarnation, u.state, u.version) for u in known}
        return tuple(
            e.snapshot(m)
            for m, e in sorted(self._entries.items())
            if theirs.get(m) != (e.incarnation, e.state, e.version)
        )

    def set(self, update: Update) -> None:
        """Overwrite a row unconditionally: only for the owner's own row."""
        entry = self._entries.get(update.member)
        meta = dict(update.meta) if update.meta is not None else {}
        if entry is None:
            self._entries[update.member] = Entry(
                update.state, update.incarnation, update.version, meta
            )
            return
        entry.state = update.state
        entry.incarnation = update.incarnation
        if update.meta is not None:
            entry.version = update.version
            entry.meta = meta

    def merge(self, update: Update) -> Change | None:
        """Join ``update`` into the table; return what changed, or None if nothing did."""
        entry = self._entries.get(update.member)
        if entry is None:
            meta = dict(update.meta) if update.meta is not None else {}
            version = update.version if update.meta is not None else 0
            self._entries[update.member] = Entry(update.state, update.incarnation, version, meta)
            kind = ChangeKind.JOINED if update.state in _LIVE else _KIND[update.state]
            return Change(
                member=update.member,
                kind=kind,
                state=update.state,
                incarnation=update.incarnation,
            )
        newer_state = (update.incarnation, RANK[update.state]) > (
            entry.incarnation,
            RANK[entry.state],
        )
        newer_meta = update.meta is not None and update.version > entry.version
        if not newer_state and not newer_meta:
            return None
        previous = entry.state
        if newer_meta:
            entry.version = update.version
            entry.meta = dict(update.meta or {})
        if newer_state:
            entry.incarnation = update.incarnation
            entry.state = update.state
        # same liveness at a newer incarnation or map: still news, for the map or the record
        kind = ChangeKind.UPDATED if entry.state is previous else _KIND[entry.state]
        return Change(
            member=update.member,
            kind=kind,
            state=entry.state,
            incarnation=entry.incarnation,
            previous=previous,
        )


_KIND = {
    MemberState.ALIVE: ChangeKind.ALIVE,
    MemberState.SUSPECT: ChangeKind.SUSPECT,
    MemberState.DEAD: ChangeKind.DEAD,
    MemberState.LEFT: ChangeKind.LEFT,
}
