"""The membership table is a lattice: any order of the same updates gives the same table."""

from __future__ import annotations

import itertools
import types

from lmteams import gossip
from lmteams.gossip import BroadcastQueue, ChangeKind, MembershipTable, MemberState, Update

A, S, D, L = MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD, MemberState.LEFT


def u(state: MemberState, inc: int, version: int = 0, **meta: str | float) -> Update:
    return Update(member="x", state=state, incarnation=inc, version=version, meta=meta or None)


def test_all_lists_every_public_name() -> None:
    public = {
        name
        for name, value in vars(gossip).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert isinstance(gossip.__all__, tuple)
    assert set(gossip.__all__) == public


def test_precedence_incarnation_then_state() -> None:
    table = MembershipTable()
    assert table.merge(u(A, 0)).kind is ChangeKind.JOINED  # type: ignore[union-attr]
    assert table.merge(u(S, 0)).kind is ChangeKind.SUSPECT  # type: ignore[union-attr]
    assert table.merge(u(A, 0)) is None  # the suspect must refute with a higher incarnation
    assert table.merge(u(A, 1)).kind is ChangeKind.ALIVE  # type: ignore[union-attr]
    assert table.merge(u(D, 0)) is None  # stale confirmation
    assert table.merge(u(D, 1)).kind is ChangeKind.DEAD  # type: ignore[union-attr]
    assert table.merge(u(A, 2)).kind is ChangeKind.ALIVE  # type: ignore[union-attr]  # rejoin
    assert table.merge(u(L, 2)).kind is ChangeKind.LEFT  # type: ignore[union-attr]


def test_maps_are_last_writer_wins_by_version() -> None:
    table = MembershipTable()
    table.merge(u(A, 0, 2, load=2.0))
    assert table.merge(u(A, 0, 1, load=1.0)) is None
    change = table.merge(u(A, 0, 3, load=3.0))
    assert change is not None and change.kind is ChangeKind.UPDATED
    assert table.snapshot("x").meta == {"load": 3.0}
    assert table.merge(u(S, 0)) is not None
    assert table.snapshot("x").meta == {"load": 3.0}  # liveness news keeps the map


def test_merge_order_does_not_matter() -> None:
    updates = [u(A, 0, 1, load=1.0), u(S, 0), u(A, 1), u(D, 1), u(A, 0, 4, load=4.0), u(S, 2)]
    results = set()
    for order in itertools.permutations(updates):
        table = MembershipTable()
        for update in order:
            table.merge(update)
        results.add(msgspec_key(table.snapshot("x")))
    assert results == {(S, 2, 4, (("load", 4.0),))}


def msgspec_key(update: Update) -> tuple[object, ...]:
    return (update.state, update.incarnation, update.version, tuple(sorted(update.meta.items())))  # type: ignore[union-attr]


def test_broadcast_queue_sends_fresh_news_first_and_retires_it() -> None:
    queue = BroadcastQueue()
    old = Update(member="a", state=A, incarnation=0)
    queue.push(old)
    assert queue.take(1, 3) == [old]
    fresh = Update(member="b", state=S, incarnation=0)
    queue.push(fresh)
    assert queue.take(1, 3) == [fresh]
    for _ in range(3):
        queue.take(8, 3)
    assert len(queue) == 0
