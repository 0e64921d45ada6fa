"""Tokens per second of a task answered through an agent, against bare llama-cpp-python.

Same model file (SmolLM2-135M-Instruct Q4_1), prompt, threads, context size and max tokens,
greedy decoding. Bare: ``Llama.create_chat_completion`` called directly. Through lmteams: a
client submits a task to an embedded nats-server's JetStream queue, a worker agent (in this
process, real llama.cpp backend) answers it, the result comes back over the bus; the rate is
output tokens over the client's wall-clock, so queueing, the bus and JetStream acks all count.
Trials alternate between the two; medians. Target: lmteams >= 0.95 of bare.

Trial ``i`` gives prompt ``i`` to every side, in an order that rotates per trial so drift hits
all alike. The headline baseline is llama-cpp-python as a user runs it: one ``Llama`` kept
across calls, which reuses the KV cache of the longest prompt prefix it shares with the
previous call (SmolLM2's chat template puts the same system prompt in front of every
prompt). The agent's backend keeps the cache of that system part too (see
``lmteams.hardware._llama``: cut at a point fixed by the request, so answers stay
reproducible), so a team that shares system prompts does not re-evaluate them.
- ``llm_tokens_per_s_through_agent`` (target >= 0.95): against bare with its prefix cache.
- ``..._vs_bare_cache_reset`` (informational): bare resets its cache before every call.

``--openai``: the same through an OpenAI-compatible server instead (llama-cpp-python's own
``llama_cpp.server``, started here on loopback with the same model and threads). Bare: the
``openai`` SDK streaming each prompt from that server, as a user's client would. Through
lmteams: a task on the bus answered by a worker agent on the ``openai`` backend (which
streams too). Both count output tokens the same way (this server sends no streamed usage:
one content chunk is one token) over the client's wall-clock; trials interleaved, medians.
- ``llm_tokens_per_s_through_agent_openai`` (target >= 0.95): agent over the bare client.

Run: .venv/bin/python benchmarks/llm_overhead.py [--quick] [--threads N] [--max-tokens N]
     [--openai]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Awaitable
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, figure, quiet_logs
from lmteams.agents import TeamClient, WorkerAgent, WorkerConfig, open_runtime
from lmteams.bus import Subjects, ensure_team_streams, open_bus
from lmteams.hardware import BackendConfig, LlamaBackend, resolve_model
from lmteams.testing import llama_server

TOPICS = (
    "a robot who learns to paint", "a lighthouse keeper", "a fox in the city",
    "a lost umbrella", "the last train home", "a garden on Mars", "a clock that runs late",
    "a dragon who fears fire", "a library at night", "two rival bakers", "a silent bell",
    "a map with no roads",
)  # fmt: skip


def reused_tokens(agents: list[WorkerAgent]) -> int:
    """Prompt tokens the agent's backend took from its prefix cache (proof that it did)."""
    backends = [a.backend for a in agents if isinstance(a.backend, LlamaBackend)]
    return backends[-1].statistics().tokens_reused if backends else -1


async def task_rate(client: TeamClient, prompt: str, max_tokens: int) -> float:
    """Output tokens/s of one task through the team, over the client's wall-clock."""
    start = time.perf_counter()
    result = await client.submit(prompt, max_tokens=max_tokens, timeout=300)
    seconds = time.perf_counter() - start
    assert result.ok, result.error
    return result.tokens_out / seconds


def prompts() -> list[str]:
    return [f"Write a short story about {topic}." for topic in TOPICS]


async def main(quick: bool, threads: int, max_tokens: int) -> None:
    quiet_logs()
    from llama_cpp import Llama  # the baseline, used exactly as a user of llama-cpp-python would

    from lmteams.hardware._llama import _extra_buffers, _model_params

    path = str(resolve_model("smollm2-135m").path)
    # the same weight buffers the agent's backend chooses: on AMX CPUs llama.cpp's default
    # (extra buffers on) hangs on batched prompts, which would measure nothing
    with _model_params(extra_buffers=_extra_buffers(BackendConfig())):
        # one Llama per bare side, so the cached one always follows its own previous prompt
        bares = {
            reset: Llama(
                model_path=path,
                n_threads=threads,
                n_threads_batch=threads,
                n_ctx=2048,
                verbose=False,
            )
            for reset in (False, True)
        }

    async def bare_rate(prompt: str, *, reset: bool) -> float:
        messages = [{"role": "user", "content": prompt}]
        bare = bares[reset]

        def call() -> tuple[int, float]:
            start = time.perf_counter()
            if reset:
                bare.reset()
            out = bare.create_chat_completion(
                messages=messages, max_tokens=max_tokens, temperature=0.0
            )
            return out["usage"]["completion_tokens"], time.perf_counter() - start

        tokens, seconds = await anyio.to_thread.run_sync(call)
        return tokens / seconds

    backend = BackendConfig(kind="cpu", model=path, n_threads=threads, n_ctx=2048)
    trials = 3 if quick else 9  # one prompt per trial and per side, plus the warm-ups
    async with open_bus(name="bench") as bus, open_runtime(bus, "llm") as runtime:
        await ensure_team_streams(bus, Subjects("llm"))
        agents: list[WorkerAgent] = []

        def make_agent() -> WorkerAgent:
            agents.append(WorkerAgent(WorkerConfig(backend=backend)))
            return agents[-1]

        await runtime.spawn(make_agent, actor_id="agent")
        client = TeamClient(bus, "llm")

        def agent_rate(prompt: str) -> Awaitable[float]:
            return task_rate(client, prompt, max_tokens)

        warm = "Write a short story about a warm-up."  # page cache, first-call allocations
        await bare_rate(warm, reset=True)
        await bare_rate(warm, reset=False)
        await agent_rate(warm)
        ours: list[float] = []
        same_work: list[float] = []
        cached: list[float] = []
        for i, prompt in zip(range(trials), prompts() * 2, strict=False):
            runs = [
                (ours, lambda p=prompt: agent_rate(p)),
                (cached, lambda p=prompt: bare_rate(p, reset=False)),
                (same_work, lambda p=prompt: bare_rate(p, reset=True)),
            ]
            # rotate the order so drift hits every side alike
            for sink, run in runs[i % 3 :] + runs[: i % 3]:
                sink.append(await run())
        reused = reused_tokens(agents)
    agent, bare_same, bare_cached = (statistics.median(x) for x in (ours, same_work, cached))
    common = {"unit": "tokens/s", "threads": threads, "max_tokens": max_tokens, "trials": trials}
    figures = [
        figure("llm_tokens_per_s_through_agent", agent, bare_cached, 0.95,
               baseline_kind="bare, prefix cache kept (one Llama reused)",
               agent_prompt_tokens_reused=reused, **common),
        figure("llm_tokens_per_s_through_agent_vs_bare_cache_reset", agent, bare_same,
               None, baseline_kind="bare, cache reset per call", **common),
    ]  # fmt: skip
    emit(
        figures,
        benchmark="llm_overhead",
        model="smollm2-135m (SmolLM2-135M-Instruct Q4_1)",
    )


async def main_openai(quick: bool, threads: int, max_tokens: int) -> None:
    """The ``--openai`` mode: agent on the openai backend vs a bare SDK client, one server."""
    import importlib.metadata

    from openai import AsyncOpenAI  # the baseline: the official SDK, streaming

    quiet_logs()
    path = resolve_model("smollm2-135m").path
    trials = 3 if quick else 9
    with llama_server(path, threads=threads) as url:
        sdk = AsyncOpenAI(base_url=url, api_key="unused", max_retries=0)

        async def bare_rate(prompt: str) -> float:
            start = time.perf_counter()
            tokens = 0
            stream = await sdk.chat.completions.create(
                model="smollm2",
                messages=[{"role": "user", "content": prompt}],
                max_tokens=max_tokens,
                temperature=0.0,
                stream=True,
            )
            async with stream:
                async for chunk in stream:
                    tokens += bool(chunk.choices and chunk.choices[0].delta.content)
            return tokens / (time.perf_counter() - start)

        backend = BackendConfig(kind="openai", base_url=url, model="smollm2")
        async with open_bus(name="bench") as bus, open_runtime(bus, "llm") as runtime:
            await ensure_team_streams(bus, Subjects("llm"))
            await runtime.spawn(
                lambda: WorkerAgent(WorkerConfig(backend=backend)), actor_id="agent"
            )
            client = TeamClient(bus, "llm")

            def agent_rate(prompt: str) -> Awaitable[float]:
                return task_rate(client, prompt, max_tokens)

            warm = "Write a short story about a warm-up."
            await bare_rate(warm)
            await agent_rate(warm)
            ours: list[float] = []
            bare: list[float] = []
            for i, prompt in zip(range(trials), prompts() * 2, strict=False):
                runs = [(ours, agent_rate), (bare, bare_rate)]
                for sink, run in runs[i % 2 :] + runs[: i % 2]:  # alternate who goes first
                    sink.append(await run(prompt))
        await sdk.close()
    common = {"unit": "tokens/s", "threads": threads, "max_tokens": max_tokens, "trials": trials}
    figures = [
        figure("llm_tokens_per_s_through_agent_openai", statistics.median(ours),
               statistics.median(bare), 0.95,
               baseline_kind="bare openai SDK client streaming from the same server",
               server="llama_cpp.server via lmteams.hardware.llama_server, loopback",
               openai_sdk=importlib.metadata.version("openai"), **common),
    ]  # fmt: skip
    emit(figures, benchmark="llm_overhead", mode="openai",
         model="smollm2-135m (SmolLM2-135M-Instruct Q4_1)")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer trials")
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads (both sides)")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument(
        "--openai", action="store_true", help="through an OpenAI-compatible server instead"
    )
    args = parser.parse_args()
    anyio.run(main_openai if args.openai else main, args.quick, args.threads, args.max_tokens)
