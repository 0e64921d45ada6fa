"""Capacity-aware placement and hedged requests, over a real nats-server.

Throughput: 24 simulated agents over six device classes of ``DEVICE_CLASSES`` (four of each:
rpi5-cpu, cpu-x86, apple-m2-metal, rtx-4090-cuda, a100-cuda, h100-cuda; generation rates
from 50 to 1190 tokens/s) in one runtime, one process, one embedded nats-server. A burst of
2,000 prompts goes through a dispatcher; throughput is generated tokens over the wall-clock
makespan, reported as a fraction of the ideal: the sum of the agents' capacities for this
workload (each class's mean output tokens over its mean modelled seconds per prompt, prompt
processing included, divided by the time scale). Round-robin and random placement run the
same way beside it, on fewer prompts (``--baseline-tasks``, 240 by default: ten per agent),
because a blind placement's makespan is set by its slowest agent and 2,000 would take
minutes; their ratio does not depend on the count beyond rounding.

The baseline a user gets for free is JetStream's pull work queue: the same agents pull the
team's task stream (``TeamClient.submit``), one task at a time, so a fast agent simply pulls
more. Capacity-aware placement is compared with it on the same ``--tasks`` batch (throughput,
i.e. the inverse of the batch's makespan) and on p99 latency of the Poisson stream below,
reported as they come out, including where the pull queue wins.

Stragglers: the same fleet with every class's stragglers set to 5% of calls, 5x slower, and
prompts arriving as a Poisson stream at half the fleet's capacity; p99 submit-to-answer
latency with capacity-aware placement, without and with ``HedgePolicy(factor=2)``.

State machine of one prompt (see ``lmteams.agents._dispatch``): placed (waiting at the chosen
agent, movable to an agent that runs dry) -> sent (at most ``window`` per agent) -> answered,
or hedged (a copy sent elsewhere, first answer wins, the loser cancelled on its agent) or
retried elsewhere on failure.

Caveats: failures are stripped (failure_prob 0) everywhere and stragglers in the throughput
part, so the ideal is well defined; jitter is kept. The simulated backends sleep for modelled
time times ``--time-scale`` on a shared 2-core machine, so event-loop overhead (24 agents
and the dispatcher share one loop) counts against the measured figure, which is the point;
one trial per policy, since the blind baselines are far from ideal by construction.

Run: .venv/bin/python benchmarks/placement.py [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import random
import statistics
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import msgspec
import structlog

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, figure, quiet_logs
from lmteams.agents import (
    Answer,
    Dispatcher,
    DispatcherConfig,
    Membership,
    TeamClient,
    WorkerAgent,
    WorkerConfig,
    open_dispatcher,
    open_runtime,
)
from lmteams.bus import Bus, open_bus, run_server
from lmteams.hardware import (
    DEVICE_CLASSES,
    Backend,
    DeviceClass,
    HedgePolicy,
    LeastExpectedCompletion,
    Placement,
    RandomPlacement,
    RoundRobin,
    SimulatedBackend,
    estimate_tokens,
)

CLASSES = ("rpi5-cpu", "cpu-x86", "apple-m2-metal", "rtx-4090-cuda", "a100-cuda", "h100-cuda")
AGENTS = 24
MAX_TOKENS = 64  # the simulator draws output uniformly from [32, 64]
MEAN_OUT = (MAX_TOKENS // 2 + MAX_TOKENS) / 2


def prompt_text(i: int) -> str:
    return f"Question {i:05d}: what is the capital of France?"


class SimAgent(WorkerAgent):
    def __init__(self, device_class: DeviceClass, seed: int, time_scale: float) -> None:
        super().__init__(WorkerConfig(heartbeat_s=1.0, fetch_timeout_s=2.0))
        self.device_class = device_class
        self.seed = seed
        self.time_scale = time_scale

    @contextlib.asynccontextmanager
    async def open_backend(self) -> AsyncIterator[Backend]:  # type: ignore[override]
        backend = SimulatedBackend(self.device_class, seed=self.seed, time_scale=self.time_scale)
        try:
            yield backend
        finally:
            await backend.aclose()


def fleet(*, stragglers: bool) -> list[DeviceClass]:
    classes = []
    for i in range(AGENTS):
        base = DEVICE_CLASSES[CLASSES[i % len(CLASSES)]]
        faults: dict[str, float] = {"failure_prob": 0.0}
        faults |= (
            {"straggler_prob": 0.05, "straggler_factor": 5.0}
            if stragglers
            else {"straggler_prob": 0.0, "straggler_factor": 1.0}
        )
        classes.append(msgspec.structs.replace(base, **faults))
    return classes


def capacity(classes: list[DeviceClass], time_scale: float) -> float:
    """Ideal tokens/s of the fleet on this workload: per agent, output over mean seconds."""
    tokens_in = estimate_tokens(prompt_text(0))
    total = 0.0
    for c in classes:
        seconds = tokens_in / c.prompt_tokens_per_s + MEAN_OUT / c.generation_tokens_per_s
        total += MEAN_OUT / seconds
    return total / time_scale


@contextlib.asynccontextmanager
async def team(
    bus: Bus, name: str, classes: list[DeviceClass], time_scale: float
) -> AsyncIterator[Membership]:
    """The fleet in one runtime; its membership is the view the dispatcher places by."""
    async with open_runtime(bus, name) as rt:
        async with anyio.create_task_group() as tg:
            for i, cls in enumerate(classes):
                agent = f"a{i:02d}-{cls.name}"
                tg.start_soon(
                    lambda c=cls, i=i, a=agent: rt.spawn(
                        lambda: SimAgent(c, i, time_scale), actor_id=a
                    )
                )
        yield rt.membership


async def burst(dispatcher: Dispatcher, tasks: int) -> tuple[float, list[Answer]]:
    answers: list[Answer] = []

    async def one(i: int) -> None:
        answers.append(await dispatcher.submit(prompt_text(i), max_tokens=MAX_TOKENS))

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(tasks):
            tg.start_soon(one, i)
    return time.perf_counter() - started, answers


async def throughput(
    bus: Bus, team_name: str, view: Membership, placement: Placement, tasks: int
) -> tuple[float, dict[str, Any]]:
    config = DispatcherConfig(request_timeout_s=600, task_timeout_s=3600)
    async with open_dispatcher(
        bus, team_name, membership=view, placement=placement, config=config
    ) as dispatcher:
        await dispatcher.wait_for_agents(AGENTS, timeout=30)
        seconds, answers = await burst(dispatcher, tasks)
        stats = dispatcher.statistics()
    tokens = sum(a.tokens_out for a in answers)
    per_class: dict[str, int] = {}
    for a in answers:
        per_class[a.device] = per_class.get(a.device, 0) + 1
    extra = {"tasks": tasks, "seconds": round(seconds, 2), "answers_by_device": per_class}
    extra["rebalanced"] = stats.rebalanced
    return tokens / seconds, extra


async def stream_latencies(
    bus: Bus,
    team_name: str,
    view: Membership,
    hedge: HedgePolicy | None,
    *,
    tasks: int,
    rate: float,
    seed: int,
) -> list[float]:
    """Poisson arrivals at ``rate`` prompts/s; submit-to-answer seconds of each."""
    latencies: list[float] = []
    rng = random.Random(seed)
    config = DispatcherConfig(request_timeout_s=600, task_timeout_s=3600)
    async with open_dispatcher(
        bus, team_name, membership=view, hedge=hedge, config=config
    ) as dispatcher:
        await dispatcher.wait_for_agents(AGENTS, timeout=30)

        async def one(i: int) -> None:
            started = time.perf_counter()
            await dispatcher.submit(prompt_text(i), max_tokens=MAX_TOKENS)
            latencies.append(time.perf_counter() - started)

        async with anyio.create_task_group() as tg:
            for i in range(tasks):
                tg.start_soon(one, i)
                await anyio.sleep(rng.expovariate(rate))
    return latencies


async def pull_burst(bus: Bus, team_name: str, tasks: int) -> tuple[float, dict[str, Any]]:
    """The batch through the team's JetStream work queue: agents pull, nobody places."""
    client = TeamClient(bus, team_name)
    tokens = 0

    async def one(i: int) -> None:
        nonlocal tokens
        result = await client.submit(prompt_text(i), max_tokens=MAX_TOKENS, timeout=3600)
        tokens += result.tokens_out

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(tasks):
            tg.start_soon(one, i)
    seconds = time.perf_counter() - started
    return tokens / seconds, {"tasks": tasks, "seconds": round(seconds, 2)}


async def pull_latencies(
    bus: Bus, team_name: str, *, tasks: int, rate: float, seed: int
) -> list[float]:
    """Poisson arrivals through the pull queue, as ``stream_latencies`` does for placement."""
    latencies: list[float] = []
    rng = random.Random(seed)
    client = TeamClient(bus, team_name)

    async def one(i: int) -> None:
        started = time.perf_counter()
        await client.submit(prompt_text(i), max_tokens=MAX_TOKENS, timeout=3600)
        latencies.append(time.perf_counter() - started)

    async with anyio.create_task_group() as tg:
        for i in range(tasks):
            tg.start_soon(one, i)
            await anyio.sleep(rng.expovariate(rate))
    return latencies


def quieter_logs() -> None:
    """Cancelled losers of hedges are handler errors (warnings) by design: keep them out."""
    quiet_logs()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[98]


async def main(args: argparse.Namespace) -> None:
    quieter_logs()
    scale = args.time_scale
    figures: list[dict[str, Any]] = []
    async with (
        run_server() as server,
        open_bus(server.url, name="bench-agents") as agents_bus,
        open_bus(server.url, name="bench-dispatch") as bus,
    ):
        classes = fleet(stragglers=False)
        ideal = capacity(classes, scale)
        async with team(agents_bus, "tp", classes, scale) as view:
            aware, aware_extra = await throughput(
                bus, "tp", view, LeastExpectedCompletion(), args.tasks
            )
            pull, pull_extra = await pull_burst(bus, "tp", args.tasks)
            rr, rr_extra = await throughput(bus, "tp", view, RoundRobin(), args.baseline_tasks)
            rnd, rnd_extra = await throughput(
                bus, "tp", view, RandomPlacement(seed=1), args.baseline_tasks
            )
        figures.append(
            figure(
                "throughput capacity-aware / ideal",
                aware,
                ideal,
                0.95,
                unit="tokens/s",
                **aware_extra,
            )
        )
        figures.append(
            figure(
                "batch throughput capacity-aware / JetStream pull queue",
                aware,
                pull,
                None,
                unit="tokens/s",
                note="same batch, same agents; higher is a shorter makespan",
                makespan_s=aware_extra["seconds"],
                makespan_pull_queue_s=pull_extra["seconds"],
            )
        )
        figures.append(
            figure(
                "throughput JetStream pull queue / ideal",
                pull,
                ideal,
                None,
                unit="tokens/s",
                **pull_extra,
            )
        )
        figures.append(
            figure("throughput round-robin / ideal", rr, ideal, None, unit="tokens/s", **rr_extra)
        )
        figures.append(
            figure("throughput random / ideal", rnd, ideal, None, unit="tokens/s", **rnd_extra)
        )

        slow = fleet(stragglers=True)
        rate = 0.5 * capacity(slow, scale) / MEAN_OUT
        async with team(agents_bus, "hedge", slow, scale) as view:
            plain = await stream_latencies(
                bus, "hedge", view, None, tasks=args.stream_tasks, rate=rate, seed=7
            )
            hedged = await stream_latencies(
                bus,
                "hedge",
                view,
                HedgePolicy(factor=2.0, quantile=0.9),
                tasks=args.stream_tasks,
                rate=rate,
                seed=7,
            )
            pulled = await pull_latencies(bus, "hedge", tasks=args.stream_tasks, rate=rate, seed=7)
        figures.append(
            figure(
                "p99 latency s, capacity-aware vs JetStream pull queue",
                p99(plain),
                p99(pulled),
                None,
                unit="s",
                better="lower",
                tasks=args.stream_tasks,
                arrivals_per_s=round(rate, 1),
                stragglers="5% of calls 5x slower",
                median_placed_s=round(statistics.median(plain), 4),
                median_pull_queue_s=round(statistics.median(pulled), 4),
            )
        )
        figures.append(
            figure(
                "p99 latency s, hedged vs not",
                p99(hedged),
                p99(plain),
                None,
                unit="s",
                better="lower",
                tasks=args.stream_tasks,
                arrivals_per_s=round(rate, 1),
                stragglers="5% of calls 5x slower",
                median_hedged_s=round(statistics.median(hedged), 4),
                median_plain_s=round(statistics.median(plain), 4),
            )
        )
    emit(
        figures,
        benchmark="placement",
        agents=AGENTS,
        classes=list(CLASSES),
        time_scale=scale,
        ideal_tokens_per_s=round(ideal, 1),
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer prompts, for CI")
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--baseline-tasks", type=int, default=240)
    parser.add_argument("--stream-tasks", type=int, default=400)
    parser.add_argument("--time-scale", type=float, default=2.0)
    ns = parser.parse_args()
    if ns.quick:
        ns.tasks, ns.baseline_tasks, ns.stream_tasks = 400, 48, 120
    anyio.run(main, ns, backend="asyncio")
