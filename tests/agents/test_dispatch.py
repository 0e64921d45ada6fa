"""The dispatcher on a real nats-server with simulated workers: placement, hedging, churn.

Speeds are compared through the modelled seconds agents report (not the wall clock), and
hedging through which agent answered and what the loser's backend counted.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import AsyncIterator

import anyio
import pytest

from lmteams.agents import (
    Answer,
    DispatcherConfig,
    Prompt,
    WorkerAgent,
    WorkerConfig,
    open_dispatcher,
    open_runtime,
)
from lmteams.bus import Bus
from lmteams.errors import AgentError, ConfigError
from lmteams.hardware import (
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


def busy_s(answers: list[Answer]) -> dict[str, float]:
    """Modelled seconds each agent spent: the largest is the run's modelled makespan."""
    busy: Counter[str] = Counter()
    for a in answers:
        busy[a.agent] += a.prompt_s + a.generation_s
    return dict(busy)


async def run_batch(bus: Bus, placement: Placement, tasks: int) -> list[Answer]:
    answers: list[Answer] = []
    async with open_dispatcher(bus, TEAM, placement) as dispatcher:
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
        aware = await run_batch(bus, LeastExpectedCompletion(), 36)
        blind = await run_batch(bus, RoundRobin(), 36)
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
        async with open_dispatcher(bus, TEAM, hedge=hedge) as dispatcher:
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
        assert isinstance(straggler.backend, SimulatedBackend)
        backend = straggler.backend
        await wait_until(lambda: backend.statistics().cancelled == 1, timeout=5)
        assert backend.statistics().completed == 0 and straggler.cancelled == 1


async def test_dispatcher_forgets_agents_that_leave(bus: Bus) -> None:
    async with open_runtime(bus, TEAM) as rt, open_dispatcher(bus, TEAM) as dispatcher:
        await rt.spawn(Worker(FAST), actor_id="a")
        await rt.spawn(Worker(SLOW), actor_id="b")
        await dispatcher.wait_for_agents(2)
        assert {load.agent: load.tokens_per_s for load in dispatcher.agents()} == {
            "a": 2000.0 / SCALE,
            "b": 250.0 / SCALE,
        }
        await rt.stop("a")
        await wait_until(lambda: [load.agent for load in dispatcher.agents()] == ["b"])
        answers = [await dispatcher.submit(f"q{i}", max_tokens=8, timeout=10) for i in range(3)]
    assert {a.agent for a in answers} == {"b"}


async def test_agents_that_joined_earlier_are_learned_from_heartbeats(bus: Bus) -> None:
    async with open_runtime(bus, TEAM) as rt:
        await rt.spawn(Worker(SLOW), actor_id="early")
        async with open_dispatcher(bus, TEAM) as dispatcher:
            await dispatcher.wait_for_agents(1, timeout=5)
            await wait_until(lambda: dispatcher.agents()[0].tokens_per_s == 250.0 / SCALE)
            assert (await dispatcher.submit("hello", max_tokens=8, timeout=10)).agent == "early"


async def test_no_agents_and_bad_inputs_give_clear_errors(bus: Bus) -> None:
    config = DispatcherConfig(agent_timeout_s=0.3)
    async with open_dispatcher(bus, TEAM, config=config) as dispatcher:
        with pytest.raises(AgentError, match=r"0 of 1 agents of team 'dt' known after 0.3s"):
            await dispatcher.submit("anyone?")
        with pytest.raises(ConfigError, match="the prompt is empty"):
            await dispatcher.submit("   ")
        with pytest.raises(ConfigError, match="max_tokens must be >= 1"):
            await dispatcher.submit("q", max_tokens=0)
        with pytest.raises(ConfigError, match="invalid task id"):
            await dispatcher.submit(Prompt(task_id="a.b", prompt="q"))
    with pytest.raises(ConfigError, match="window must be"):
        DispatcherConfig(window=0)
