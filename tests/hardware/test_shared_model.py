"""One model shared by several agents, batched, on the real default model (SmolLM2-135M)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

import anyio
import msgspec
import pytest

from lmteams.errors import BackendError
from lmteams.hardware import (
    Backend,
    BackendConfig,
    GenerateRequest,
    LlamaBackend,
    ModelFile,
    SharedBackend,
    open_backend,
    shared_hosts,
)

pytestmark = pytest.mark.slow

COUNTING = GenerateRequest(prompt="1, 2, 3, 4, 5, 6, 7, 8,", chat=False, max_tokens=400)
SYSTEM = "You are a terse assistant on a team of agents. Answer in one sentence."


def shared_config(model: ModelFile) -> BackendConfig:
    return BackendConfig(kind="cpu", model=model.name, share=True, share_slots=3, n_ctx=512)


@contextlib.asynccontextmanager
async def views(config: BackendConfig, n: int) -> AsyncIterator[list[SharedBackend]]:
    async with contextlib.AsyncExitStack() as stack:
        opened = [await stack.enter_async_context(open_backend(config)) for _ in range(n)]
        assert all(isinstance(v, SharedBackend) for v in opened)
        yield [v for v in opened if isinstance(v, SharedBackend)]


async def until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    try:
        with anyio.fail_after(timeout):
            while not condition():
                await anyio.sleep(0.01)
    except TimeoutError:
        pytest.fail(f"timed out waiting until {what}")


async def test_greedy_shared_answers_equal_unshared_ones(
    cpu_backend: LlamaBackend, default_model: ModelFile
) -> None:
    requests = [
        GenerateRequest(prompt="What is the capital of France?", max_tokens=24),
        GenerateRequest(prompt="Name three colours.", system=SYSTEM, max_tokens=24),
        GenerateRequest(prompt="Once upon a time", chat=False, max_tokens=16),
    ]
    # eight in one batch: these once diverged on "a clock" when prompts were cut by batch
    requests += [
        GenerateRequest(prompt=f"Write a short story about {topic}.", max_tokens=12)
        for topic in ("a clock that runs late", "a lighthouse keeper", "a lost umbrella",
                      "a garden on Mars", "a robot who learns to paint")
    ]  # fmt: skip
    alone = [await cpu_backend.generate(r) for r in requests]
    shared: dict[int, str] = {}
    config = msgspec.structs.replace(shared_config(default_model), share_slots=len(requests))
    async with views(config, len(requests)) as agents:

        async def ask(i: int) -> None:
            shared[i] = (await agents[i].generate(requests[i])).text

        async with anyio.create_task_group() as tg:  # decoded together, in the same batches
            for i in range(len(requests)):
                tg.start_soon(ask, i)
        assert agents[0].statistics().steps < sum(a.tokens_out for a in alone)
        assert agents[0].statistics().tokens_reused > 0  # stories copied a system part's KV
    assert [shared[i] for i in range(len(requests))] == [a.text for a in alone]


async def test_a_cancelled_request_frees_its_slot_and_the_others_finish(
    default_model: ModelFile,
) -> None:
    async with views(shared_config(default_model), 3) as agents:
        host = agents[0].host
        done: list[tuple[str, int]] = []
        long_scope = anyio.CancelScope()

        async def long() -> None:
            with long_scope:
                await agents[0].generate(COUNTING)
                done.append(("long", 0))

        async def short(agent: Backend) -> None:
            answer = await agent.generate(GenerateRequest(prompt="Say hello.", max_tokens=16))
            done.append((answer.finish_reason, answer.tokens_out))

        async with anyio.create_task_group() as tg:
            tg.start_soon(long)
            await until(lambda: host.statistics().running == 1, "the long request runs")
            tg.start_soon(short, agents[1])
            tg.start_soon(short, agents[2])
            await until(lambda: host.statistics().running == 3, "all three run")
            long_scope.cancel()
        assert long_scope.cancelled_caught
        assert len(done) == 2 and all(reason in ("stop", "length") for reason, _ in done)
        stats = host.statistics()
        assert (stats.cancelled, stats.completed, stats.running) == (1, 2, 0)
        again = await agents[0].generate(
            GenerateRequest(prompt="1, 2, 3,", chat=False, max_tokens=5)
        )
        assert again.tokens_out == 5


async def test_more_requests_than_slots_all_complete_alike(default_model: ModelFile) -> None:
    config = shared_config(default_model)
    request = GenerateRequest(prompt="Write about a fox.", max_tokens=12)
    async with views(config, 1) as (agent,):
        answers: list[str] = []

        async def ask() -> None:
            answers.append((await agent.generate(request)).text)

        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(ask)
        stats = agent.statistics()
    assert stats.slots == 1  # one view: one slot, so four of the five waited their turn
    assert stats.completed == 5 and len(answers) == 5
    assert len(set(answers)) == 1  # greedy: company and slot change nothing


async def test_a_shared_system_prompt_is_reused(default_model: ModelFile) -> None:
    async with views(shared_config(default_model), 1) as (agent,):
        await agent.generate(GenerateRequest(prompt="Name a fruit.", system=SYSTEM, max_tokens=4))
        before = agent.statistics().tokens_reused
        await agent.generate(GenerateRequest(prompt="Name a tree.", system=SYSTEM, max_tokens=4))
        assert agent.statistics().tokens_reused - before > 10  # the system part, not re-run


async def test_agents_starting_together_evaluate_their_shared_system_once(
    default_model: ModelFile,
) -> None:
    async with views(shared_config(default_model), 3) as agents:  # a cold host: empty slots
        answers: dict[int, str] = {}

        async def ask(i: int) -> None:
            request = GenerateRequest(prompt=f"Name {i + 2} fruits.", system=SYSTEM, max_tokens=4)
            answers[i] = (await agents[i].generate(request)).text

        async with anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(ask, i)
        stats = agents[0].statistics()
    assert stats.completed == 3 and len(answers) == 3
    assert stats.tokens_reused > 20  # two slots copied the first one's system part (> 10 each)


async def test_views_of_one_config_share_one_model_until_the_last_closes(
    default_model: ModelFile,
) -> None:
    config = shared_config(default_model)
    async with open_backend(config) as first:
        async with open_backend(config) as second:
            assert isinstance(first, SharedBackend) and isinstance(second, SharedBackend)
            assert first.host is second.host
            assert shared_hosts() == (first.host,)
            assert first.statistics().views == 2
            first_answer = await first.generate(GenerateRequest(prompt="Hi.", max_tokens=4))
            second_answer = await second.generate(GenerateRequest(prompt="Hi.", max_tokens=4))
            assert first_answer.timings.load_s > 0  # the opener that loaded reports the load
            assert second_answer.timings.load_s == 0.0
        assert not first.host.closed  # one view left
        assert (await first.generate(GenerateRequest(prompt="Hi.", max_tokens=4))).text
    assert first.host.closed and shared_hosts() == ()


async def test_a_prompt_too_long_fails_clearly_and_the_host_keeps_serving(
    default_model: ModelFile,
) -> None:
    config = BackendConfig(kind="cpu", model=default_model.name, share=True, n_ctx=64)
    async with views(config, 1) as (agent,):
        with pytest.raises(BackendError, match="context overflow"):
            await agent.generate(GenerateRequest(prompt="word " * 200, max_tokens=8))
        answer = await agent.generate(GenerateRequest(prompt="1, 2, 3,", chat=False, max_tokens=4))
        assert answer.tokens_out == 4
