"""Tokens per second of a task answered through an agent, against bare llama-cpp-python.

Same model file (SmolLM2-135M-Instruct Q4_1), prompt, threads, context size and max tokens,
greedy decoding. Bare: ``Llama.create_chat_completion`` called directly. Through lmteams: a
client submits a task to an embedded nats-server's JetStream queue, a worker agent (in this
process, real llama.cpp backend) answers it, the result comes back over the bus; the rate is
output tokens over the client's wall-clock, so queueing, the bus and JetStream acks all count.
Trials alternate between the two; medians. Target: lmteams >= 0.95 of bare.

Each trial uses a new prompt, the same on every side. The agent's backend starts each request
from an empty KV cache (so the same greedy request always gives the same answer), while bare
llama-cpp-python re-uses the cached prefix it shares with the previous prompt (SmolLM2's chat
template adds the same system prompt to all). Two figures therefore:
- ``llm_tokens_per_s_through_agent`` (target >= 0.95): bare resets its cache before each call,
  so both sides do the same work and the ratio is what lmteams adds.
- ``..._vs_prefix_cached_bare`` (informational): bare keeps its prefix cache; the ratio is
  lmteams' overhead plus the price of reproducible answers.

Run: .venv/bin/python benchmarks/llm_overhead.py [--quick] [--threads N] [--max-tokens N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, figure, quiet_logs
from lmteams.agents import TeamClient, WorkerAgent, WorkerConfig, open_runtime
from lmteams.bus import Subjects, ensure_team_streams, open_bus
from lmteams.hardware import BackendConfig, resolve_model

TOPICS = (
    "a robot who learns to paint", "a lighthouse keeper", "a fox in the city",
    "a lost umbrella", "the last train home", "a garden on Mars", "a clock that runs late",
    "a dragon who fears fire", "a library at night", "two rival bakers", "a silent bell",
    "a map with no roads",
)  # fmt: skip


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
        bare = Llama(
            model_path=path, n_threads=threads, n_threads_batch=threads, n_ctx=2048, verbose=False
        )
    bare_prompts = iter(prompts() * 2)  # two bare variants draw from it
    agent_prompts = iter(prompts())

    async def bare_rate(*, reset: bool) -> float:
        messages = [{"role": "user", "content": next(bare_prompts)}]

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
        await runtime.spawn(lambda: WorkerAgent(WorkerConfig(backend=backend)), actor_id="agent")
        client = TeamClient(bus, "llm")

        async def agent_rate() -> float:
            start = time.perf_counter()
            prompt = next(agent_prompts)
            result = await client.submit(prompt, max_tokens=max_tokens, timeout=300)
            seconds = time.perf_counter() - start
            assert result.ok, result.error
            return result.tokens_out / seconds

        await bare_rate(reset=True)  # warm up: page cache, first-call allocations
        await bare_rate(reset=False)
        await agent_rate()
        ours: list[float] = []
        same_work: list[float] = []
        cached: list[float] = []
        for i in range(trials):  # rotate the order so drift hits every side alike
            runs = [
                (ours, agent_rate),
                (same_work, lambda: bare_rate(reset=True)),
                (cached, lambda: bare_rate(reset=False)),
            ]
            for sink, run in runs[i % 3 :] + runs[: i % 3]:
                sink.append(await run())
    agent, bare_same, bare_cached = (statistics.median(x) for x in (ours, same_work, cached))
    common = {"unit": "tokens/s", "threads": threads, "max_tokens": max_tokens, "trials": trials}
    figures = [
        figure("llm_tokens_per_s_through_agent", agent, bare_same, 0.95,
               baseline_kind="bare, cache reset per call", **common),
        figure("llm_tokens_per_s_through_agent_vs_prefix_cached_bare", agent, bare_cached,
               None, baseline_kind="bare, prefix cache kept", **common),
    ]  # fmt: skip
    emit(
        figures,
        benchmark="llm_overhead",
        model="smollm2-135m (SmolLM2-135M-Instruct Q4_1)",
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer trials")
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads (both sides)")
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()
    anyio.run(main, args.quick, args.threads, args.max_tokens)
