"""The one backoff policy: its delays, its jitter, and the retry loop built on it."""

from __future__ import annotations

import random

import pytest

from lmteams.bus import Backoff, retrying
from lmteams.errors import BusError, ConfigError

NO_WAIT = Backoff(initial_s=0.0, max_s=0.0)


def test_ceilings_grow_by_the_factor_and_stop_at_the_cap() -> None:
    policy = Backoff(initial_s=0.1, max_s=1.0, factor=3.0)
    ceilings = [policy.ceiling(n) for n in range(5)]
    assert ceilings == pytest.approx([0.1, 0.3, 0.9, 1.0, 1.0])
    assert policy.ceiling(100_000) == 1.0  # a very long run of failures neither overflows


def test_without_jitter_the_delay_is_the_ceiling() -> None:
    policy = Backoff(initial_s=0.5, max_s=4.0, jitter=0.0)
    assert [policy.delay(n) for n in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]


def test_full_jitter_spreads_delays_between_zero_and_the_ceiling() -> None:
    policy = Backoff(initial_s=1.0, max_s=8.0)
    rng = random.Random(12)
    for attempt in range(6):
        delays = [policy.delay(attempt, rng) for _ in range(200)]
        ceiling = policy.ceiling(attempt)
        assert all(0 <= d <= ceiling for d in delays)
        # spread over the whole range, not bunched at one end (clients would meet again)
        assert min(delays) < 0.1 * ceiling and max(delays) > 0.9 * ceiling


def test_partial_jitter_keeps_a_floor() -> None:
    policy = Backoff(initial_s=2.0, max_s=2.0, jitter=0.25)
    rng = random.Random(3)
    assert all(1.5 <= policy.delay(0, rng) <= 2.0 for _ in range(200))


def test_the_same_seed_gives_the_same_delays() -> None:
    policy = Backoff()
    first = policy.counter(random.Random(7))
    second = policy.counter(random.Random(7))
    assert [first.next_delay() for _ in range(8)] == [second.next_delay() for _ in range(8)]


def test_a_counter_climbs_until_reset() -> None:
    counter = Backoff(initial_s=1.0, max_s=100.0, jitter=0.0).counter()
    assert [counter.next_delay() for _ in range(4)] == [1.0, 2.0, 4.0, 8.0]
    counter.reset()
    assert counter.next_delay() == 1.0


def test_times_from_a_config_are_clamped_not_refused() -> None:
    # a restart loop must not die of its settings: the cap wins, and nothing waits below 0
    assert Backoff(initial_s=10.0, max_s=5.0, jitter=0.0).delay(0) == 5.0
    assert Backoff(initial_s=-1.0, max_s=5.0, jitter=0.0).delay(3) == 0.0


@pytest.mark.parametrize("settings", [{"factor": 0.5}, {"jitter": 1.5}, {"jitter": -0.1}])
def test_a_shrinking_or_overjittered_policy_is_refused(settings: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        Backoff(**settings)


async def test_retrying_retries_the_listed_errors_until_the_call_succeeds() -> None:
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 4:
            raise TimeoutError
        return "done"

    result = await retrying("flaky", flaky, retry_on=(TimeoutError,), timeout=60, backoff=NO_WAIT)
    assert (result, calls) == ("done", 4)


async def test_retrying_passes_other_errors_through_at_once() -> None:
    calls = 0

    async def broken() -> None:
        nonlocal calls
        calls += 1
        raise ValueError("not transient")

    with pytest.raises(ValueError, match="not transient"):
        await retrying("broken", broken, retry_on=(TimeoutError,), timeout=60, backoff=NO_WAIT)
    assert calls == 1


async def test_retrying_gives_up_after_its_deadline_with_a_bus_error() -> None:
    calls = 0

    async def never() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError

    with pytest.raises(BusError, match=r"reading x did not succeed within 0.2s \(leader\?\)"):
        await retrying(
            "reading x",
            never,
            retry_on=(OSError,),  # a subclass of a listed error is retried too
            timeout=0.2,
            backoff=NO_WAIT,
            hint="leader?",
        )
    assert calls > 1
