"""Leader election and fencing on JetStream KV, candidates on separate connections."""

from __future__ import annotations

import anyio
import pytest

from lmteams.bus import EmbeddedServer, open_bus
from lmteams.consensus import FencedStore, LeaderElection, Leadership
from lmteams.errors import FencedOutError
from lmteams.testing import wait_until

TTL = 1.0


class Candidate:
    def __init__(self, name: str, election: LeaderElection, scope: anyio.CancelScope) -> None:
        self.name = name
        self.election = election
        self.scope = scope


async def _candidates(
    server: EmbeddedServer,
    names: list[str],
    tg: anyio.abc.TaskGroup,
    seen: list[tuple[str, Leadership]] | None = None,
) -> list[Candidate]:
    """Start the candidates; ``seen`` gets (candidate, what it learnt) for every change."""
    out: list[Candidate] = []
    for name in names:

        async def run(name: str = name, *, task_status: anyio.abc.TaskStatus[Candidate]) -> None:
            def record(change: Leadership) -> None:
                if seen is not None:
                    seen.append((name, change))

            async with open_bus(server.url, name=name) as bus:
                election = LeaderElection(bus, "elect", candidate=name, ttl_s=TTL, on_change=record)
                with anyio.CancelScope() as scope:
                    async with anyio.create_task_group() as inner:
                        await inner.start(election.run)
                        task_status.started(Candidate(name, election, scope))
                        await anyio.sleep_forever()

        out.append(await tg.start(run))
    return out


def _leaders(cands: list[Candidate]) -> list[str]:
    return [c.name for c in cands if c.election.is_leader]


async def test_one_leader_then_handover_when_it_dies(nats_server: EmbeddedServer) -> None:
    async with anyio.create_task_group() as tg:
        cands = await _candidates(nats_server, ["a", "b", "c"], tg)
        await wait_until(lambda: len(_leaders(cands)) == 1, timeout=10)
        (old,) = [c for c in cands if c.election.is_leader]
        old_token = old.election.token
        await wait_until(lambda: all(c.election.leader == old.name for c in cands), timeout=10)
        old.scope.cancel()  # dies without resigning: its lease must expire
        rest = [c for c in cands if c is not old]
        await wait_until(lambda: len(_leaders(rest)) == 1, timeout=30)
        (new,) = [c for c in rest if c.election.is_leader]
        assert new.election.token > old_token  # fencing tokens only grow
        tg.cancel_scope.cancel()


async def test_renewal_keeps_the_lease_past_its_ttl(nats_server: EmbeddedServer) -> None:
    """Four renewals, 3/4 TTL apart, keep one unbroken term: the lease outlives its TTL."""
    seen: list[tuple[str, Leadership]] = []
    async with anyio.create_task_group() as tg:
        cands = await _candidates(nats_server, ["a", "b"], tg, seen)
        await wait_until(lambda: len(_leaders(cands)) == 1, timeout=10)
        leader = _leaders(cands)[0]

        def own_tokens() -> list[int]:  # the leader's token changes once per renewal
            return [c.token for who, c in seen if who == leader]

        await wait_until(lambda: len(own_tokens()) >= 5, timeout=30)
        assert _leaders(cands) == [leader]
        assert [c.election.terms for c in cands if c.name == leader] == [1]
        tokens = own_tokens()
        assert all(t > 0 for t in tokens) and tokens == sorted(set(tokens))  # never lost it
        others_saw = {c.leader for who, c in seen if who != leader} - {""}
        assert others_saw <= {leader}  # nobody else won
        tg.cancel_scope.cancel()


async def test_resign_hands_over_before_expiry(nats_server: EmbeddedServer) -> None:
    async with anyio.create_task_group() as tg:
        cands = await _candidates(nats_server, ["a", "b"], tg)
        await wait_until(lambda: len(_leaders(cands)) == 1, timeout=10)
        (leader,) = [c for c in cands if c.election.is_leader]
        await leader.election.resign()
        leader.scope.cancel()
        other = next(c for c in cands if c is not leader)
        await wait_until(lambda: other.election.is_leader, timeout=TTL * 2)
        tg.cancel_scope.cancel()


async def test_a_stale_leader_is_fenced_out(nats_server: EmbeddedServer) -> None:
    async with open_bus(nats_server.url) as bus:
        store = await FencedStore.open(bus, "elect")
        await store.write("plan", b"from leader 1", token=5)
        await store.write("plan", b"from leader 2", token=9)
        with pytest.raises(FencedOutError, match="older than 9"):
            await store.write("plan", b"late write by leader 1", token=5)
        assert await store.read("plan") == (9, b"from leader 2")
        await store.write("plan", b"leader 2 again", token=9)  # the same leader may go on


async def test_a_restarted_leader_takes_its_lease_over_by_its_own_write(
    nats_server: EmbeddedServer,
) -> None:
    """A leader that restarts before its lease expires (same name, new process) must not adopt
    the dead lease: it would think itself leader while the key expires under it and another
    candidate takes the role, two leaders at once. It renews the lease with a write of its own."""
    async with anyio.create_task_group() as tg:
        (first,) = await _candidates(nats_server, ["a"], tg)
        await wait_until(lambda: first.election.is_leader, timeout=10)
        dead_token = first.election.token
        first.scope.cancel()  # killed: no resign, its lease is still live
        others = await _candidates(nats_server, ["a", "b"], tg)  # "a" restarted, and "b"
        a2, b = others
        await wait_until(lambda: a2.election.is_leader, timeout=10)
        assert a2.election.token > dead_token  # its own lease, not the dead one's revision
        for _ in range(int(3 * TTL / 0.1)):  # well past the dead lease's expiry
            assert len(_leaders(others)) <= 1, "two leaders at once"
            await anyio.sleep(0.1)
        assert _leaders(others) == ["a"] and b.election.leader == "a"
        tg.cancel_scope.cancel()
