"""``GossipMembership``: a process's one view of its team, fed by SWIM, for agents to read.

Agents see the team through the ``lmteams.agents.Membership`` protocol; this is the
implementation a daemon, ``lmteams status`` and a user's dispatcher inject. Each agent the
process hosts is a ``SwimMember`` whose gossiped map is the agent's facts, so liveness
(alive, suspect, dead, left, with incarnations) and facts travel together and no agent is
asked over the bus what it is. The view is the lattice merge of the hosted members' tables:
whichever of them holds the freshest belief about a member, the view holds it. A process
hosting nobody is an observer: it asks some member for its whole table every period and
merges that, never joining (so looking changes nothing).

Keys come from the team's ``keys`` bucket (``_keys.py``), never from gossip: a member whose
gossiped key differs from the one bound to its name is flagged (``key_conflict``) and shown
with the bound key, so whoever verifies a vote against this view verifies it against the
key the name's credential bound first.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio
import msgspec
import structlog
from anyio.abc import TaskGroup, TaskStatus

from lmteams.agents import Liveness, MemberFacts, MemberInfo
from lmteams.bus import Bus, Subjects, validate_token
from lmteams.gossip._config import SwimConfig
from lmteams.gossip._facts import facts_meta, facts_of
from lmteams.gossip._keys import KeyBindings, fingerprint, open_key_bindings
from lmteams.gossip._member import MemberEvent, SwimMember, open_member
from lmteams.gossip._messages import MemberState, Update
from lmteams.gossip._observe import NOBODY, sync_once
from lmteams.gossip._table import MembershipTable

__all__ = ("GossipMembership", "open_membership")

log = structlog.get_logger(__name__)
_LEAVE_S = 5.0  # what saying goodbye may take
_LIVENESS: dict[MemberState, Liveness] = {
    MemberState.ALIVE: "alive",
    MemberState.SUSPECT: "suspect",
    MemberState.DEAD: "dead",
    MemberState.LEFT: "left",
}


class _Hosted:
    """One hosted agent's member, and how its task is told to leave."""

    __slots__ = ("done", "leaving", "member")

    def __init__(self, member: SwimMember) -> None:
        self.member = member
        self.leaving = anyio.Event()
        self.done = anyio.Event()


class GossipMembership:
    """The team as this process sees it; satisfies ``lmteams.agents.Membership``.

    Create with ``open_membership``.
    """

    def __init__(
        self, bus: Bus, team: str, tg: TaskGroup, keys: KeyBindings, config: SwimConfig
    ) -> None:
        self._bus = bus
        self._team = Subjects(team).team  # validates the name
        self._tg = tg
        self._keys = keys
        self.config = config
        self._hosted: dict[str, _Hosted] = {}
        self._table = MembershipTable()
        self._infos: dict[str, MemberInfo] = {}
        self._unbound: set[str] = set()  # gossip a key, but no binding read yet
        self._conflicts: set[str] = set()
        self._changed = anyio.Event()

    # --- the Membership protocol --------------------------------------------------------------
    def members(self) -> tuple[MemberInfo, ...]:
        return tuple(info for _, info in sorted(self._infos.items()))

    def member(self, name: str) -> MemberInfo | None:
        return self._infos.get(name)

    def live(self) -> list[str]:
        return sorted(name for name, info in self._infos.items() if info.live)

    def public_key(self, name: str) -> str:
        return self._keys.bound(name)

    async def wait_changed(self) -> None:
        await self._changed.wait()

    async def join(self, name: str, facts: MemberFacts) -> None:
        """Host ``name``: bind its key (first binding wins), then gossip it as a member."""
        if name in self._hosted:
            self.update(name, facts)
            return
        validate_token(name, "member name")  # before anything is bound under it
        await self._keys.bind(name, facts.public_key)
        await self._tg.start(self._host, name, facts)

    def update(self, name: str, facts: MemberFacts) -> None:
        hosted = self._hosted.get(name)
        if hosted is not None:
            hosted.member.update_meta(facts_meta(facts))  # a no-op when nothing changed
            self._merge(hosted.member.member(name))

    async def leave(self, name: str) -> None:
        hosted = self._hosted.get(name)
        if hosted is None:
            return
        hosted.leaving.set()
        with anyio.move_on_after(_LEAVE_S + self.config.period_s):
            await hosted.done.wait()

    # --- beyond the protocol --------------------------------------------------------------------
    def swim(self, name: str) -> SwimMember | None:
        """The hosted member of ``name`` (fault injection in tests: ``pause_member``)."""
        hosted = self._hosted.get(name)
        return hosted.member if hosted else None

    def conflicts(self) -> frozenset[str]:
        """Names that announced a key other than the one bound to them."""
        return frozenset(self._conflicts)

    # --- hosting --------------------------------------------------------------------------------
    async def _host(self, name: str, facts: MemberFacts, *, task_status: TaskStatus[None]) -> None:
        async with open_member(
            self._bus,
            self._team,
            name,
            facts_meta(facts),
            config=self.config,
            on_event=self._on_event,
        ) as member:
            hosted = self._hosted[name] = _Hosted(member)
            try:
                own = member.member(name)
                if own is not None:
                    # a new life of ``name``: what the view held of an earlier one (left,
                    # dead) is no news of this one, which refutes it where peers hold it
                    self._table.set(own)
                for update in member.members():  # learned before its events reached us
                    self._merge(update)
                self._refresh(name)
                task_status.started()
                await hosted.leaving.wait()
                with anyio.move_on_after(_LEAVE_S):
                    await member.leave()
                self._merge(member.member(name))
            finally:
                if self._hosted.get(name) is hosted:
                    del self._hosted[name]
                hosted.done.set()

    def _on_event(self, event: MemberEvent) -> None:
        hosted = self._hosted.get(event.observer)
        if hosted is not None:
            self._merge(hosted.member.member(event.member))

    async def _leave_all(self) -> None:
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as tg:
                for name in list(self._hosted):
                    tg.start_soon(self.leave, name)

    # --- the view -------------------------------------------------------------------------------
    async def _run(self) -> None:
        """Every period: fold in the hosted members' own records (a refutation changes one
        without an event), or observe when hosting nobody; read bindings not yet known."""
        while True:
            await anyio.sleep(self.config.period_s)
            for hosted in list(self._hosted.values()):
                self._merge(hosted.member.member(hosted.member.id))
            if not self._hosted:
                await self._observe()
            with anyio.move_on_after(self.config.period_s):
                for name in sorted(self._unbound):
                    await self._lookup(name)

    async def _observe(self) -> None:
        members = await sync_once(self._bus, self._team, timeout=self.config.period_s)
        if members is NOBODY:
            self._forget_all()
            return
        for update in members or ():
            self._merge(update)

    def _forget_all(self) -> None:
        """No member runs at all: a view of nobody, rather than a last word nobody can
        contradict (a member that restarts at incarnation 0 could not refute a verdict
        this observer made, since an observer tells no one)."""
        if self._infos:
            self._table = MembershipTable()
            self._infos.clear()
            self._unbound.clear()
            self._notify()

    async def _lookup(self, name: str) -> None:
        if await self._keys.lookup(name):
            self._unbound.discard(name)
            self._refresh(name)

    def _merge(self, update: Update | None) -> None:
        if update is not None and self._table.merge(update) is not None:
            self._refresh(update.member)

    def _refresh(self, name: str) -> None:
        """Recompute ``name``'s entry of the view; wake waiters when it changed."""
        entry = self._table.get(name)
        if entry is None:
            return
        facts = facts_of(entry.meta)
        bound = self._keys.bound(name)
        conflict = bool(bound) and facts.public_key not in ("", bound)
        if facts.public_key and not bound and name not in self._unbound:
            self._unbound.add(name)
            self._tg.start_soon(self._lookup, name)
        if facts.public_key != bound:
            if conflict and name not in self._conflicts:
                self._conflicts.add(name)
                log.warning(
                    "membership.key_conflict",
                    member=name,
                    bound=fingerprint(bound),
                    announced=fingerprint(facts.public_key),
                )
            facts = msgspec.structs.replace(facts, public_key=bound)
        info = MemberInfo(
            name=name,
            state=_LIVENESS[entry.state],
            incarnation=entry.incarnation,
            version=entry.version,
            facts=facts,
            key_conflict=conflict,
        )
        if self._infos.get(name) != info:
            self._infos[name] = info
            self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()


@contextlib.asynccontextmanager
async def open_membership(
    bus: Bus, team: str, *, config: SwimConfig | None = None
) -> AsyncIterator[GossipMembership]:
    """``team``'s membership view for the duration of the block.

    Leaving the block normally, or by an exception, makes every hosted agent leave (peers
    see ``left``); cancellation is a crash, as for ``open_member``. A view that hosts nobody
    has observed once before the block starts, so a reader sees the team at once.
    """
    keys = await open_key_bindings(bus, team)
    async with anyio.create_task_group() as tg:
        membership = GossipMembership(bus, team, tg, keys, config or SwimConfig())
        await membership._observe()
        tg.start_soon(membership._run)
        try:
            yield membership
        except anyio.get_cancelled_exc_class():
            raise
        except BaseException:
            await membership._leave_all()
            raise
        else:
            await membership._leave_all()
        finally:
            tg.cancel_scope.cancel()
