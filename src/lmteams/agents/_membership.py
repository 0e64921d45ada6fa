"""The one view of the team an agent process has: who is alive, how fast, how loaded, which key.

Strategies choose live agents from it, the dispatcher places by it, the job engine will, and
``lmteams status`` prints it; so all of them agree on who is alive. The view itself is fed by
SWIM gossip, which lives in the layer above: agents see it only through the
:class:`Membership` protocol, injected into the runtime (``open_runtime(membership=...)``) the
way the election service is injected into the daemon. A runtime given none uses
:class:`LocalMembership`, which knows the agents of that runtime and nothing else: enough for
tests and for a program that hosts its whole team in one process, wrong for a team spread
over processes (the daemon and ``lmteams up`` always inject gossip).
"""

from __future__ import annotations

from typing import Literal, Protocol

import anyio
import msgspec

__all__ = (
    "Liveness",
    "LIVE_STATES",
    "MemberFacts",
    "MemberInfo",
    "Membership",
    "LocalMembership",
)

Liveness = Literal["alive", "suspect", "dead", "left"]
"""SWIM's states: a suspect is still live (it may yet refute); dead and left are not."""
LIVE_STATES: frozenset[str] = frozenset(("alive", "suspect"))


class MemberFacts(msgspec.Struct, frozen=True, kw_only=True):
    """What an agent says of itself: the versioned metadata of its membership.

    Published by the agent's own membership publisher whenever a fact changes (load and
    counts at most every heartbeat period), carried by gossip, never asked for by ping.
    """

    device: str = ""
    model: str = ""
    backend: str = ""
    tokens_per_s: float = 0.0
    prompt_tokens_per_s: float = 0.0
    in_flight: int = 0
    served: int = 0
    serving: Literal["serving", "draining"] = "serving"
    roles: tuple[str, ...] = ()
    public_key: str = ""
    host: str = ""
    pid: int = 0


class MemberInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One member as this process sees it: SWIM's liveness plus the member's facts.

    ``key_conflict`` is set when the member announced a public key other than the one bound
    to its name; ``facts.public_key`` then still holds the bound key, never the announced one.
    """

    name: str
    state: Liveness
    incarnation: int = 0
    version: int = 0
    facts: MemberFacts = MemberFacts()
    key_conflict: bool = False

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES

    @property
    def available(self) -> bool:
        """Live and taking work (not draining): what placement and strategies may use."""
        return self.live and self.facts.serving == "serving"


class Membership(Protocol):
    """One process's view of its team, and the publisher for the agents it hosts."""

    def members(self) -> tuple[MemberInfo, ...]:
        """Every member heard of (dead and left included), sorted by name."""
        ...

    def member(self, name: str) -> MemberInfo | None: ...

    def live(self) -> list[str]:
        """Names of the members that are alive or suspect, sorted."""
        ...

    def public_key(self, name: str) -> str:
        """The key bound to ``name`` ("" when none is): what votes are verified against."""
        ...

    async def wait_changed(self) -> None:
        """Return at the next change of the view; callers bound the wait themselves."""
        ...

    async def join(self, name: str, facts: MemberFacts) -> None:
        """Make ``name`` (an agent of this process) a member, announcing ``facts``."""
        ...

    def update(self, name: str, facts: MemberFacts) -> None:
        """New facts for a hosted member; a no-op when nothing changed."""
        ...

    async def leave(self, name: str) -> None:
        """``name`` leaves the team: peers see it ``left``, not dead."""
        ...


class LocalMembership:
    """The agents of one runtime, as a :class:`Membership`: alive from join until leave.

    No failure detection and no peers: an agent of this process cannot be silent without the
    process itself being silent. Keys are the agents' own, so nothing can conflict.
    """

    def __init__(self) -> None:
        self._members: dict[str, MemberInfo] = {}
        self._changed = anyio.Event()

    def members(self) -> tuple[MemberInfo, ...]:
        return tuple(m for _, m in sorted(self._members.items()))

    def member(self, name: str) -> MemberInfo | None:
        return self._members.get(name)

    def live(self) -> list[str]:
        return sorted(n for n, m in self._members.items() if m.live)

    def public_key(self, name: str) -> str:
        member = self._members.get(name)
        return member.facts.public_key if member else ""

    async def wait_changed(self) -> None:
        await self._changed.wait()

    async def join(self, name: str, facts: MemberFacts) -> None:
        old = self._members.get(name)
        incarnation = old.incarnation + 1 if old else 0
        self._set(MemberInfo(name=name, state="alive", incarnation=incarnation, facts=facts))

    def update(self, name: str, facts: MemberFacts) -> None:
        old = self._members.get(name)
        if old is None or old.facts == facts or not old.live:
            return
        self._set(msgspec.structs.replace(old, facts=facts, version=old.version + 1))

    async def leave(self, name: str) -> None:
        old = self._members.get(name)
        if old is not None and old.state != "left":
            self._set(msgspec.structs.replace(old, state="left"))

    def _set(self, info: MemberInfo) -> None:
        self._members[info.name] = info
        self._changed.set()
        self._changed = anyio.Event()
