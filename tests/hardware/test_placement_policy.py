"""Placement and hedging as pure policy: no bus, no clock, just loads in and a choice out."""

from __future__ import annotations

from collections import Counter

import pytest

from lmteams.errors import ConfigError
from lmteams.hardware import (
    AgentLoad,
    BackendConfig,
    HedgePolicy,
    LeastExpectedCompletion,
    Placement,
    RandomPlacement,
    RoundRobin,
    SimulatedBackend,
    advertised_rates,
    expected_finish,
)

RATES = {"fast": 400.0, "mid": 200.0, "slow": 100.0}


def drive(policy: Placement, tasks: int, task_tokens: float = 50.0) -> Counter[str]:
    """Place ``tasks`` at once (queues only grow), as a dispatcher does with a burst."""
    queued = dict.fromkeys(RATES, 0.0)
    chosen: Counter[str] = Counter()
    for _ in range(tasks):
        loads = [
            AgentLoad(agent=a, tokens_per_s=r, queued_tokens=queued[a]) for a, r in RATES.items()
        ]
        agent = policy.choose(loads, task_tokens)
        queued[agent] += task_tokens
        chosen[agent] += 1
    return chosen


def test_faster_agents_get_proportionally_more() -> None:
    counts = drive(LeastExpectedCompletion(), 700)
    # capacities 4:2:1 of 700 tasks -> 400, 200, 100, within one task of rounding
    assert abs(counts["fast"] - 400) <= 1
    assert abs(counts["mid"] - 200) <= 1
    assert abs(counts["slow"] - 100) <= 1


def test_baselines_ignore_speed() -> None:
    assert drive(RoundRobin(), 300) == Counter(fast=100, mid=100, slow=100)
    spread = drive(RandomPlacement(seed=3), 3000)
    assert all(900 < spread[a] < 1100 for a in RATES)


def test_queue_awareness_sends_work_to_the_idle_agent() -> None:
    busy_fast = AgentLoad(agent="fast", tokens_per_s=400, queued_tokens=4000)  # 10 s of work
    idle_slow = AgentLoad(agent="slow", tokens_per_s=100)  # 0.5 s for the task
    assert LeastExpectedCompletion().choose([busy_fast, idle_slow], 50) == "slow"
    lightly_busy_fast = AgentLoad(agent="fast", tokens_per_s=400, queued_tokens=100)
    assert LeastExpectedCompletion().choose([lightly_busy_fast, idle_slow], 50) == "fast"


def test_prompt_tokens_count_at_the_prompt_rate() -> None:
    quick_decoder = AgentLoad(agent="a", tokens_per_s=200, prompt_tokens_per_s=100)
    quick_reader = AgentLoad(agent="b", tokens_per_s=150, prompt_tokens_per_s=10_000)
    # a long prompt favours the agent that reads fast though it decodes slower
    assert LeastExpectedCompletion().choose([quick_decoder, quick_reader], 10, 1000) == "b"
    assert LeastExpectedCompletion().choose([quick_decoder, quick_reader], 100, 1) == "a"


def test_choices_are_deterministic() -> None:
    twins = [AgentLoad(agent=n, tokens_per_s=100) for n in ("b", "c", "a")]
    assert {LeastExpectedCompletion().choose(twins, 10) for _ in range(5)} == {"a"}
    assert drive(RandomPlacement(seed=7), 200) == drive(RandomPlacement(seed=7), 200)
    rr = RoundRobin()
    assert [rr.choose(twins, 10) for _ in range(4)] == ["a", "b", "c", "a"]


def test_unknown_rates_are_assumed_median() -> None:
    known = [AgentLoad(agent=f"k{i}", tokens_per_s=r) for i, r in enumerate((100, 200, 300))]
    unknown = AgentLoad(agent="u")
    assert expected_finish(unknown, 200, default_rates=(200.0, 0.0)) == pytest.approx(1.0)
    # an unknown agent is used (not starved) once the known ones are busier than the median
    busy = [
        AgentLoad(agent=k.agent, tokens_per_s=k.tokens_per_s, queued_tokens=1000) for k in known
    ]
    assert LeastExpectedCompletion().choose([*busy, unknown], 10) == "u"


def test_bad_inputs_are_refused_clearly() -> None:
    with pytest.raises(ConfigError, match="no agents to place"):
        LeastExpectedCompletion().choose([], 10)
    with pytest.raises(ConfigError, match="task_tokens"):
        RoundRobin().choose([AgentLoad(agent="a")], -1)
    with pytest.raises(ConfigError, match="factor"):
        HedgePolicy(factor=0.5)
    with pytest.raises(ConfigError, match="quantile"):
        HedgePolicy(quantile=1.0)


def test_hedge_delay_uses_the_larger_of_factor_and_observed_slowness() -> None:
    policy = HedgePolicy(factor=2.0, quantile=0.9, min_samples=10)
    assert policy.delay(1.5) == pytest.approx(3.0)  # too few samples: factor alone
    steady = [1.0] * 20
    assert policy.delay(1.5, steady) == pytest.approx(3.0)
    slow_tail = [1.0] * 10 + [4.0] * 10  # the 0.9 quantile is 4x expected
    assert policy.delay(1.5, slow_tail) == pytest.approx(6.0)
    assert HedgePolicy(min_delay_s=5.0).delay(0.1) == pytest.approx(5.0)


def test_simulated_agents_advertise_their_class_over_time_scale() -> None:
    backend = SimulatedBackend("rtx-4090-cuda", time_scale=0.5)
    gen, prompt = advertised_rates(backend, BackendConfig(kind="sim"))
    assert gen == pytest.approx(1070.0 / 0.5)
    assert prompt == pytest.approx(180_000.0 / 0.5)
