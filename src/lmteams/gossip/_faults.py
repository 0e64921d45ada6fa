"""Fault injection for gossip members: stop one as SIGSTOP would, from outside it.

Tests and the convergence benchmark need a member that is slow, not dead, inside one
process. The member itself only waits on its ``Gate`` before each period and each message
it handles; closing the gate is this module's business, so the protocol class carries no
test hook.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel

if TYPE_CHECKING:
    from lmteams.gossip._member import SwimMember

__all__ = ("Gate", "pause_member")


class Gate:
    """Open unless a fault has closed it until some time on the anyio clock."""

    def __init__(self) -> None:
        self._closed_until = -math.inf

    async def wait(self) -> None:
        """Return once the gate is open (a checkpoint even then, so the loop yields)."""
        await anyio.lowlevel.checkpoint()
        # the gate opens at a time, with no one to set an event then; a pause extended
        # while we slept moved that time further, so look again on waking
        while anyio.current_time() < self._closed_until:  # noqa: ASYNC110 - a deadline
            await anyio.sleep_until(self._closed_until)

    def close_for(self, seconds: float) -> None:
        """Close for ``seconds`` from now; a closing during a closing ends whichever is later."""
        self._closed_until = max(self._closed_until, anyio.current_time() + seconds)


def pause_member(member: SwimMember, seconds: float) -> None:
    """Make ``member`` behave like a stopped process (SIGSTOP) for ``seconds``.

    Probing stops and received messages wait, unanswered, in the subscription's queue, as
    they would in a stopped process's socket; all of them are handled on resume. A pause
    during a pause extends it (to whichever ends later).
    """
    if member._tg is None:
        raise RuntimeError("pause_member needs a running member (inside open_member)")
    member._gate.close_for(seconds)
