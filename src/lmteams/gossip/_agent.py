"""An agent's own SWIM membership, whose gossiped map is what the agent says of itself.

A worker knows its device, model, measured rates and load; a member that joined after the
agent's join announcement, or ``lmteams status`` run an hour later, should learn them too.
So the member asks its agent (a ``Ping`` over the bus, like any peer would) every period and
gossips the answer; anti-entropy repairs whatever an update lost on the way.
"""

from __future__ import annotations

from collections.abc import Mapping

import anyio
import structlog

from lmteams.agents import ActorRef, Ping, Pong
from lmteams.bus import Bus, Subjects
from lmteams.errors import LmteamsError
from lmteams.gossip._config import SwimConfig
from lmteams.gossip._member import open_member
from lmteams.gossip._messages import MetaValue

__all__ = ("gossip_as_agent", "agent_meta")

log = structlog.get_logger(__name__)
_LEAVE_S = 5.0  # what saying goodbye may take when the daemon stops


def agent_meta(pong: Pong) -> dict[str, MetaValue]:
    """The gossiped map of an agent: device, model, rates rounded so noise is no news."""
    return {
        "device": pong.device,
        "model": pong.model,
        "state": pong.state,
        "load": float(pong.in_flight),
        "served": float(pong.served),
        "tokens_per_s": round(pong.tokens_per_s, 1),
        "prompt_tokens_per_s": round(pong.prompt_tokens_per_s, 1),
    }


async def gossip_as_agent(
    bus: Bus,
    team: str,
    agent: str,
    *,
    meta: Mapping[str, MetaValue] | None = None,
    config: SwimConfig | None = None,
    refresh_s: float = 2.0,
) -> None:
    """Be ``agent``'s member of ``team``'s gossip until cancelled, then leave (peers see left).

    ``meta`` is gossiped until the agent first answers; an agent that does not answer (busy,
    restarting) keeps its last map until it does.
    """
    ref = ActorRef(bus, Subjects(team), agent)
    async with open_member(bus, team, agent, meta, config=config) as member:
        try:
            while True:
                try:
                    pong = await ref.ask(Ping(), expect=Pong, timeout=refresh_s)
                except LmteamsError as err:
                    log.debug("gossip.agent_silent", agent=agent, error=type(err).__name__)
                else:
                    member.update_meta(agent_meta(pong))
                await anyio.sleep(refresh_s)
        finally:  # the daemon cancels its services when it stops: leave, do not "crash"
            with anyio.CancelScope(shield=True), anyio.move_on_after(_LEAVE_S):
                await member.leave()
