"""Tokens per second of streamed tasks over the same tasks not streamed, through one agent.

Same agent (in this process, real llama.cpp backend, SmolLM2-135M-Instruct Q4_1), same
prompt per trial on both sides, greedy decoding, the same threads and max tokens. Streamed: a
client sends the task with ``stream=True`` and consumes every chunk (``TeamClient.stream``)
until the result; not streamed: ``TeamClient.submit``. The rate is output tokens over the
client's wall-clock, so the chunks' publishing, the bus and the client's reading all count.
Trials alternate which side goes first; medians. Target: streamed >= 0.97 of not streamed.

Caveat: on a machine whose cores are shared with other work, single trials vary by several
per cent either way; the full run's medians are the figure. Beside it, two readings that
load moves less: ``paired_ratio_median``, the median over trials of streamed over not
streamed for the same prompt back to back, and ``loop_cpu_ms_per_task``, the CPU time of the
event loop's thread (agent and client both run on it) per task on each side. What streaming
adds there is its whole cost apart from the bus server: for it, the decoding thread only
reads a clock per token and detokenizes once per interval.

Run: .venv/bin/python benchmarks/stream_overhead.py [--quick] [--threads N] [--max-tokens N]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from collections.abc import Awaitable
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, figure, quiet_logs
from llm_overhead import prompts, task_rate
from lmteams.agents import TeamClient, WorkerAgent, WorkerConfig, open_runtime
from lmteams.bus import Subjects, ensure_team_streams, open_bus
from lmteams.hardware import BackendConfig, resolve_model


async def streamed_rate(client: TeamClient, prompt: str, max_tokens: int) -> tuple[float, int]:
    """Output tokens/s of one streamed task, and the chunks the client read."""
    start = time.perf_counter()
    async with client.stream(prompt, max_tokens=max_tokens, timeout=300) as answer:
        chunks = [chunk async for chunk in answer]
    seconds = time.perf_counter() - start
    result = answer.result
    assert result is not None and result.ok, result
    assert "".join(c.text for c in chunks) == result.answer
    return result.tokens_out / seconds, len(chunks)


async def loop_cpu_ms(work: Awaitable[object]) -> float:
    """CPU time of this thread, the event loop's, while ``work`` runs (the decode thread's
    is not counted)."""
    start = time.thread_time()
    await work
    return (time.thread_time() - start) * 1000


async def main(quick: bool, threads: int, max_tokens: int, trials: int) -> None:
    quiet_logs()
    path = str(resolve_model("smollm2-135m").path)
    backend = BackendConfig(kind="cpu", model=path, n_threads=threads, n_ctx=2048)
    trials = 3 if quick else trials
    async with open_bus(name="bench") as bus, open_runtime(bus, "stream") as runtime:
        await ensure_team_streams(bus, Subjects("stream"))
        await runtime.spawn(lambda: WorkerAgent(WorkerConfig(backend=backend)), actor_id="agent")
        client = TeamClient(bus, "stream")
        warm = "Write a short story about a warm-up."
        await task_rate(client, warm, max_tokens)
        await streamed_rate(client, warm, max_tokens)
        plain: list[float] = []
        streamed: list[float] = []
        chunks: list[int] = []
        cpu: dict[str, list[float]] = {"streamed": [], "plain": []}

        async def one_streamed(prompt: str) -> None:
            rate, count = await streamed_rate(client, prompt, max_tokens)
            streamed.append(rate)
            chunks.append(count)

        async def one_plain(prompt: str) -> None:
            plain.append(await task_rate(client, prompt, max_tokens))

        for i, prompt in zip(range(trials), itertools.cycle(prompts()), strict=False):
            sides = [one_plain, one_streamed] if i % 2 else [one_streamed, one_plain]
            for side in sides:
                key = "streamed" if side is one_streamed else "plain"
                cpu[key].append(await loop_cpu_ms(side(prompt)))
    ours, theirs = statistics.median(streamed), statistics.median(plain)
    common = {"unit": "tokens/s", "threads": threads, "max_tokens": max_tokens, "trials": trials}
    paired = statistics.median(s / p for s, p in zip(streamed, plain, strict=True))
    loop_ms = {side: round(statistics.median(ms), 1) for side, ms in cpu.items()}
    figures = [
        figure("stream_tokens_per_s_streamed_vs_not", ours, theirs, 0.97,
               baseline_kind="the same tasks through the same agent, not streamed",
               chunks_per_task_median=statistics.median(chunks),
               paired_ratio_median=round(paired, 4), loop_cpu_ms_per_task=loop_ms, **common),
    ]  # fmt: skip
    emit(figures, benchmark="stream_overhead", model="smollm2-135m (SmolLM2-135M-Instruct Q4_1)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer trials")
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument(
        "--trials", type=int, default=25,
        help="pairs of tasks (a single pair moves by several per cent on a quiet machine)",
    )  # fmt: skip
    args = parser.parse_args()
    anyio.run(main, args.quick, args.threads, args.max_tokens, args.trials)
