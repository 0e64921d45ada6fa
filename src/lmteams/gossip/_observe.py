"""Reading a team's membership without joining it: what ``lmteams status`` shows.

An observer pushes nothing and is never added to the table, so looking does not change
what is looked at. It asks a few random members (the seed queue group picks them) for their
full table and merges the answers: the merge is the same lattice join the members use, so
the freshest belief about each member wins whichever member knew it.
"""

from __future__ import annotations

import anyio

from lmteams.bus import Bus, Subjects
from lmteams.errors import BusError, RemoteError
from lmteams.gossip._messages import Sync, SyncState, Update
from lmteams.gossip._table import MembershipTable

__all__ = ("observe_members",)


async def observe_members(
    bus: Bus, team: str, *, samples: int = 3, interval: float = 0.3, timeout: float = 2.0
) -> tuple[Update, ...]:
    """The team's members as ``samples`` random members see them, merged; () if nobody answers.

    ``interval`` spaces the samples so they reach different members and cover at least part
    of a protocol period; ``timeout`` bounds each request.
    """
    subject = Subjects(team).gossip_seed
    table = MembershipTable()
    for i in range(samples):
        if i:
            await anyio.sleep(interval)
        try:
            state = await bus.request(
                subject,
                Sync(sender="", incarnation=0, observer=True),
                expect=SyncState,
                timeout=timeout,
            )
        except (BusError, RemoteError):
            if i == 0:
                return ()  # nobody in the team's gossip (or this credential may not ask)
            continue
        for update in state.members:
            table.merge(update)
    return table.snapshots()
