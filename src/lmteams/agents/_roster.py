"""Who is in the team right now, as far as this agent has heard.

Built from the join, heartbeat and leave announcements on the gossip subjects. A member is
live while its heartbeats keep coming; its public key is pinned on first sight, so a later
announcement cannot swap in another key under the same name.

Anyone on the bus can announce, and strategies address the live members by name, so an
announcement is checked before it is recorded: a name that is not one subject token, a
key or label of absurd length, or a rate that is not a finite non-negative number is
refused (counted, logged, dead-lettered), and the roster holds a bounded number of names.
"""

from __future__ import annotations

import math
import time

import msgspec
import structlog

from lmteams.agents._messages import AgentInfo, Heartbeat, Leave
from lmteams.agents._runtime import dead_letter
from lmteams.bus import Bus, Codec, Incoming, RawMsg, Subjects, Subscription, validate_token
from lmteams.errors import BusError, ConfigError, DecodeError

__all__ = ("Roster", "Member", "announcement_problem", "MAX_MEMBERS")

log = structlog.get_logger(__name__)
_GOSSIP: Codec[AgentInfo | Heartbeat | Leave] = Codec(AgentInfo, Heartbeat, Leave)
MAX_MEMBERS = 1024
"""Names the roster holds; past it, members not heard from lately make room, or a new name
is refused: a flood of invented names cannot grow memory or crowd out the real team."""
_MAX_KEY = 128  # an nkey public key is 56 characters
_MAX_LABEL = 256  # device and model names


def announcement_problem(body: AgentInfo | Heartbeat | Leave) -> str:
    """Why this announcement must not be recorded, or "" when it may."""
    try:
        validate_token(body.agent, "agent name")
    except ConfigError as err:
        return str(err)
    checks: list[tuple[bool, str]] = []
    if isinstance(body, AgentInfo | Heartbeat):
        key = f"public_key is longer than {_MAX_KEY} characters"
        checks.append((len(body.public_key) > _MAX_KEY, key))
    if isinstance(body, AgentInfo):
        labels = f"device and model must be at most {_MAX_LABEL} characters"
        checks.append((max(len(body.device), len(body.model)) > _MAX_LABEL, labels))
        for name in ("tokens_per_s", "prompt_tokens_per_s"):
            rate = getattr(body, name)
            bad = not (math.isfinite(rate) and rate >= 0)
            checks.append((bad, f"{name} must be a finite number >= 0, got {rate}"))
    if isinstance(body, Heartbeat):
        checks.append((body.in_flight < 0, f"in_flight must be >= 0, got {body.in_flight}"))
    return next((message for failed, message in checks if failed), "")


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
        self.refused = 0  # announcements refused: undecodable, invalid, or no room
        self._subs: list[Subscription] = []

    async def open(self) -> None:
        for topic in ("join", "heartbeat", "leave"):
            self._subs.append(
                await self.bus.subscribe(
                    self.subjects.gossip(topic),
                    self._on,
                    codec=_GOSSIP,
                    on_decode_error=self._on_decode_error,
                )
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

    def _has_room(self, agent: str) -> bool:
        """Whether ``agent`` may be recorded; forgets members long silent to make room."""
        if agent in self.members or len(self.members) < MAX_MEMBERS:
            return True
        now = time.monotonic()
        for name in [n for n, m in self.members.items() if now - m.last_seen > self.liveness_s]:
            del self.members[name]
        return len(self.members) < MAX_MEMBERS

    async def _refuse(self, msg: RawMsg, reason: str) -> None:
        self.refused += 1
        log.warning("roster.refused", subject=msg.subject, reason=reason)
        try:
            await dead_letter(self.bus, self.subjects, msg, "roster", reason)
        except BusError as err:  # the refusal is counted and logged; the roster goes on
            log.warning("roster.dead_letter_failed", error=str(err))

    async def _on_decode_error(self, msg: RawMsg, err: DecodeError) -> None:
        await self._refuse(msg, str(err))

    async def _on(self, inc: Incoming[AgentInfo | Heartbeat | Leave]) -> None:
        problem = announcement_problem(inc.body)
        if not problem and not self._has_room(inc.body.agent):
            problem = f"the roster is full ({MAX_MEMBERS} members heard from lately)"
        if problem:
            await self._refuse(inc.msg, problem)
            return
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
