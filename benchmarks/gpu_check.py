"""The GPU run in one go: detect, profile, a mixed team placed by capacity, llm_overhead.

``benchmarks/gpu_check.sh`` builds llama-cpp-python with CUDA on a machine with no network
and then runs this; it runs as well on a CPU (``--device cpu``: three CPU agents), which is
how it is tested. Steps, each timed and judged pass/fail:

0. ``build`` (from ``--build-report``, written by gpu_check.sh): the CUDA build's figures.
1. ``detect``: ``lmteams hardware --json``; on ``cuda`` it passes only if the build offloads
   to a CUDA device.
2. ``profile``: ``lmteams hardware profile --refresh`` for every (backend, threads) the team
   uses, so each agent advertises a measured rate (``advertised_rates`` reads the cache).
3. ``team``: one CUDA agent and two CPU agents (``--device cpu``: three CPU agents) on an
   embedded nats-server, ``--tasks`` prompts through a dispatcher with capacity-aware
   placement (``LeastExpectedCompletion``); answers are counted per agent. On ``cuda`` it
   passes when every prompt is answered and the CUDA agent served more than each CPU agent;
   on ``cpu``, when every prompt is answered.
4. ``llm_overhead``: ``benchmarks/llm_overhead.py --quick`` (CPU, its own figures).

Figures (ratios, as every benchmark here): the profiled generation rate of the team's first
agent over the CPU agents' (1.0 on ``cpu``), and the first agent's share of the team's
answers over a fair share (1/3). The last line is one JSON object: ``figures``, ``machine``,
``device``, ``steps`` (each with ``pass``, ``seconds`` and its figures) and ``pass``.

Caveats: one trial; the team's prompts are short and ``--max-tokens`` small, so the CUDA
agent's advantage is smaller than its raw rate (prompt, bus and load time weigh more).

Run: python benchmarks/gpu_check.py [--device cuda|cpu] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, figure, quiet_logs
from lmteams.agents import (
    DispatcherConfig,
    WorkerAgent,
    WorkerConfig,
    open_dispatcher,
    open_runtime,
)
from lmteams.bus import open_bus, run_server
from lmteams.hardware import BackendConfig, LeastExpectedCompletion
from lmteams.hardware._detect import physical_cores

HERE = Path(__file__).parent
TEAM = "gpucheck"
FAIR_SHARE = 1 / 3


def lmteams_json(args: list[str], timeout_s: float) -> Any:
    """Run ``lmteams ARGS --json`` in a fresh interpreter (the CLI as a user runs it)."""
    done = subprocess.run(
        [sys.executable, "-m", "lmteams", *args, "--json"],
        capture_output=True, text=True, timeout=timeout_s, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"lmteams {' '.join(args)}: exit {done.returncode}: {done.stderr}")
    return json.loads(done.stdout[done.stdout.index("{") :])


def agents(device: str, cpu_threads: int) -> list[tuple[str, str, int]]:
    """(agent id, backend kind, threads): the GPU agent first, then CPU agents."""
    first = ("gpu-0", "cuda", 1) if device == "cuda" else ("cpu-0", "cpu", cpu_threads)
    return [first, ("cpu-1", "cpu", cpu_threads), ("cpu-2", "cpu", cpu_threads)]


def _leaves(exc: BaseException) -> list[str]:
    """What went wrong, out of any task groups' exception groups."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [f"{exc.__class__.__name__}: {exc}"]


async def step(
    steps: dict[str, dict[str, Any]], name: str, run: Callable[[], Awaitable[dict[str, Any]]]
) -> dict[str, Any]:
    """Run one step; a failure is recorded with its reason and the next step still runs."""
    started = time.perf_counter()
    try:
        result = await run()
    except Exception as exc:  # a failed step is a figure too: the others still run
        result = {"pass": False, "error": "; ".join(_leaves(exc))[:2000]}
    result["seconds"] = round(time.perf_counter() - started, 2)
    steps[name] = result
    print(f"{name}: {'pass' if result['pass'] else 'FAIL'} {result}", file=sys.stderr)
    return result


async def detect_step(device: str) -> dict[str, Any]:
    info = await anyio.to_thread.run_sync(lambda: lmteams_json(["hardware"], 120))
    cuda = [d for d in info["devices"] if "cuda" in d["backend"].lower()]
    return {
        "pass": device == "cpu" or (info["gpu_offload"] and bool(cuda)),
        "gpu_offload": info["gpu_offload"],
        "devices": [f"{d['name']}: {d['description']}" for d in info["devices"]],
        "llama_cpp_python": info["llama_cpp_python"],
        "build_features": info["build_features"],
    }


async def profile_step(model: str, team: list[tuple[str, str, int]]) -> dict[str, Any]:
    profiles: dict[str, dict[str, Any]] = {}
    for kind, threads in dict.fromkeys((kind, threads) for _, kind, threads in team):
        args = ["hardware", "profile", "--backend", kind, "--threads", str(threads)]
        args += ["--model", model, "--refresh"]
        measured = await anyio.to_thread.run_sync(lambda a=args: lmteams_json(a, 300))
        profiles[f"{kind}/{threads}"] = measured
    ok = all(p["generation_tokens_per_s"] > 0 for p in profiles.values())
    ok = ok and all(p["device"].startswith(k.split("/")[0]) for k, p in profiles.items())
    return {"pass": ok, "profiles": profiles}


async def team_step(
    model: str, team: list[tuple[str, str, int]], tasks: int, max_tokens: int
) -> dict[str, Any]:
    def worker(kind: str, threads: int, seed: int) -> WorkerAgent:
        backend = BackendConfig(kind=kind, model=model, n_threads=threads, seed=seed)
        return WorkerAgent(WorkerConfig(backend=backend, heartbeat_s=1.0, fetch_timeout_s=2.0))

    config = DispatcherConfig(request_timeout_s=300, task_timeout_s=600)
    async with (
        run_server() as server,
        open_bus(server.url, name="gpu-check") as bus,
        open_runtime(bus, TEAM) as runtime,
    ):
        for i, (agent_id, kind, threads) in enumerate(team):
            with anyio.fail_after(300):
                await runtime.spawn(
                    lambda k=kind, t=threads, s=i: worker(k, t, s), actor_id=agent_id
                )
        async with open_dispatcher(
            bus,
            TEAM,
            membership=runtime.membership,
            placement=LeastExpectedCompletion(),
            config=config,
        ) as dispatcher:
            await dispatcher.wait_for_agents(len(team), timeout=120)
            members = runtime.membership.members()
            advertised = {m.name: round(m.facts.tokens_per_s, 1) for m in members}
            served: Counter[str] = Counter()
            tokens = 0

            async def one(i: int) -> None:
                nonlocal tokens
                prompt = f"Question {i}: name one planet of the solar system."
                answer = await dispatcher.submit(prompt, max_tokens=max_tokens)
                served[answer.agent] += 1
                tokens += answer.tokens_out

            started = time.perf_counter()
            with anyio.fail_after(600):
                async with anyio.create_task_group() as tg:
                    for i in range(tasks):
                        tg.start_soon(one, i)
            seconds = time.perf_counter() - started
    first, *rest = (agent_id for agent_id, _, _ in team)
    answered = sum(served.values())
    ok = answered == tasks
    if team[0][1] == "cuda":
        ok = ok and all(served[first] > served[other] for other in rest)
    return {
        "pass": ok,
        "served": {agent_id: served[agent_id] for agent_id, _, _ in team},
        "advertised_tokens_per_s": advertised,
        "tasks": tasks,
        "tokens_out": tokens,
        "tokens_per_s": round(tokens / seconds, 2),
        "first_share": served[first] / answered if answered else 0.0,
    }


async def overhead_step(max_tokens: int) -> dict[str, Any]:
    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(HERE / "llm_overhead.py"), "--quick",
             "--max-tokens", str(max_tokens)],
            capture_output=True, text=True, timeout=400, check=False,
        )  # fmt: skip

    done = await anyio.to_thread.run_sync(run)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"llm_overhead.py: exit {done.returncode}: {done.stderr[-1500:]}")
    result = json.loads(lines[-1])
    return {
        "pass": True,
        "figures": [
            {k: f.get(k) for k in ("name", "value", "baseline", "ratio", "target", "met")}
            for f in result["figures"]
        ],
    }


async def main(args: argparse.Namespace, build: dict[str, Any] | None) -> bool:
    quiet_logs()
    team = agents(args.device, args.cpu_threads)
    tasks = args.tasks or (6 if args.quick else 30)
    max_tokens = args.max_tokens or (8 if args.quick else 64)
    steps: dict[str, dict[str, Any]] = {}
    if build is not None:  # gpu_check.sh's build of llama-cpp-python, as a step of its own
        steps["build"] = build
    await step(steps, "detect", lambda: detect_step(args.device))
    profiled = await step(steps, "profile", lambda: profile_step(args.model, team))
    placed = await step(steps, "team", lambda: team_step(args.model, team, tasks, max_tokens))
    if not args.skip_overhead:
        await step(steps, "llm_overhead", lambda: overhead_step(16 if args.quick else 64))
    figures = []
    if profiled["pass"]:
        rates = {k: p["generation_tokens_per_s"] for k, p in profiled["profiles"].items()}
        first_key = f"{team[0][1]}/{team[0][2]}"
        cpu_key = f"cpu/{args.cpu_threads}"
        figures.append(
            figure(
                f"profile_generation_tokens_per_s_{team[0][1]}_over_cpu",
                rates[first_key],
                rates[cpu_key],
                None,
                threads={k: int(k.split("/")[1]) for k in rates},
            )
        )
    if placed["pass"] or "first_share" in placed:
        figures.append(
            figure(
                f"team_share_of_{team[0][0]}_over_fair_share",
                placed["first_share"],
                FAIR_SHARE,
                1.0 if args.device == "cuda" else None,
                served=placed["served"],
            )
        )
    passed = all(s["pass"] for s in steps.values())
    emit(figures, device=args.device, model=args.model, steps=steps, quick=args.quick,
         **{"pass": passed})  # fmt: skip
    return passed


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true", help="few tasks, few tokens")
    parser.add_argument("--model", default=os.environ.get("GPU_CHECK_MODEL", "smollm2-135m"))
    parser.add_argument("--tasks", type=int, default=0, help="team prompts (0: by --quick)")
    parser.add_argument("--max-tokens", type=int, default=0, help="per prompt (0: by --quick)")
    parser.add_argument(
        "--cpu-threads", type=int, default=max(1, physical_cores() // 4),
        help="threads of each CPU agent (default: a quarter of the physical cores)",
    )  # fmt: skip
    parser.add_argument("--skip-overhead", action="store_true", help="skip llm_overhead.py")
    parser.add_argument("--build-report", default="", help="gpu_check.sh's build step (JSON)")
    return parser.parse_args()


if __name__ == "__main__":
    options = parse()
    report = json.loads(Path(options.build_report).read_text()) if options.build_report else None
    sys.exit(0 if anyio.run(main, options, report) else 1)
