"""Reading a team's membership without joining it: what ``lmteams status`` shows.

An observer pushes nothing and is never added to the table, so looking does not change
what is looked at. It asks a random member (the seed queue group picks it) for its full
table and merges the answer: the merge is the same lattice join the members use, so the
freshest belief about each member wins whichever member knew it. A ``GossipMembership``
that hosts no member does this every period (``sync_once``); ``observe_members`` is the
one-shot form.
"""

from __future__ import annotations

import anyio

from lmteams.bus import Bus, Subjects
from lmteams.errors import BusError, NoRespondersError, RemoteError
from lmteams.gossip._messages import Sync, SyncState, Update
from lmteams.gossip._table import MembershipTable

__all__ = ("observe_members", "sync_once", "NOBODY")

NOBODY: tuple[Update, ...] | None = None
"""What ``sync_once`` returns when no member of the team is running: nobody to ask."""


async def sync_once(bus: Bus, team: str, *, timeout: float) -> tuple[Update, ...] | None:
    """One member's whole table; () when no answer came in time, ``NOBODY`` (None) when
    no member is subscribed at all (the server says so at once)."""
    try:
        state = await bus.request(
            Subjects(team).gossip_seed,
            Sync(sender="", incarnation=0, observer=True),
            expect=SyncState,
            timeout=timeout,
        )
    except NoRespondersError:
        return NOBODY
    except (BusError, RemoteError):
        return ()  # a slow or stopped member (or a credential that may not ask)
    return state.members


async def observe_members(
    bus: Bus, team: str, *, samples: int = 3, interval: float = 0.3, timeout: float = 2.0
) -> tuple[Update, ...]:
    """The team's members as ``samples`` random members see them, merged; () if nobody answers.

    ``interval`` spaces the samples so they reach different members and cover at least part
    of a protocol period; ``timeout`` bounds each request.
    """
    table = MembershipTable()
    for i in range(samples):
        if i:
            await anyio.sleep(interval)
        members = await sync_once(bus, team, timeout=timeout)
        if not members and i == 0:
            return ()  # nobody in the team's gossip (or this credential may not ask)
        for update in members or ():
            table.merge(update)
    return table.snapshots()
