"""SWIM membership with in-process members on a real nats-server.

Members share one connection, as the benchmark's hundreds do; a crash is a cancelled member
(its subscription goes, no goodbye). Outcomes are asserted with generous deadlines, never
timings.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator

import anyio
import pytest
from anyio.abc import TaskStatus

from lmteams.bus import Bus
from lmteams.gossip import (
    ChangeKind,
    MemberEvent,
    MemberState,
    SwimConfig,
    SwimMember,
    Update,
    observe_members,
    open_member,
    pause_member,
)
from lmteams.testing import wait_until

TEAM = "gt"
FAST = SwimConfig(period_s=0.1, suspicion_mult=4.0)


class Recorder:
    """Every event every member saw, by observer."""

    def __init__(self) -> None:
        self.events: list[MemberEvent] = []

    def __call__(self, event: MemberEvent) -> None:
        self.events.append(event)

    def about(self, member: str, kind: ChangeKind) -> set[str]:
        """Observers that saw ``member`` go ``kind``."""
        return {e.observer for e in self.events if e.member == member and e.kind is kind}


@contextlib.asynccontextmanager
async def members(
    bus: Bus, n: int, config: SwimConfig = FAST, recorder: Recorder | None = None
) -> AsyncIterator[list[SwimMember]]:
    async with contextlib.AsyncExitStack() as stack:
        team = [
            await stack.enter_async_context(
                open_member(
                    bus,
                    TEAM,
                    f"m{i}",
                    {"device": "cpu", "load": 0.0},
                    config=config,
                    on_event=recorder,
                )
            )
            for i in range(n)
        ]
        yield team


def sees_all(team: list[SwimMember], names: set[str]) -> bool:
    return all(set(m.alive()) == names for m in team)


async def run_periods(team: list[SwimMember], count: int) -> None:
    """Modelled time: wait until every member has run ``count`` more protocol periods."""
    start = {m.id: m.statistics().periods for m in team}
    await wait_until(
        lambda: all(m.statistics().periods >= start[m.id] + count for m in team), timeout=60
    )


def state_of(member: SwimMember, name: str) -> MemberState | None:
    record = member.member(name)
    return record.state if record else None


async def test_eight_members_join_and_see_each_other(bus: Bus) -> None:
    async with members(bus, 8) as team:
        names = {m.id for m in team}
        await wait_until(lambda: sees_all(team, names), timeout=10)
        await run_periods(team, 10)
        stats = [m.statistics() for m in team]
    for s in stats:
        assert s.alive == 8 and s.dead == 0
        # constant traffic: one ping sent and about one answered per period, plus syncs
        assert s.messages_sent <= 6 * s.periods + 10
        assert s.pings_sent <= s.periods + 3


async def test_map_update_reaches_every_member(bus: Bus) -> None:
    async with members(bus, 8) as team:
        await wait_until(lambda: sees_all(team, {m.id for m in team}), timeout=10)
        team[3].update_meta({"load": 2.5, "model": "smollm2-135m"})

        def everyone_knows() -> bool:
            records = [m.member("m3") for m in team]
            return all(
                r is not None and r.meta == {"device": "cpu", "load": 2.5, "model": "smollm2-135m"}
                for r in records
            )

        await wait_until(everyone_knows, timeout=10)
        assert {m.member("m3").version for m in team} == {2}  # type: ignore[union-attr]


async def test_crashed_member_is_declared_dead_by_every_survivor(bus: Bus) -> None:
    recorder = Recorder()
    crash = anyio.CancelScope()

    async def victim(*, task_status: TaskStatus[SwimMember]) -> None:
        with crash:
            async with open_member(bus, TEAM, "victim", config=FAST) as member:
                task_status.started(member)
                await anyio.sleep_forever()

    async with members(bus, 6, recorder=recorder) as team, anyio.create_task_group() as tg:
        await tg.start(victim)
        names = {m.id for m in team} | {"victim"}
        await wait_until(lambda: sees_all(team, names), timeout=10)
        crash.cancel()  # no leave: peers must find out by probing
        survivors = {m.id for m in team}
        await wait_until(lambda: recorder.about("victim", ChangeKind.DEAD) >= survivors, timeout=15)
        assert all(state_of(m, "victim") is MemberState.DEAD for m in team)
        assert not recorder.about("victim", ChangeKind.LEFT)


async def test_voluntary_leave_propagates_as_left(bus: Bus) -> None:
    recorder = Recorder()
    async with members(bus, 6, recorder=recorder) as team:
        async with open_member(bus, TEAM, "leaver", config=FAST):
            names = {m.id for m in team} | {"leaver"}
            await wait_until(lambda: sees_all(team, names), timeout=10)
        await wait_until(
            lambda: all(state_of(m, "leaver") is MemberState.LEFT for m in team), timeout=10
        )
        await run_periods(team, 10)  # left stays left: no probe turns it into dead
        assert all(state_of(m, "leaver") is MemberState.LEFT for m in team)
    # a probe racing the news may suspect the leaver for a moment; it never kills it
    assert not recorder.about("leaver", ChangeKind.DEAD)


async def test_short_pause_is_suspected_at_most_never_dead(bus: Bus) -> None:
    """Members paused for just under the suspicion timeout, two at a time so a paused
    member is also an accuser that wakes with its backlog, are never declared dead by
    anyone; a member that really crashes still is, by every survivor.

    The old protocol failed this: its death timer was the suspicion timeout itself, so a
    refutation had only the little of it left after the pause to reach the first accuser.
    A short timeout (two periods) leaves no slack to hide that.
    """
    config = SwimConfig(period_s=0.1, suspicion_mult=2.0)
    recorder = Recorder()
    async with (
        members(bus, 8, config=config, recorder=recorder) as team,
        anyio.create_task_group() as tg,
    ):
        crash = anyio.CancelScope()

        async def victim(*, task_status: TaskStatus[SwimMember]) -> None:
            with crash:
                async with open_member(bus, TEAM, "victim", config=config) as member:
                    task_status.started(member)
                    await anyio.sleep_forever()

        await tg.start(victim)
        names = {m.id for m in team} | {"victim"}
        await wait_until(lambda: sees_all(team, names), timeout=10)
        suspicion = config.suspicion_timeout(len(names))
        # every accuser's timer has run out after this many of its periods
        settle = 2 * math.ceil(config.dead_timeout(len(names)) / config.period_s)
        for first, second in ((0, 1), (2, 3), (4, 5), (6, 7)):
            a, b = team[first], team[second]
            ran = a.statistics().periods
            pause_member(a, 0.9 * suspicion)  # the fault: silent for less than the timeout
            # pause an accuser once the accusations are out (or the pause is over unaccused)
            await wait_until(
                lambda a=a, ran=ran: (
                    bool(recorder.about(a.id, ChangeKind.SUSPECT)) or a.statistics().periods > ran
                )
            )
            pause_member(b, 0.9 * suspicion)
            await run_periods(team, settle)  # both paused members have run again, too
            await wait_until(lambda: sees_all(team, names), timeout=10)
        assert not any(recorder.about(m.id, ChangeKind.DEAD) for m in team)
        suspected = [m for m in team if recorder.about(m.id, ChangeKind.SUSPECT)]
        assert all(m.incarnation >= 1 for m in suspected)  # accused, they refuted

        crash.cancel()  # no leave: peers must find out by probing
        survivors = {m.id for m in team}
        await wait_until(lambda: recorder.about("victim", ChangeKind.DEAD) >= survivors, timeout=15)
    assert not any(recorder.about(m.id, ChangeKind.DEAD) for m in team)


async def test_observer_reads_the_table_without_joining(bus: Bus) -> None:
    async with members(bus, 4) as team:
        await wait_until(lambda: sees_all(team, {m.id for m in team}), timeout=10)
        team[1].update_meta({"load": 1.0})
        await wait_until(
            lambda: all(m.member("m1").meta["load"] == 1.0 for m in team),  # type: ignore[union-attr,index]
            timeout=10,
        )
        seen: tuple[Update, ...] = await observe_members(bus, TEAM, samples=2, interval=0.05)
        assert {u.member for u in seen} == {"m0", "m1", "m2", "m3"}
        assert {u.member: u.meta["load"] for u in seen if u.meta}["m1"] == 1.0
        await run_periods(team, 3)
        assert all(len(m.members()) == 4 for m in team)  # nobody added the observer


async def test_observer_of_an_empty_team_sees_nobody(bus: Bus) -> None:
    assert await observe_members(bus, "nobody-here", timeout=0.5) == ()


@pytest.mark.parametrize("bad", ["a.b", "", "x y"])
async def test_member_names_are_subject_tokens(bus: Bus, bad: str) -> None:
    from lmteams.errors import ConfigError

    with pytest.raises(ConfigError):
        async with open_member(bus, TEAM, bad):
            pass


async def test_pausing_a_member_that_is_not_running_is_refused(bus: Bus) -> None:
    """Pausing is for a member inside ``open_member``; anything else is a mistake, said so."""
    with pytest.raises(RuntimeError, match="running member"):
        pause_member(SwimMember(bus, TEAM, "idle"), 1.0)
