"""The membership publisher: what this agent tells the team about itself, and when.

It joins the runtime's membership once the agent serves (device, model, measured rates,
public key), updates its facts every ``heartbeat_s`` while it runs (load, counts) and at
once when it starts draining, and leaves when it stops: peers then see it ``left``, not
dead. Liveness itself is the membership's business (SWIM, in a daemon); these are only the
facts. The same facts answer a ``Ping``.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING

import anyio

from lmteams.agents._membership import MemberFacts
from lmteams.agents._messages import Pong
from lmteams.errors import LmteamsError

if TYPE_CHECKING:
    from lmteams.agents._worker import WorkerAgent

__all__ = ("Presence",)


class Presence:
    """Publishes the agent it belongs to; every fact is read from the agent when sent."""

    def __init__(self, agent: WorkerAgent) -> None:
        self._agent = agent
        self._host = socket.gethostname()
        self._joined = False  # an agent whose start failed before joining has nothing to leave

    def facts(self) -> MemberFacts:
        agent = self._agent
        ctx = agent.context
        backend = agent.backend
        return MemberFacts(
            device=backend.device if backend else "",
            model=backend.model if backend else "",
            backend=agent.config.backend.kind,
            tokens_per_s=agent.tokens_per_s,
            prompt_tokens_per_s=agent.prompt_tokens_per_s,
            in_flight=agent.in_flight,
            served=agent.served,
            serving="draining" if agent._draining else "serving",
            roles=ctx.roles,
            public_key=ctx.identity.public_key,
            host=self._host,
            pid=os.getpid(),
        )

    async def join(self) -> MemberFacts:
        ctx = self._agent.context
        facts = self.facts()
        await ctx.membership.join(ctx.actor_id, facts)
        self._joined = True
        ctx.log.info(
            "agent.joined", device=facts.device, model=facts.model, tokens_per_s=facts.tokens_per_s
        )
        return facts

    def update(self) -> None:
        """Publish the facts now (a no-op for the membership when none changed)."""
        ctx = self._agent.context
        ctx.membership.update(ctx.actor_id, self.facts())

    async def serve(self) -> None:
        """Join, then publish the facts every ``heartbeat_s`` until cancelled."""
        await self.join()
        while True:
            self.update()
            await anyio.sleep(self._agent.config.heartbeat_s)

    async def leave(self) -> None:
        """Leave the team with its final facts (counts included); a membership that cannot
        tell its peers is logged, never fatal."""
        if not self._joined:
            return
        self._joined = False
        ctx = self._agent.context
        try:
            self.update()
            await ctx.membership.leave(ctx.actor_id)
        except (LmteamsError, OSError) as err:
            ctx.log.warning("agent.leave_failed", error=str(err))

    def pong(self) -> Pong:
        agent = self._agent
        facts = self.facts()
        return Pong(
            agent=agent.context.actor_id,
            state=facts.serving,
            served=facts.served,
            device=facts.device,
            tokens_per_s=facts.tokens_per_s,
            prompt_tokens_per_s=facts.prompt_tokens_per_s,
            in_flight=facts.in_flight,
            model=facts.model,
            restarts=agent.context.restarts,
        )
