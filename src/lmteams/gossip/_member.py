"""``SwimMember``: one member of a team's SWIM membership, on a shared bus connection.

Per period a member probes one peer from a shuffled round-robin list: a direct ping, then
ping-reqs through k others, then suspicion. A suspect that does not refute (by gossiping a
higher incarnation) in time is declared dead. Every probe, ack and relay carries
piggybacked updates, and every few periods a full-state push-pull with a random peer
repairs what dissemination dropped. A member costs one subscription, so hundreds can share
one connection (the benchmark runs 256 in one process).

A slow member must not be killed, which takes care at both ends of a suspicion:

- the accuser suspects only the incarnation its probe tested, and not at all if the target
  was heard from while the probe ran (a refutation racing a stale probe is not a new
  accusation);
- suspicion timers (``_suspicion.py``) run from the suspicion for the suspicion timeout
  plus a refutation allowance, for the whole group (not the part of it a newcomer has
  merged so far), restart for an accusation at a newer incarnation, and stop while their
  owner is itself stopped or starved;
- the refuter, once it runs again, sends its refutation straight to its accuser and a few
  others, and piggybacks it on every message for a while: its first messages after a pause
  answer requests that have timed out, so a count-limited retransmission would be spent
  on replies that nobody reads.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator, Mapping
from typing import Any, TypeVarTuple

import anyio
import msgspec
import structlog
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from lmteams.agents import dead_letter
from lmteams.bus import Bus, Codec, Incoming, RawMsg, Subjects, Subscription
from lmteams.errors import BusError, DecodeError, RemoteError
from lmteams.gossip._broadcast import BroadcastQueue
from lmteams.gossip._config import SwimConfig
from lmteams.gossip._faults import Gate
from lmteams.gossip._messages import (
    MAX_INCARNATION,
    Ack,
    InboxMessage,
    MemberState,
    MetaValue,
    Ping,
    PingReq,
    Sync,
    SyncState,
    Update,
)
from lmteams.gossip._stats import GossipCounters, GossipStatistics
from lmteams.gossip._suspicion import Suspicions
from lmteams.gossip._table import Change, ChangeKind, MembershipTable

__all__ = ("SwimMember", "MemberEvent", "open_member")

log = structlog.get_logger(__name__)
Ts = TypeVarTuple("Ts")

_INBOX: Codec[InboxMessage] = Codec(Ping, PingReq, Sync)
_SEED: Codec[Sync] = Codec(Sync)
_PROBE_ERRORS = (BusError, RemoteError)  # timeout, no responders, closed bus, remote failure
_LIVE = (MemberState.ALIVE, MemberState.SUSPECT)
_GONE = (MemberState.DEAD, MemberState.LEFT)


class MemberEvent(msgspec.Struct, frozen=True, kw_only=True):
    """A change in what this member believes about ``member``."""

    observer: str
    member: str
    kind: ChangeKind
    state: MemberState
    incarnation: int
    meta: dict[str, MetaValue] = {}
    at: float = 0.0  # anyio clock


class SwimMember:
    """One member's protocol state and loop. Create with ``open_member``."""

    def __init__(
        self,
        bus: Bus,
        team: str,
        member_id: str,
        meta: Mapping[str, MetaValue] | None = None,
        *,
        config: SwimConfig | None = None,
        on_event: Callable[[MemberEvent], None] | None = None,
    ) -> None:
        self.bus = bus
        self.subjects = Subjects(team)
        self.inbox = self.subjects.gossip_member(member_id)  # validates the id
        self.id = member_id
        self.config = config or SwimConfig()
        self._incarnation = 0
        self._version = 1
        self._meta: dict[str, MetaValue] = dict(meta or {})
        self._table = MembershipTable()
        self._table.set(self._own_record())
        self._queue = BroadcastQueue()
        self._suspicions = Suspicions()
        self._heard: dict[str, float] = {}  # member -> when a message from it last arrived
        self._refuting_until = -math.inf  # own record rides on every message until then
        self._probe_order: list[str] = []
        self._callbacks: list[Callable[[MemberEvent], None]] = [on_event] if on_event else []
        self._watchers: list[MemoryObjectSendStream[MemberEvent]] = []
        self._subscriptions: list[Subscription] = []
        self._tg: TaskGroup | None = None
        self._leaving = False
        self._gate = Gate()  # closed only by fault injection (``pause_member``)
        self._log = log.bind(member=member_id, team=team)
        self._c = GossipCounters()

    # --- public surface --------------------------------------------------------------------
    @property
    def incarnation(self) -> int:
        return self._incarnation

    @property
    def meta(self) -> dict[str, MetaValue]:
        return dict(self._meta)

    def members(self) -> tuple[Update, ...]:
        """Every member this one has heard of, itself included, sorted by name."""
        return self._table.snapshots()

    def member(self, member_id: str) -> Update | None:
        return self._table.snapshot(member_id) if member_id in self._table else None

    def alive(self) -> list[str]:
        """Names of members believed alive (suspects excluded), this one included."""
        return sorted(m.member for m in self.members() if m.state is MemberState.ALIVE)

    def update_meta(self, changes: Mapping[str, MetaValue], *, remove: Iterable[str] = ()) -> None:
        """Change this member's gossiped map; a new version spreads to everyone."""
        meta = {**self._meta, **changes}
        for key in remove:
            meta.pop(key, None)
        if meta == self._meta:
            return
        self._meta = meta
        self._version += 1
        self._publish_own()

    def on_event(self, callback: Callable[[MemberEvent], None]) -> None:
        """Call ``callback`` on every membership change (synchronously: keep it short)."""
        self._callbacks.append(callback)

    @contextlib.contextmanager
    def watch(self, max_buffer: int = 256) -> Iterator[MemoryObjectReceiveStream[MemberEvent]]:
        """Membership events as a bounded stream; a full buffer drops (and counts) events."""
        send, receive = anyio.create_memory_object_stream[MemberEvent](max_buffer)
        self._watchers.append(send)
        try:
            with receive:
                yield receive
        finally:
            self._watchers.remove(send)
            send.close()

    def statistics(self) -> GossipStatistics:
        return self._c.snapshot(self.id, self._incarnation, self._table, queued=len(self._queue))

    async def leave(self, timeout: float | None = None) -> None:
        """Leave voluntarily: tell a few members directly, then stop answering.

        Peers learn ``left`` rather than suspecting and killing this member; the direct
        telling makes the news start from several members at once. Idempotent.
        """
        if self._leaving:
            return
        self._leaving = True
        self._table.set(
            Update(member=self.id, state=MemberState.LEFT, incarnation=self._incarnation)
        )
        record = self._table.snapshot(self.id)
        self._queue.push(record)
        self._log.info("gossip.leave", incarnation=self._incarnation)
        peers = [m for m in self._table.live() if m != self.id]
        told = random.sample(peers, min(self.config.leave_fanout, len(peers)))
        deadline = timeout if timeout is not None else self.config.period_s
        with anyio.move_on_after(deadline):
            async with anyio.create_task_group() as tg:
                for peer in told:
                    tg.start_soon(self._tell, peer, record, deadline)
        # linger a period, still acking (with the news) whoever probes us before it arrives:
        # a probe of an already silent member would raise a needless suspicion
        await anyio.sleep(min(deadline, self.config.period_s))
        await self._unsubscribe()

    # --- lifecycle ---------------------------------------------------------------------------
    async def _start(self, tg: TaskGroup) -> None:
        self._tg = tg
        self._subscriptions.append(
            await self.bus.subscribe(
                self.inbox, self._on_inbox, codec=_INBOX, on_decode_error=self._on_refused
            )
        )
        # join through any current member before joining the seed group, so the first
        # request cannot be routed back to ourselves
        await self._sync(self.subjects.gossip_seed, timeout=self.config.period_s)
        self._subscriptions.append(
            await self.bus.subscribe(
                self.subjects.gossip_seed,
                self._on_seed,
                codec=_SEED,
                queue="swim-seed",
                on_decode_error=self._on_refused,
            )
        )
        self._log.info("gossip.joined", members=len(self._table))
        tg.start_soon(self._protocol_loop)

    async def _unsubscribe(self) -> None:
        subscriptions, self._subscriptions = self._subscriptions, []
        with anyio.CancelScope(shield=True), anyio.move_on_after(2.0):
            for sub in subscriptions:
                await sub.unsubscribe()

    async def _protocol_loop(self) -> None:
        period = self.config.period_s
        await anyio.sleep(random.uniform(0, period))  # spread the members' ticks
        due = anyio.current_time()
        while not self._leaving:
            await self._gate.wait()
            start = anyio.current_time()
            # a tick that comes late means this member was stopped or starved: it heard no
            # refutations meanwhile, so that time does not count against its suspects
            self._suspicions.defer(start - due)
            due = start + period
            self._c.periods += 1
            await self._guarded(self._round, period)
            await anyio.sleep(max(0.0, due - anyio.current_time()))

    async def _round(self, period: float) -> None:
        self._expire_suspicions(anyio.current_time())
        if self._alone():
            self._spawn(self._sync, self.subjects.gossip_seed, period)
        elif random.random() * self.config.sync_every < 1.0:
            # at random rather than every k-th period: members started together must
            # not all push their whole table in the same period
            peer = self._random_peers(1)
            if peer:
                self._spawn(self._sync, self.subjects.gossip_member(peer[0]), period)
        if random.random() * self.config.reconnect_every < 1.0:
            dead = [m for m in self._table.names() if self._held_dead(m)]
            if dead:  # a healed partition merges back through these (see reconnect_every)
                target = random.choice(dead)
                self._spawn(self._sync, self.subjects.gossip_member(target), period)
        await self._probe_round()

    def _held_dead(self, member: str) -> bool:
        entry = self._table.get(member)
        return member != self.id and entry is not None and entry.state is MemberState.DEAD

    def _spawn(self, fn: Callable[[*Ts], Coroutine[Any, Any, None]], *args: *Ts) -> None:
        if self._tg is not None:
            self._tg.start_soon(self._guarded, fn, *args)

    async def _guarded(self, fn: Callable[[*Ts], Coroutine[Any, Any, None]], *args: *Ts) -> None:
        """Run one round or background step; a fault fails that step, never the member.

        Everything a peer sends is validated when decoded, so a fault here is a bug: it is
        logged with its traceback and counted, and the member keeps probing and answering.
        """
        try:
            await fn(*args)
        except Exception:
            self._c.faults += 1
            self._log.exception("gossip.fault", step=getattr(fn, "__name__", "step"))

    async def _on_refused(self, msg: RawMsg, err: DecodeError) -> None:
        """A message that failed validation: counted and kept as a dead letter with why.

        The bus has already logged it and answered a request with the error.
        """
        self._c.refused += 1
        with contextlib.suppress(BusError):
            await dead_letter(self.bus, self.subjects, msg, "gossip", str(err))

    # --- probing -----------------------------------------------------------------------------
    async def _probe_round(self) -> None:
        target = self._next_target()
        if target is None:
            return
        entry = self._table.get(target)
        incarnation = entry.incarnation if entry is not None else 0
        started = anyio.current_time()
        if await self._ping(target, self.config.ping_timeout):
            return
        helpers = self._random_peers(self.config.indirect_probes, exclude=target)
        acked = False
        if helpers:
            with anyio.move_on_after(self.config.indirect_timeout) as scope:
                async with anyio.create_task_group() as tg:

                    async def _ask(helper: str) -> None:
                        nonlocal acked
                        if await self._ping_req(helper, target, self.config.indirect_timeout):
                            acked = True
                            scope.cancel()

                    for helper in helpers:
                        tg.start_soon(_ask, helper)
        if not acked and not self._leaving:
            self._c.probe_failures += 1
            self._suspect(target, incarnation, since=started)

    async def _ping(self, target: str, timeout: float) -> bool:
        msg = Ping(sender=self.id, incarnation=self._incarnation, updates=self._piggyback(target))
        self._c.pings += 1
        return await self._probe(target, msg, timeout)

    async def _ping_req(self, helper: str, target: str, timeout: float) -> bool:
        msg = PingReq(
            sender=self.id,
            incarnation=self._incarnation,
            target=target,
            updates=self._piggyback(helper),
        )
        self._c.ping_reqs += 1
        return await self._probe(helper, msg, timeout)

    async def _probe(self, peer: str, msg: Ping | PingReq, timeout: float) -> bool:
        """Send a probe to ``peer``; absorb the ack's news. False when no ack came in time."""
        try:
            ack = await self.bus.request(
                self.subjects.gossip_member(peer), msg, expect=Ack, timeout=timeout, sender=self.id
            )
        except _PROBE_ERRORS:
            return False
        self._absorb(ack.sender, ack.incarnation, ack.updates)
        return True

    async def _tell(self, peer: str, record: Update, timeout: float) -> None:
        """Send ``record`` to ``peer`` directly, ahead of the gossip; absorb the ack's news."""
        msg = Ping(sender=self.id, incarnation=self._incarnation, updates=(record,))
        self._c.pings += 1
        await self._probe(peer, msg, timeout)

    async def _sync(self, subject: str, timeout: float) -> None:
        msg = Sync(sender=self.id, incarnation=self._incarnation, members=self._table.snapshots())
        self._c.syncs += 1
        try:
            state = await self.bus.request(
                subject, msg, expect=SyncState, timeout=timeout, sender=self.id
            )
        except _PROBE_ERRORS:
            return
        # what the partner knew, others learn by gossip or their own syncs: re-broadcasting
        # it would flood every joiner's queue with the whole table
        self._absorb(state.sender, state.incarnation, state.members, spread=False)

    def _next_target(self) -> str | None:
        """Round-robin over a shuffled list: every member is probed within N periods."""
        while True:
            while self._probe_order:
                candidate = self._probe_order.pop()
                entry = self._table.get(candidate)
                if entry is not None and entry.state in _LIVE:
                    return candidate
            order = [m for m in self._table.live() if m != self.id]
            if not order:
                return None
            random.shuffle(order)
            self._probe_order = order

    def _random_peers(self, count: int, *, exclude: str = "") -> list[str]:
        peers = [
            m
            for m in self._table.live()
            if m not in (self.id, exclude) and m not in self._suspicions
        ]
        return random.sample(peers, min(count, len(peers)))

    def _alone(self) -> bool:
        return not any(m != self.id for m in self._table.live())

    # --- receiving ---------------------------------------------------------------------------
    async def _on_inbox(self, msg: Incoming[InboxMessage]) -> None:
        await self._gate.wait()
        self._c.received += 1
        if self._leaving:
            # still answer while telling others, so a probe does not turn a leave into a death
            if isinstance(msg.body, Ping):
                await self._reply_ack(msg, msg.body.sender)
            return
        match msg.body:
            case Ping(sender=sender, incarnation=incarnation, updates=updates):
                self._absorb(sender, incarnation, updates)
                await self._reply_ack(msg, sender)
            case PingReq(sender=sender, incarnation=incarnation, updates=updates, target=target):
                self._absorb(sender, incarnation, updates)
                self._spawn(self._relay, msg, sender, target)
            case Sync():
                await self._on_sync(msg.body, msg)

    async def _on_seed(self, msg: Incoming[Sync]) -> None:
        await self._gate.wait()
        self._c.received += 1
        if not self._leaving:
            await self._on_sync(msg.body, msg)

    async def _on_sync(self, body: Sync, msg: Incoming[InboxMessage] | Incoming[Sync]) -> None:
        if not body.observer:
            self._absorb(body.sender, body.incarnation, body.members)
        self._c.acks += 1
        # after the merge this table dominates the pushed one: send back only what differs
        reply = SyncState(
            sender=self.id,
            incarnation=self._incarnation,
            members=self._table.differing(body.members),
        )
        with contextlib.suppress(*_PROBE_ERRORS):
            await msg.respond(reply, sender=self.id)

    async def _reply_ack(self, msg: Incoming[InboxMessage], to: str) -> None:
        ack = Ack(
            sender=self.id,
            incarnation=self._incarnation,
            target=self.id,
            updates=self._piggyback(to),
        )
        self._c.acks += 1
        with contextlib.suppress(*_PROBE_ERRORS):
            await msg.respond(ack, sender=self.id)

    async def _relay(self, msg: Incoming[InboxMessage], requester: str, target: str) -> None:
        if not await self._ping(target, self.config.ping_timeout):
            return  # silence: the requester's deadline covers it
        ack = Ack(
            sender=self.id,
            incarnation=self._incarnation,
            target=target,
            updates=self._piggyback(requester),
        )
        self._c.acks += 1
        with contextlib.suppress(*_PROBE_ERRORS):
            await msg.respond(ack, sender=self.id)

    # --- merging -----------------------------------------------------------------------------
    def _absorb(
        self, sender: str, incarnation: int, updates: Iterable[Update], *, spread: bool = True
    ) -> None:
        # a message from a member proves it alive at the incarnation it carries; only a
        # higher incarnation changes anything, so a suspect must still refute to clear itself
        if sender and sender != self.id:
            self._heard[sender] = anyio.current_time()
            self._apply(Update(member=sender, state=MemberState.ALIVE, incarnation=incarnation))
        for update in updates:
            self._apply(update, spread=spread, via=sender)

    def _apply(self, update: Update, *, spread: bool = True, via: str = "") -> None:
        """Merge one update; ``via`` is the member whose message carried it, if any."""
        if update.member == self.id:
            self._about_me(update, via)
            return
        change = self._table.merge(update)
        if change is None:
            return
        if spread:
            self._queue.push(self._table.snapshot(update.member))
        self._react(change)

    def _about_me(self, update: Update, via: str = "") -> None:
        """Refute any belief about this member that its own record does not dominate."""
        if self._leaving:
            return
        bump = refute = False
        if update.state is not MemberState.ALIVE and update.incarnation >= self._incarnation:
            self._incarnation = min(update.incarnation + 1, MAX_INCARNATION)
            self._c.refutations += 1
            self._log.info(
                "gossip.refute", accused=update.state.value, incarnation=self._incarnation
            )
            bump = refute = True
        elif update.incarnation > self._incarnation:  # a former life of ours was further on
            self._incarnation = update.incarnation
            bump = True
        newer_map = update.meta is not None and (
            update.version > self._version
            or (update.version == self._version and update.meta != self._meta)
        )
        if newer_map:  # a former life of ours wrote later versions: write past them
            self._version = min(update.version + 1, MAX_INCARNATION)
            bump = True
        if bump:
            self._publish_own()
        if refute:
            self._refute(via)

    def _refute(self, accuser: str) -> None:
        """Get a fresh refutation out fast: straight to the accuser and a few others, and on
        every message sent until the accusers' timers would have run out.

        The queue's count-limited retransmission is not enough after a pause: the first
        messages a resumed member sends answer the backlog's requests, long timed out, and
        would use up the count on replies nobody reads.
        """
        size = self._group_size()
        self._refuting_until = anyio.current_time() + self.config.dead_timeout(size)
        record = self._table.snapshot(self.id)
        peers = self._random_peers(self.config.refute_fanout, exclude=accuser)
        if accuser and accuser in self._table and accuser != self.id:
            peers.append(accuser)
        for peer in peers:
            self._spawn(self._tell, peer, record, self.config.period_s)

    def _own_record(self) -> Update:
        return Update(
            member=self.id,
            state=MemberState.ALIVE,
            incarnation=self._incarnation,
            version=self._version,
            meta=dict(self._meta),
        )

    def _publish_own(self) -> None:
        record = self._own_record()
        self._table.set(record)
        self._queue.push(record)

    def _react(self, change: Change) -> None:
        member = change.member
        now = anyio.current_time()
        if change.state is MemberState.SUSPECT:
            self._suspicions.start(member, change.incarnation, now)
        else:
            self._suspicions.clear(member)
            if change.state in _GONE:
                self._heard.pop(member, None)
        if change.kind is ChangeKind.JOINED:
            # SWIM inserts newcomers at a random place in the probe order
            self._probe_order.insert(random.randint(0, len(self._probe_order)), member)
        if change.kind in (ChangeKind.SUSPECT, ChangeKind.DEAD, ChangeKind.LEFT, ChangeKind.ALIVE):
            self._log.info(
                f"gossip.{change.kind.value}", peer=member, incarnation=change.incarnation
            )
        entry = self._table.get(member)
        event = MemberEvent(
            observer=self.id,
            member=member,
            kind=change.kind,
            state=change.state,
            incarnation=change.incarnation,
            meta=dict(entry.meta) if entry is not None else {},
            at=now,
        )
        for callback in self._callbacks:
            callback(event)
        for watcher in self._watchers:
            try:
                watcher.send_nowait(event)
            except anyio.WouldBlock:
                self._c.dropped += 1

    def _suspect(self, target: str, incarnation: int, *, since: float) -> None:
        """Suspect ``target`` at the ``incarnation`` a probe started ``since`` tested.

        Not if the target was heard from since then, or has a newer incarnation by now (it
        refuted while the probe ran): its silence is then older than its proof of life, and
        an accusation at the new incarnation would make it refute all over again.
        """
        entry = self._table.get(target)
        if entry is None or entry.state is not MemberState.ALIVE:
            return
        if entry.incarnation != incarnation or self._heard.get(target, -math.inf) >= since:
            return
        self._c.suspicions += 1
        self._apply(Update(member=target, state=MemberState.SUSPECT, incarnation=incarnation))

    def _expire_suspicions(self, now: float) -> None:
        timeout = self.config.dead_timeout(self._group_size())
        for member, incarnation in self._suspicions.expired(now, timeout):
            entry = self._table.get(member)
            if entry is None or entry.state is not MemberState.SUSPECT:
                continue
            if entry.incarnation != incarnation:
                continue
            self._apply(Update(member=member, state=MemberState.DEAD, incarnation=incarnation))

    def _group_size(self) -> int:
        return max(
            1,
            len(self._table)
            - self._table.count(MemberState.DEAD)
            - self._table.count(MemberState.LEFT),
        )

    def _piggyback(self, to: str) -> tuple[Update, ...]:
        """Updates for a message to ``to``: its own bad news first (Lifeguard's buddy system),
        then this member's refutation while it is fresh, then the queue."""
        limit = self.config.max_piggyback
        first: list[Update] = []
        entry = self._table.get(to)
        if entry is not None and entry.state is not MemberState.ALIVE:
            first.append(self._table.snapshot(to))
        if anyio.current_time() < self._refuting_until:
            first.append(self._table.snapshot(self.id))
        out = first + self._queue.take(
            limit - len(first),
            self.config.retransmit_limit(self._group_size()),
            skip=[u.member for u in first],
        )
        self._c.updates += len(out)
        return tuple(out)


@contextlib.asynccontextmanager
async def open_member(
    bus: Bus,
    team: str,
    member_id: str,
    meta: Mapping[str, MetaValue] | None = None,
    *,
    config: SwimConfig | None = None,
    on_event: Callable[[MemberEvent], None] | None = None,
) -> AsyncIterator[SwimMember]:
    """Join ``team``'s gossip as ``member_id`` for the duration of the block.

    Leaving the block normally, or by an exception, leaves the team (peers see ``left``).
    Leaving it by cancellation is treated as a crash: no goodbye, the subscription goes,
    and peers find out by failed probes. Call ``leave()`` first where a cancelled path
    should still say goodbye (a draining agent).
    """
    member = SwimMember(bus, team, member_id, meta, config=config, on_event=on_event)
    async with anyio.create_task_group() as tg:
        try:
            await member._start(tg)
            yield member
        except anyio.get_cancelled_exc_class():
            await member._unsubscribe()
            raise
        except BaseException:
            with anyio.CancelScope(shield=True):
                await member.leave()
            raise
        else:
            await member.leave()
        finally:
            member._leaving = True
            await member._unsubscribe()
            tg.cancel_scope.cancel()
