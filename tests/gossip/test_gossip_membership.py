"""``GossipMembership``: one view of the team, fed by SWIM, on a real nats-server.

Several hosted members share one view in one process, as a process hosting several agents
would; a second view hosting nobody is an observer, as ``lmteams status`` or a user's
dispatcher is. Outcomes are awaited with generous deadlines, never timed.
"""

from __future__ import annotations

import math
from typing import Any

import anyio
import msgspec
import pytest
from anyio.abc import TaskStatus

from lmteams.agents import AgentIdentity, MemberFacts, MemberInfo, Membership
from lmteams.bus import Bus
from lmteams.gossip import (
    GossipMembership,
    SwimConfig,
    facts_meta,
    facts_of,
    open_membership,
    pause_member,
)
from lmteams.testing import wait_until

TEAM = "gm"
FAST = SwimConfig(period_s=0.1, suspicion_mult=4.0)


def facts(n: int = 0, *, key: str = "", load: int = 0) -> MemberFacts:
    return MemberFacts(
        device=f"sim:dev{n}",
        model="smollm2-135m",
        backend="sim",
        tokens_per_s=10.0 * (n + 1),
        in_flight=load,
        roles=("worker",),
        public_key=key,
        host="h",
        pid=100 + n,
    )


def states(view: GossipMembership) -> dict[str, str]:
    return {m.name: m.state for m in view.members()}


def seen(view: GossipMembership) -> dict[str, tuple[str, MemberFacts]]:
    """What a reader of the view acts on: liveness and facts (incarnations may lag)."""
    return {m.name: (m.state, m.facts) for m in view.members()}


def test_facts_travel_as_a_flat_map_and_back() -> None:
    original = facts(2, key=AgentIdentity().public_key, load=3)
    original = msgspec.structs.replace(original, roles=("worker", "coordinator"), served=7)
    meta = facts_meta(original)
    assert all(isinstance(v, str | float) for v in meta.values())
    assert facts_of(meta) == original
    # a peer's map is its word: values of the wrong kind read as defaults, never raise
    hostile: dict[str, Any] = {"load": "lots", "pid": -4.0, "tokens_per_s": math.inf, "roles": 3.0}
    assert facts_of(hostile) == MemberFacts()
    assert facts_of({"state": "draining"}).serving == "draining"
    assert facts_of({"state": "bogus"}).serving == "serving"


async def test_one_view_sees_joins_versioned_updates_and_leaves(bus: Bus) -> None:
    async with (
        open_membership(bus, TEAM, config=FAST) as view,
        open_membership(bus, TEAM, config=FAST) as observer,
    ):
        membership: Membership = view  # the protocol agents depend on, satisfied as is
        for n in range(3):
            await membership.join(f"m{n}", facts(n))
        names = {"m0", "m1", "m2"}
        for v in (view, observer):
            await wait_until(lambda v=v: states(v) == dict.fromkeys(names, "alive"), timeout=15)
        assert view.live() == sorted(names)
        assert all(view.member(n).facts == facts(int(n[1])) for n in names)  # type: ignore[union-attr]
        version = view.member("m1").version  # type: ignore[union-attr]

        woke = anyio.Event()

        async def reader(*, task_status: TaskStatus[None]) -> None:
            task_status.started()
            await view.wait_changed()  # waiting before the update below is made
            woke.set()

        async with anyio.create_task_group() as tg:
            await tg.start(reader)
            view.update("m1", facts(1, load=2))
            await wait_until(woke.is_set, timeout=5)
        view.update("m1", facts(1, load=2))  # unchanged facts are no news: same version
        updated: MemberInfo = view.member("m1")  # type: ignore[assignment]
        assert updated.facts.in_flight == 2 and updated.version == version + 1
        await wait_until(lambda: observer.member("m1") == updated, timeout=15)

        await view.leave("m2")
        assert view.swim("m2") is None
        for v in (view, observer):
            await wait_until(lambda v=v: states(v).get("m2") == "left", timeout=15)
        assert view.live() == ["m0", "m1"] and "m2" not in view.live()
        await wait_until(lambda: seen(observer) == seen(view), timeout=15)


async def test_a_paused_member_is_dead_in_the_view_then_alive_after_refuting(bus: Bus) -> None:
    async with (
        open_membership(bus, TEAM, config=FAST) as view,
        open_membership(bus, TEAM, config=FAST) as observer,
    ):
        for n in range(4):
            await view.join(f"m{n}", facts(n))
        await wait_until(lambda: len(view.live()) == 4 and len(observer.live()) == 4, timeout=15)
        victim = view.swim("m3")
        assert victim is not None
        # silent far past the suspicion timeout: its peers must declare it dead
        pause = 10 * FAST.dead_timeout(4)
        pause_member(victim, pause)
        await wait_until(lambda: states(view)["m3"] == "dead", timeout=pause)
        assert "m3" not in view.live() and not view.member("m3").available  # type: ignore[union-attr]
        await wait_until(lambda: states(view)["m3"] == "alive", timeout=30)
        assert view.member("m3").incarnation >= 1  # type: ignore[union-attr]  # it refuted
        await wait_until(lambda: seen(observer) == seen(view), timeout=15)
        assert states(observer)["m3"] == "alive"


async def test_a_second_key_for_a_bound_name_is_refused_and_flagged(
    bus: Bus, log_events: list[dict[str, Any]]
) -> None:
    first, second = AgentIdentity().public_key, AgentIdentity().public_key
    async with open_membership(bus, TEAM, config=FAST) as earlier:
        await earlier.join("k1", facts(key=first))
        assert earlier.public_key("k1") == first
        await earlier.leave("k1")
    async with (
        open_membership(bus, TEAM, config=FAST) as impostor,
        open_membership(bus, TEAM, config=FAST) as observer,
    ):
        await impostor.join("k1", facts(key=second))  # the same name, another key
        assert [e for e in log_events if e["event"] == "membership.key_refused"]
        for v in (impostor, observer):
            await wait_until(lambda v=v: states(v).get("k1") == "alive", timeout=15)
            await wait_until(lambda v=v: v.conflicts() == {"k1"}, timeout=15)
            info: MemberInfo = v.member("k1")  # type: ignore[assignment]
            assert info.key_conflict
            assert v.public_key("k1") == first and info.facts.public_key == first
        flagged = len([e for e in log_events if e["event"] == "membership.key_conflict"])
        for load in range(1, 4):  # more news of the flagged member is not logged again
            impostor.update("k1", facts(key=second, load=load))
        await wait_until(lambda: observer.member("k1").facts.in_flight == 3, timeout=15)  # type: ignore[union-attr]
        assert len([e for e in log_events if e["event"] == "membership.key_conflict"]) == flagged
        # a name with no binding yet binds its first key, unflagged
        await impostor.join("k2", facts(key=second))
        await wait_until(lambda: observer.public_key("k2") == second, timeout=15)
        assert not observer.member("k2").key_conflict  # type: ignore[union-attr]


async def test_an_observer_of_an_empty_team_sees_nobody(bus: Bus) -> None:
    async with open_membership(bus, "nobody-here", config=FAST) as view:
        assert view.members() == () and view.live() == []
        assert view.public_key("anyone") == ""
        assert view.member("anyone") is None


@pytest.mark.parametrize("bad", ["a.b", "x y"])
async def test_member_names_are_subject_tokens(bus: Bus, bad: str) -> None:
    from lmteams.errors import ConfigError

    async with open_membership(bus, TEAM, config=FAST) as view:
        with pytest.raises(ConfigError):
            await view.join(bad, facts())
        assert view.members() == ()
