"""The membership publisher: what this agent tells the team about itself, and when.

A join when it starts (device, model, measured rates, public key), a heartbeat every
``heartbeat_s`` while it runs (load, state, key), a leave when it stops, and the same facts
in its ``Pong`` to whoever pings it. Reading the team's announcements is the roster's job.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from typing import TYPE_CHECKING

import anyio

from lmteams.agents._messages import AgentInfo, Heartbeat, Leave, Pong
from lmteams.errors import BusError

if TYPE_CHECKING:
    from lmteams.agents._worker import WorkerAgent

__all__ = ("Presence",)


class Presence:
    """Announces the agent it belongs to; every fact is read from the agent when sent."""

    def __init__(self, agent: WorkerAgent) -> None:
        self._agent = agent

    def _state(self) -> str:
        return "draining" if self._agent._draining else "serving"

    async def join(self) -> AgentInfo:
        agent = self._agent
        ctx = agent.context
        assert agent.backend is not None
        info = AgentInfo(
            agent=ctx.actor_id,
            team=ctx.team,
            roles=ctx.roles,
            device=agent.backend.device,
            model=agent.backend.model,
            backend=agent.config.backend.kind,
            host=socket.gethostname(),
            pid=os.getpid(),
            started_at=time.time(),
            tokens_per_s=agent.tokens_per_s,
            prompt_tokens_per_s=agent.prompt_tokens_per_s,
            public_key=agent.identity.public_key,
        )
        await ctx.bus.publish(ctx.subjects.gossip("join"), info, sender=ctx.actor_id)
        return info

    async def heartbeats(self) -> None:
        """Beat until cancelled; a beat the bus cannot take is skipped, never fatal."""
        agent = self._agent
        ctx = agent.context
        seq = 0
        while True:
            seq += 1
            beat = Heartbeat(
                agent=ctx.actor_id,
                seq=seq,
                in_flight=agent.in_flight,
                served=agent.served,
                state=self._state(),
                public_key=agent.identity.public_key,
            )
            with contextlib.suppress(BusError):
                await ctx.bus.publish(ctx.subjects.gossip("heartbeat"), beat, sender=ctx.actor_id)
            await anyio.sleep(agent.config.heartbeat_s)

    async def leave(self) -> None:
        ctx = self._agent.context
        with contextlib.suppress(BusError, OSError):
            await ctx.bus.publish(ctx.subjects.gossip("leave"), Leave(agent=ctx.actor_id))

    def pong(self) -> Pong:
        agent = self._agent
        return Pong(
            agent=agent.context.actor_id,
            state=self._state(),
            served=agent.served,
            device=agent.backend.device if agent.backend else "",
            tokens_per_s=agent.tokens_per_s,
            prompt_tokens_per_s=agent.prompt_tokens_per_s,
            in_flight=agent.in_flight,
            model=agent.backend.model if agent.backend else "",
        )
