"""Who is in the team right now, as far as this agent has heard.

Built from the join, heartbeat and leave announcements on the gossip subjects. A member is
live while its heartbeats keep coming; its public key is pinned on first sight, so a later
announcement cannot swap in another key under the same name.
"""

from __future__ import annotations

import time

import msgspec
import structlog

from lmteams.agents._messages import AgentInfo, Heartbeat, Leave
from lmteams.bus import Bus, Codec, Incoming, Subjects, Subscription

__all__ = ("Roster", "Member")

log = structlog.get_logger(__name__)
_GOSSIP: Codec[AgentInfo | Heartbeat | Leave] = Codec(AgentInfo, Heartbeat, Leave)


class Member(msgspec.Struct, kw_only=True):
    agent: str
    public_key: str = ""
    device: str = ""
    model: str = ""
    tokens_per_s: float = 0.0
    in_flight: int = 0
    last_seen: float = 0.0  # monotonic seconds
    left: bool = False


class Roster:
    """A live view of the team's members; ``open`` subscribes, ``close`` stops listening."""

    def __init__(self, bus: Bus, subjects: Subjects, *, liveness_s: float = 6.0) -> None:
        self.bus = bus
        self.subjects = subjects
        self.liveness_s = liveness_s
        self.members: dict[str, Member] = {}
        self.conflicts: set[str] = set()  # agents seen announcing a second key
        self._subs: list[Subscription] = []

    async def open(self) -> None:
        for topic in ("join", "heartbeat", "leave"):
            self._subs.append(
                await self.bus.subscribe(self.subjects.gossip(topic), self._on, codec=_GOSSIP)
            )

    async def close(self) -> None:
        for sub in self._subs:
            await sub.unsubscribe()
        self._subs.clear()

    def see(self, agent: str, *, public_key: str = "", **facts: object) -> Member:
        """Record news of a member (also used for this agent itself)."""
        member = self.members.get(agent) or Member(agent=agent)
        self.members[agent] = member
        if public_key:
            if not member.public_key:
                member.public_key = public_key
            elif member.public_key != public_key and agent not in self.conflicts:
                self.conflicts.add(agent)
                log.warning("roster.key_conflict", agent=agent)
        for key, value in facts.items():
            setattr(member, key, value)
        member.last_seen = time.monotonic()
        member.left = False
        return member

    async def _on(self, inc: Incoming[AgentInfo | Heartbeat | Leave]) -> None:
        match inc.body:
            case AgentInfo() as info:
                self.see(
                    info.agent,
                    public_key=info.public_key,
                    device=info.device,
                    model=info.model,
                    tokens_per_s=info.tokens_per_s,
                )
            case Heartbeat() as beat:
                self.see(beat.agent, public_key=beat.public_key, in_flight=beat.in_flight)
            case Leave() as leave:
                if leave.agent in self.members:
                    self.members[leave.agent].left = True

    def live(self) -> list[str]:
        """Members heard from within ``liveness_s`` that have not left, sorted by name."""
        now = time.monotonic()
        return sorted(
            name
            for name, m in self.members.items()
            if not m.left and now - m.last_seen <= self.liveness_s
        )

    def public_key(self, agent: str) -> str:
        member = self.members.get(agent)
        return member.public_key if member else ""
