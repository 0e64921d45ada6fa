"""Aggregate tokens/s of N agents on one shared, batched model over N independent agents.

Same model file (SmolLM2-135M-Instruct Q4_1), prompts, max tokens, per-agent context and
greedy decoding on both sides, measured in the same run for N = 1, 2, 4, 8:
- shared: one process, N ``open_backend(BackendConfig(share=True))`` views on one
  ``SharedModelHost`` using all physical cores; agent i asks prompt i, all at once.
- independent: N processes, each its own ``LlamaBackend`` with physical cores / N threads
  (at least 1), agent i asks prompt i. Separate processes, so neither side shares a GIL or
  an allocator with the other's agents.
Every process loads and warms up, then all are told to start at once; the aggregate rate is
all generated tokens over the parent's wall-clock from that start to the last answer.
Trials alternate the two sides; medians. Per-agent latency (request to answer) is reported
beside each ratio, and the greedy answers of the two sides are compared (they must match).

- ``throughput_ratio`` (target >= 1.3 at N = 8): shared aggregate tokens/s over independent.
- ``cpu_ratio_nN`` (informational): generated tokens per CPU-second (user + system, all the
  side's processes, from go to answer), shared over independent. On a machine other work
  also loads, wall-clock rates measure the scheduler's shares as much as the decoders: eight
  processes get eight shares, one process's two decode threads two, and llama.cpp's threads
  meet at a barrier after every op, so a descheduled one stalls its peer. CPU-seconds are
  what the work cost whoever else runs; ``load_1min`` is the machine's load at the end.
- ``memory_ratio`` (target <= 0.4 at N = 4, lower is better): resident memory (VmRSS) of the
  shared process over the sum of the independent ones. RSS counts the mmap'd weights once
  per process, as ``ps`` and a container's limit see it; ``memory_ratio_pss`` (informational)
  splits pages shared through the page cache among the processes that map them.

Run: .venv/bin/python benchmarks/shared_model.py [--quick] [--max-tokens N] [--agents 1,2,4,8]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, figure, quiet_logs
from lmteams.hardware import BackendConfig, GenerateRequest, open_backend, resolve_model
from lmteams.hardware._detect import physical_cores

TOPICS = (
    "a robot who learns to paint", "a lighthouse keeper", "a fox in the city",
    "a lost umbrella", "the last train home", "a garden on Mars", "a clock that runs late",
    "a dragon who fears fire",
)  # fmt: skip
N_CTX = 512
READY_TIMEOUT_S = 300.0
RUN_TIMEOUT_S = 600.0


def request(index: int, max_tokens: int) -> GenerateRequest:
    topic = TOPICS[index % len(TOPICS)]
    return GenerateRequest(prompt=f"Write a short story about {topic}.", max_tokens=max_tokens)


def memory_kib() -> dict[str, int]:
    """This process's resident (VmRSS) and proportional (Pss) memory, in KiB."""
    found: dict[str, int] = {}
    for path, key, name in (
        ("/proc/self/status", "VmRSS:", "rss"),
        ("/proc/self/smaps_rollup", "Pss:", "pss"),
    ):
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                found[name] = int(line.split()[1])
    return found


async def child(mode: str, first: int, agents: int, threads: int, max_tokens: int) -> None:
    """One side's process: load, warm up, say ready, wait for go, answer, report."""
    quiet_logs()
    path = str(resolve_model("smollm2-135m").path)
    config = BackendConfig(
        kind="cpu", model=path, n_threads=threads, n_ctx=N_CTX,
        share=mode == "shared", share_slots=agents,
    )  # fmt: skip
    async with contextlib.AsyncExitStack() as stack:
        backends = [await stack.enter_async_context(open_backend(config)) for _ in range(agents)]
        await backends[0].generate(GenerateRequest(prompt="Warm up.", max_tokens=4))
        print("ready", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)
        cpu_started = time.process_time()
        results: dict[int, dict[str, Any]] = {}

        async def ask(i: int) -> None:
            started = time.perf_counter()
            answer = await backends[i].generate(request(first + i, max_tokens))
            results[first + i] = {
                "tokens": answer.tokens_out,
                "latency_s": time.perf_counter() - started,
                "text": answer.text,
            }

        async with anyio.create_task_group() as tg:
            for i in range(agents):
                tg.start_soon(ask, i)
        cpu_s = time.process_time() - cpu_started
        print(json.dumps({"results": results, "cpu_s": cpu_s, **memory_kib()}), flush=True)


async def side(mode: str, agents: int, max_tokens: int) -> dict[str, Any]:
    """Start one side's processes, start them together, collect rates, latency, memory."""
    cores = physical_cores()
    if mode == "shared":
        specs = [(0, agents, cores)]
    else:
        specs = [(i, 1, max(1, cores // agents)) for i in range(agents)]
    processes: list[anyio.abc.Process] = []
    try:
        for first, count, threads in specs:
            command = [sys.executable, __file__, "--child", mode, "--first", str(first),
                       "--agents", str(count), "--threads", str(threads),
                       "--max-tokens", str(max_tokens)]  # fmt: skip
            processes.append(await anyio.open_process(command))
        streams = [_lines(p) for p in processes]
        with anyio.fail_after(READY_TIMEOUT_S):
            for lines in streams:
                assert await anext(lines) == "ready"
        started = time.perf_counter()
        for p in processes:
            assert p.stdin is not None
            await p.stdin.send(b"go\n")
        with anyio.fail_after(RUN_TIMEOUT_S):
            reports = [json.loads(await anext(lines)) for lines in streams]
        wall = time.perf_counter() - started
        for p in processes:
            await p.wait()
    finally:
        for p in processes:
            if p.returncode is None:
                p.kill()
    results = {int(k): v for r in reports for k, v in r["results"].items()}
    tokens = sum(r["tokens"] for r in results.values())
    return {
        "rate": tokens / wall,
        "cpu_rate": tokens / sum(r["cpu_s"] for r in reports),
        "tokens": tokens,
        "latency_s": statistics.median(r["latency_s"] for r in results.values()),
        "texts": [results[i]["text"] for i in sorted(results)],
        "rss_kib": sum(r["rss"] for r in reports),
        "pss_kib": sum(r["pss"] for r in reports),
    }


async def _lines(process: anyio.abc.Process) -> Any:
    assert process.stdout is not None
    buffer = b""
    async for chunk in process.stdout:
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            yield line.decode()


async def main(quick: bool, max_tokens: int, agent_counts: list[int]) -> None:
    quiet_logs()
    trials = 1 if quick else 3
    figures: list[dict[str, Any]] = []
    memory: dict[int, tuple[dict[str, Any], dict[str, Any]]] = {}
    for n in agent_counts:
        shared: list[dict[str, Any]] = []
        alone: list[dict[str, Any]] = []
        for trial in range(trials):
            order = [("shared", shared), ("independent", alone)]
            for mode, sink in order if trial % 2 == 0 else order[::-1]:
                sink.append(await side(mode, n, max_tokens))
        rate_shared = statistics.median(r["rate"] for r in shared)
        rate_alone = statistics.median(r["rate"] for r in alone)
        memory[n] = (shared[-1], alone[-1])
        figures.append(
            figure(
                "throughput_ratio" if n == max(agent_counts) else f"throughput_ratio_n{n}",
                rate_shared, rate_alone, 1.3 if n == max(agent_counts) else None,
                unit="tokens/s (all agents)", agents=n, trials=trials,
                threads_shared=physical_cores(),
                threads_each_independent=max(1, physical_cores() // n),
                latency_s_shared=round(statistics.median(r["latency_s"] for r in shared), 3),
                latency_s_independent=round(statistics.median(r["latency_s"] for r in alone), 3),
                tokens=shared[-1]["tokens"],
                answers_equal=all(
                    s["texts"] == a["texts"] for s, a in zip(shared, alone, strict=True)
                ),
            )
        )  # fmt: skip
        figures.append(
            figure(
                f"cpu_ratio_n{n}",
                statistics.median(r["cpu_rate"] for r in shared),
                statistics.median(r["cpu_rate"] for r in alone),
                None, unit="tokens per CPU-second (all agents)", agents=n, trials=trials,
                load_1min=os.getloadavg()[0],
            )
        )  # fmt: skip
    n_mem = 4 if 4 in memory else max(memory)
    shared_side, alone_side = memory[n_mem]
    rss = figure(
        "memory_ratio", shared_side["rss_kib"], alone_side["rss_kib"], 0.4,
        unit="KiB resident (VmRSS), whole team", agents=n_mem, better="lower",
    )  # fmt: skip
    rss["met"] = rss["ratio"] <= 0.4  # lower is better: figure() compares ratio >= target
    pss = figure(
        "memory_ratio_pss", shared_side["pss_kib"], alone_side["pss_kib"], None,
        unit="KiB proportional (Pss), whole team", agents=n_mem, better="lower",
    )  # fmt: skip
    figures += [rss, pss]
    emit(
        figures,
        benchmark="shared_model",
        model="smollm2-135m (SmolLM2-135M-Instruct Q4_1)",
        max_tokens=max_tokens,
        n_ctx_per_agent=N_CTX,
        physical_cores=physical_cores(),
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one trial, fewer tokens")
    parser.add_argument("--max-tokens", type=int, default=None)
    parser.add_argument("--agents", default="1,2,4,8", help="team sizes, comma-separated")
    parser.add_argument("--child", choices=("shared", "independent"), help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    tokens = args.max_tokens or (24 if args.quick else 64)
    if args.child:
        anyio.run(child, args.child, args.first, int(args.agents), args.threads, tokens)
    else:
        counts = [int(n) for n in args.agents.split(",")]
        anyio.run(main, args.quick, tokens, counts)
