"""The dispatcher on a real nats-server with simulated workers: placement, hedging, churn.

Who may take work comes from the runtime's membership view, which the workers publish into
themselves; a test that needs a failure detector's verdict (SWIM's, in a daemon) hands it
down through :class:`Verdicts`. Speeds are compared through the modelled seconds agents
report (not the wall clock), and hedging through which agent answered and what the loser's
backend counted.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import ClassVar

import anyio
import msgspec
import pytest

from lmteams.agents import (
    Answer,
    DispatcherConfig,
    LocalMembership,
    MemberFacts,
    MemberInfo,
    Membership,
    Prompt,
    WorkerAgent,
    WorkerConfig,
    open_dispatcher,
    open_runtime,
)
from lmteams.bus import Bus
from lmteams.errors import AgentError, ConfigError
from lmteams.hardware import (
    AgentLoad,
    Backend,
    DeviceClass,
    HedgePolicy,
    LeastExpectedCompletion,
    Placement,
    RoundRobin,
    SimulatedBackend,
)
from lmteams.testing import wait_until

TEAM = "dt"
SCALE = 0.25  # modelled seconds -> wall seconds: tasks of a few to a few dozen ms


def device(name: str, tokens_per_s: float, **faults: float) -> DeviceClass:
    """A fault-free device (unless told otherwise) generating at ``tokens_per_s``."""
    return DeviceClass(
        name=name,
        prompt_tokens_per_s=20_000.0,
        generation_tokens_per_s=tokens_per_s,
        load_s=0.0,
        jitter=0.0,
        **faults,
    )


FAST = device("fast", 2000.0)
SLOW = device("slow", 250.0)
# advertises the fastest rates, then takes 500x as long on every call: a planted straggler
STRAGGLER = device("straggler", 4000.0, straggler_prob=1.0, straggler_factor=500.0)
# a call that does not end within any test (minutes): what it runs can only be cancelled
STUCK = device("stuck", 4000.0, straggler_prob=1.0, straggler_factor=20_000.0)


class Worker(WorkerAgent):
    def __init__(self, device_class: DeviceClass) -> None:
        super().__init__(WorkerConfig(heartbeat_s=0.2, fetch_timeout_s=0.5))
        self.device_class = device_class

    @contextlib.asynccontextmanager
    async def open_backend(self) -> AsyncIterator[Backend]:  # type: ignore[override]
        backend = SimulatedBackend(self.device_class, seed=1, time_scale=SCALE)
        try:
            yield backend
        finally:
            await backend.aclose()

    def simulated(self) -> SimulatedBackend:
        assert isinstance(self.backend, SimulatedBackend)
        return self.backend


class Prefer:
    """Always ``name`` while the view lets it take work: puts a queue where a test wants it."""

    rebalance: ClassVar[bool] = False

    def __init__(self, name: str) -> None:
        self.name = name

    def choose(
        self, loads: Sequence[AgentLoad], task_tokens: float, prompt_tokens: float = 0.0
    ) -> str:
        names = [load.agent for load in loads]
        return self.name if self.name in names else names[0]


class Verdicts:
    """The runtime's :class:`LocalMembership`, plus a failure detector's verdicts from the test.

    ``declare_dead(name)`` is what SWIM does to a member that stops answering; the agent
    itself keeps running, so only the view can make the dispatcher give its work away.
    """

    def __init__(self) -> None:
        self.inner = LocalMembership()
        self.dead: set[str] = set()
        self._verdict = anyio.Event()

    def declare_dead(self, name: str) -> None:
        self.dead.add(name)
        self._verdict.set()
        self._verdict = anyio.Event()

    def _judged(self, info: MemberInfo) -> MemberInfo:
        return msgspec.structs.replace(info, state="dead") if info.name in self.dead else info

    def members(self) -> tuple[MemberInfo, ...]:
        return tuple(self._judged(m) for m in self.inner.members())

    def member(self, name: str) -> MemberInfo | None:
        info = self.inner.member(name)
        return None if info is None else self._judged(info)

    def live(self) -> list[str]:
        return [m.name for m in self.members() if m.live]

    def public_key(self, name: str) -> str:
        return self.inner.public_key(name)

    async def wait_changed(self) -> None:
        async with anyio.create_task_group() as tg:

            async def first(wait: Callable[[], Awaitable[object]]) -> None:
                await wait()
                tg.cancel_scope.cancel()

            tg.start_soon(first, self.inner.wait_changed)
            tg.start_soon(first, self._verdict.wait)

    async def join(self, name: str, facts: MemberFacts) -> None:
        await self.inner.join(name, facts)

    def update(self, name: str, facts: MemberFacts) -> None:
        self.inner.update(name, facts)

    async def leave(self, name: str) -> None:
        await self.inner.leave(name)


def busy_s(answers: list[Answer]) -> dict[str, float]:
    """Modelled seconds each agent spent: the largest is the run's modelled makespan."""
    busy: Counter[str] = Counter()
    for a in answers:
        busy[a.agent] += a.prompt_s + a.generation_s
    return dict(busy)


async def run_batch(
    bus: Bus, membership: Membership, placement: Placement, tasks: int
) -> list[Answer]:
    answers: list[Answer] = []
    async with open_dispatcher(bus, TEAM, membership=membership, placement=placement) as dispatcher:
        await dispatcher.wait_for_agents(2)

        async def one(i: int) -> None:
            answers.append(await dispatcher.submit(f"question {i}", max_tokens=64, timeout=30))

        async with anyio.create_task_group() as tg:
            for i in range(tasks):
                tg.start_soon(one, i)
        stats = dispatcher.statistics()
    assert stats.answered_total == tasks and stats.failed == 0
    return answers


async def test_placement_sends_more_work_to_faster_agents(bus: Bus) -> None:
    async with open_runtime(bus, TEAM) as rt:
        await rt.spawn(Worker(FAST), actor_id="fast")
        await rt.spawn(Worker(SLOW), actor_id="slow")
        aware = await run_batch(bus, rt.membership, LeastExpectedCompletion(), 36)
        blind = await run_batch(bus, rt.membership, RoundRobin(), 36)
    aware_counts = Counter(a.agent for a in aware)
    blind_counts = Counter(a.agent for a in blind)
    assert blind_counts == Counter(fast=18, slow=18)
    # 8x the rate: most of the work, far more than round-robin's half
    assert aware_counts["fast"] >= 28 > blind_counts["fast"]
    # and the modelled makespan is shorter
    assert max(busy_s(aware).values()) < 0.5 * max(busy_s(blind).values())


async def test_hedged_request_beats_a_planted_straggler(bus: Bus) -> None:
    straggler, steady = Worker(STRAGGLER), Worker(FAST)
    hedge = HedgePolicy(factor=2.0, min_delay_s=0.05)
    async with open_runtime(bus, TEAM) as rt:
        await rt.spawn(straggler, actor_id="straggler")
        await rt.spawn(steady, actor_id="steady")
        async with open_dispatcher(bus, TEAM, membership=rt.membership, hedge=hedge) as dispatcher:
            await dispatcher.wait_for_agents(2)
            answer = await dispatcher.submit(
                Prompt(task_id="h-1", prompt="hedge me", max_tokens=64), timeout=20
            )
            stats = dispatcher.statistics()
        # the straggler was tried first (it advertises the best rate), the copy won
        assert stats.sent == {"straggler": 1, "steady": 1}
        assert answer.agent == "steady" and answer.task_id == "h-1"
        assert (stats.hedged, stats.hedge_wins, stats.cancelled) == (1, 1, 1)
        # and the loser really stopped generating: its backend saw the call cancelled
        backend = straggler.simulated()
        await wait_until(lambda: backend.statistics().cancelled == 1, timeout=5)
        assert backend.statistics().completed == 0 and straggler.cancelled == 1


async def test_rates_come_from_the_view_and_a_member_that_leaves_gets_no_work(bus: Bus) -> None:
    async with open_runtime(bus, TEAM) as rt:
        await rt.spawn(Worker(FAST), actor_id="a")
        await rt.spawn(Worker(SLOW), actor_id="b")
        # members that joined before the dispatcher opened are placed on at once, at their rates
        async with open_dispatcher(bus, TEAM, membership=rt.membership) as dispatcher:
            await dispatcher.wait_for_agents(2, timeout=5)
            assert {load.agent: load.tokens_per_s for load in dispatcher.agents()} == {
                "a": 2000.0 / SCALE,
                "b": 250.0 / SCALE,
            }
            await rt.stop("a")
            left = rt.membership.member("a")
            assert left is not None and left.state == "left"
            assert [load.agent for load in dispatcher.agents()] == ["b"]
            answers = [await dispatcher.submit(f"q{i}", max_tokens=8, timeout=10) for i in range(3)]
            assert "a" not in dispatcher.statistics().sent
    assert {a.agent for a in answers} == {"b"}


async def test_a_member_declared_dead_loses_its_waiting_and_running_work(bus: Bus) -> None:
    view = Verdicts()
    stuck = Worker(STUCK)
    config = DispatcherConfig(window=1)
    async with open_runtime(bus, TEAM, membership=view) as rt:
        await rt.spawn(stuck, actor_id="a")
        await rt.spawn(Worker(FAST), actor_id="b")
        async with open_dispatcher(
            bus, TEAM, membership=view, placement=Prefer("a"), config=config
        ) as dispatcher:
            await dispatcher.wait_for_agents(2)
            answers: list[Answer] = []

            async def one(i: int) -> None:
                answers.append(await dispatcher.submit(f"q{i}", max_tokens=64, timeout=60))

            async with anyio.create_task_group() as tg:
                for i in range(3):
                    tg.start_soon(one, i)
                # one prompt on the wire to a (it will not end), two waiting here for it
                await wait_until(lambda: dispatcher.statistics().sent == {"a": 1})
                assert [load.in_flight for load in dispatcher.agents()] == [3, 0]
                view.declare_dead("a")
            stats = dispatcher.statistics()
            assert [load.agent for load in dispatcher.agents()] == ["b"]
            # the one it ran was retried on b, the two waiting went to b unsent to a
            assert stats.sent == {"a": 1, "b": 3} and stats.retried == 1
            assert (await dispatcher.submit("after", max_tokens=8, timeout=10)).agent == "b"
    assert Counter(a.agent for a in answers) == Counter(b=3)
    # a was told to stop generating what nobody waits for any more
    assert stuck.simulated().statistics().cancelled == 1 and stuck.cancelled == 1


async def test_a_draining_member_gets_no_new_work_and_hands_back_its_queue(bus: Bus) -> None:
    config = DispatcherConfig(window=1)
    async with open_runtime(bus, TEAM) as rt:
        stuck = Worker(STUCK)
        await rt.spawn(stuck, actor_id="a")
        await rt.spawn(Worker(FAST), actor_id="b")
        async with open_dispatcher(
            bus, TEAM, membership=rt.membership, placement=Prefer("a"), config=config
        ) as dispatcher:
            await dispatcher.wait_for_agents(2)
            answers: list[Answer] = []

            async def one(i: int) -> None:
                answers.append(await dispatcher.submit(f"q{i}", max_tokens=64, timeout=60))

            async with anyio.create_task_group() as tg:
                held = anyio.CancelScope()

                async def first() -> None:
                    with held:
                        await dispatcher.submit("held by a", max_tokens=64, timeout=60)

                tg.start_soon(first)
                await wait_until(lambda: dispatcher.statistics().sent == {"a": 1})
                for i in range(2):
                    tg.start_soon(one, i)
                await wait_until(lambda: dispatcher.agents()[0].in_flight == 3)
                tg.start_soon(rt.stop, "a")  # drains: a finishes what it runs, takes nothing

                def draining() -> bool:
                    info = rt.membership.member("a")
                    return info is not None and info.facts.serving == "draining" and info.live

                await wait_until(draining)
                # the draining member is no longer placed on; what waited for it went to b
                assert [load.agent for load in dispatcher.agents()] == ["b"]
                tg.start_soon(one, 2)
                await wait_until(lambda: len(answers) == 3)
                held.cancel()  # nobody waits for a's prompt now: its cancel lets a finish draining
            stats = dispatcher.statistics()
            assert stats.sent == {"a": 1, "b": 3}
            await wait_until(lambda: getattr(rt.membership.member("a"), "state", "") == "left")
    assert Counter(a.agent for a in answers) == Counter(b=3)


async def test_a_member_that_joins_later_takes_waiting_work(bus: Bus) -> None:
    config = DispatcherConfig(window=1)
    async with open_runtime(bus, TEAM) as rt:
        await rt.spawn(Worker(SLOW), actor_id="slow")
        async with open_dispatcher(
            bus, TEAM, membership=rt.membership, config=config
        ) as dispatcher:
            await dispatcher.wait_for_agents(1)
            answers: list[Answer] = []

            async def one(i: int) -> None:
                answers.append(await dispatcher.submit(f"q{i}", max_tokens=64, timeout=60))

            async with anyio.create_task_group() as tg:
                for i in range(12):
                    tg.start_soon(one, i)
                await wait_until(lambda: dispatcher.agents()[0].in_flight == 12)
                await rt.spawn(Worker(FAST), actor_id="fast")
            stats = dispatcher.statistics()
    # nothing was placed on fast when it arrived: it took work that waited for slow
    assert stats.rebalanced >= 1 and Counter(a.agent for a in answers)["fast"] >= 1
    assert stats.answered_total == 12 and stats.failed == 0


async def test_no_agents_and_bad_inputs_give_clear_errors(bus: Bus) -> None:
    config = DispatcherConfig(agent_timeout_s=0.3)
    async with open_dispatcher(bus, TEAM, membership=LocalMembership(), config=config) as d:
        with pytest.raises(AgentError, match=r"0 of 1 agents of team 'dt' available after 0.3s"):
            await d.submit("anyone?")
        with pytest.raises(ConfigError, match="the prompt is empty"):
            await d.submit("   ")
        with pytest.raises(ConfigError, match="max_tokens must be >= 1"):
            await d.submit("q", max_tokens=0)
        with pytest.raises(ConfigError, match="invalid task id"):
            await d.submit(Prompt(task_id="a.b", prompt="q"))
    with pytest.raises(ConfigError, match="window must be"):
        DispatcherConfig(window=0)
