"""The simulated backend: deterministic, calibrated to its device class, cheap at scale."""

from __future__ import annotations

import math

import anyio
import pytest

from lmteams.errors import BackendError, ConfigError
from lmteams.hardware import (
    DEVICE_CLASSES,
    Backend,
    BackendConfig,
    Completion,
    DeviceClass,
    GenerateRequest,
    SimulatedBackend,
    estimate_tokens,
    open_backend,
)

REQUEST = GenerateRequest(prompt="How many legs does a spider have? " * 4, max_tokens=96)


async def _run(backend: SimulatedBackend, calls: int) -> list[Completion | str]:
    out: list[Completion | str] = []
    for _ in range(calls):
        try:
            out.append(await backend.generate(REQUEST))
        except BackendError as exc:
            out.append(str(exc))
    return out


async def test_same_seed_same_run() -> None:
    cls = DEVICE_CLASSES["cpu-x86"]
    first = await _run(SimulatedBackend(cls, seed=7, time_scale=0), 50)
    second = await _run(SimulatedBackend(cls, seed=7, time_scale=0), 50)
    other = await _run(SimulatedBackend(cls, seed=8, time_scale=0), 50)
    assert first == second
    assert first != other


async def test_completion_shape() -> None:
    backend = SimulatedBackend("rpi5-cpu", seed=1, time_scale=0)
    assert isinstance(backend, Backend)
    done = await backend.generate(
        GenerateRequest(prompt="What is 2+2?", max_tokens=10, logprobs=True)
    )
    assert done.text == "sim answer to: What is 2+2?"
    assert done.device == "sim:rpi5-cpu"
    assert done.tokens_in == estimate_tokens("What is 2+2?")
    assert 5 <= done.tokens_out <= 10
    assert done.logprobs is not None
    assert len(done.logprobs) == done.tokens_out
    assert all(lp <= 0 for lp in done.logprobs)
    assert done.timings.load_s == DEVICE_CLASSES["rpi5-cpu"].load_s
    later = await backend.generate(GenerateRequest(prompt="What is 2+2?", max_tokens=10))
    assert later.timings.load_s == 0.0
    assert later.logprobs is None
    assert later.text == done.text  # text depends on the prompt only


@pytest.mark.parametrize("name", sorted(DEVICE_CLASSES))
async def test_mean_rates_match_the_class(name: str) -> None:
    cls = DEVICE_CLASSES[name]
    backend = SimulatedBackend(cls, seed=3, time_scale=0)
    done = [c for c in await _run(backend, 600) if isinstance(c, Completion)]
    slowdown = 1.0 + cls.straggler_prob * (cls.straggler_factor - 1.0)
    gen_rate = sum(c.tokens_out for c in done) / sum(c.timings.generation_s for c in done)
    prompt_rate = sum(c.tokens_in for c in done) / sum(c.timings.prompt_s for c in done)
    assert gen_rate == pytest.approx(cls.generation_tokens_per_s / slowdown, rel=0.10)
    assert prompt_rate == pytest.approx(cls.prompt_tokens_per_s / slowdown, rel=0.10)
    modelled = sum(c.timings.prompt_s + c.timings.generation_s for c in done)
    expected = sum(cls.expected_s(c.tokens_in, c.tokens_out) for c in done)
    assert modelled == pytest.approx(expected, rel=0.10)


def _within_binomial(hits: int, n: int, p: float) -> bool:
    return abs(hits - n * p) <= 4.5 * math.sqrt(n * p * (1 - p)) + 1


async def test_straggler_and_failure_probabilities() -> None:
    cls = DeviceClass(
        name="flaky",
        prompt_tokens_per_s=1000.0,
        generation_tokens_per_s=100.0,
        load_s=0.0,
        jitter=0.0,
        straggler_prob=0.2,
        straggler_factor=5.0,
        failure_prob=0.1,
    )
    backend = SimulatedBackend(cls, seed=11, time_scale=0)
    results = await _run(backend, 2000)
    stats = backend.statistics()
    failures = [r for r in results if isinstance(r, str)]
    assert stats.calls == 2000
    assert stats.failures == len(failures)
    assert all("simulated failure" in msg for msg in failures)
    assert _within_binomial(stats.failures, 2000, 0.1)
    assert _within_binomial(stats.stragglers, 2000, 0.2)
    # With jitter off, a straggler's generation is exactly straggler_factor times slower.
    done = [c for c in results if isinstance(c, Completion)]
    per_token = {round(c.timings.generation_s / c.tokens_out, 9) for c in done}
    assert per_token == {0.01, 0.05}


async def test_cancellation_releases_the_backend() -> None:
    backend = SimulatedBackend("rpi5-cpu", seed=0, time_scale=1.0)
    with anyio.move_on_after(0.05) as scope:
        await backend.generate(GenerateRequest(prompt="long", max_tokens=2000))
    assert scope.cancelled_caught
    assert backend.statistics().cancelled == 1
    fast = SimulatedBackend("rpi5-cpu", seed=0, time_scale=0)
    assert (await fast.generate(REQUEST)).tokens_out > 0


async def test_stop_strings_apply_to_the_placeholder() -> None:
    backend = SimulatedBackend("cpu-x86", time_scale=0)
    done = await backend.generate(GenerateRequest(prompt="alpha beta", stop=("beta",)))
    assert done.text == "sim answer to: alpha "
    assert done.finish_reason == "stop"


async def test_three_hundred_backends_in_one_process() -> None:
    classes = sorted(DEVICE_CLASSES)
    finished = 0
    failed = 0

    async def agent(i: int) -> None:
        nonlocal finished, failed
        config = BackendConfig(
            kind="sim", sim_device=classes[i % len(classes)], seed=i, time_scale=0.001
        )
        async with open_backend(config) as backend:
            for _ in range(3):
                try:
                    await backend.generate(REQUEST)
                    finished += 1
                except BackendError:
                    failed += 1

    async with anyio.create_task_group() as group:
        for i in range(300):
            group.start_soon(agent, i)
    assert finished + failed == 900
    assert finished > 850


async def test_bad_sim_config() -> None:
    with pytest.raises(ConfigError, match="rpi5-cpu"):
        SimulatedBackend("abacus")
    with pytest.raises(ConfigError):
        async with open_backend(BackendConfig(kind="quantum")):
            pass


async def test_closed_sim_backend_refuses_work() -> None:
    async with open_backend(BackendConfig(kind="sim", time_scale=0)) as backend:
        pass
    with pytest.raises(BackendError, match="closed"):
        await backend.generate(REQUEST)
