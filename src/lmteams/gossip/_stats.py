"""A member's running counts, and the frozen snapshot ``SwimMember.statistics()`` returns.

The protocol code only bumps counters; what a reader compares (messages per period, the
table's states) is put together here, so the member's statistics are one small thing
instead of a dozen fields threaded through the protocol class.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from lmteams.gossip._messages import MemberState
from lmteams.gossip._table import MembershipTable

__all__ = ("GossipCounters", "GossipStatistics")


class GossipStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of one member's counters; per-period rates divide by ``periods``."""

    member: str
    incarnation: int
    periods: int
    alive: int
    suspect: int
    dead: int
    left: int
    messages_sent: int
    messages_received: int
    pings_sent: int
    ping_reqs_sent: int
    acks_sent: int
    syncs_sent: int
    probe_failures: int
    suspicions: int
    refutations: int
    updates_sent: int
    queued_updates: int
    events_dropped: int
    refused: int = 0
    """Messages refused before they reached the table: undecodable or out of bounds."""
    faults: int = 0
    """Protocol rounds or background steps that raised (logged, and the member went on)."""


@dataclass(slots=True)
class GossipCounters:
    """What one member has done so far; only ever incremented, by the member itself."""

    periods: int = 0
    received: int = 0
    pings: int = 0
    ping_reqs: int = 0
    acks: int = 0
    syncs: int = 0
    probe_failures: int = 0
    suspicions: int = 0
    refutations: int = 0
    updates: int = 0
    dropped: int = 0
    refused: int = 0
    faults: int = 0

    def snapshot(
        self, member: str, incarnation: int, table: MembershipTable, *, queued: int
    ) -> GossipStatistics:
        """The counters with what ``table`` holds now, as a frozen struct."""
        return GossipStatistics(
            member=member,
            incarnation=incarnation,
            periods=self.periods,
            alive=table.count(MemberState.ALIVE),
            suspect=table.count(MemberState.SUSPECT),
            dead=table.count(MemberState.DEAD),
            left=table.count(MemberState.LEFT),
            messages_sent=self.pings + self.ping_reqs + self.acks + self.syncs,
            messages_received=self.received,
            pings_sent=self.pings,
            ping_reqs_sent=self.ping_reqs,
            acks_sent=self.acks,
            syncs_sent=self.syncs,
            probe_failures=self.probe_failures,
            suspicions=self.suspicions,
            refutations=self.refutations,
            updates_sent=self.updates,
            queued_updates=queued,
            events_dropped=self.dropped,
            refused=self.refused,
            faults=self.faults,
        )
