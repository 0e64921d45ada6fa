"""Durable task throughput through agent processes, against raw nats-py doing the same work.

One embedded nats-server (file storage). Each trial loads a backlog of ``--tasks`` tasks into
a work-queue stream, then starts ``--workers`` worker processes and counts results as they
arrive on the results subjects; the rate is taken between the 10th and the 90th percentile
result, so process start-up (imports, connecting, binding the consumer) stays out and the
figure is the steady state. Trials alternate between the two sides; medians.

- lmteams: each process runs an agent runtime with one ``WorkerAgent`` on a backend that
  answers at once (``InstantBackend``: only lmteams and the bus are measured).
  Per task it does what it does in production: decode and validate the task, look up an
  earlier result for the task id, progress events, a claim-extension task, the result
  published durably with ``Nats-Msg-Id``, the ack confirmed by the server, log calls.
- raw: the floor nats-py reaches for the same durable work. A work-queue stream, a shared
  durable pull consumer, and per task: ``fetch(1)``, ``js.publish`` of a result into a
  results stream with ``Nats-Msg-Id`` (awaiting its ack), ``msg.ack()``.

``ratio`` = lmteams / raw (target >= 0.5). Beside it, the server's message counts per task
(``/varz`` ``in_msgs``, everything clients sent) on each side say which extra messages
lmteams sends.

Caveats: a 2-core VM shared with other work; the server, the caller and three workers share
those cores, so the figure is CPU-bound and moves with the neighbours: ratios, not the
absolute rates, carry over.

Run: .venv/bin/python benchmarks/task_throughput.py [--quick] [--tasks N] [--trials N]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import msgspec
import nats
from nats.js import api

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, figure, quiet_logs
from lmteams.agents import Task
from lmteams.bus import EmbeddedServer, Subjects, ensure_team_streams, open_bus, run_server
from lmteams.hardware import Backend, Completion, GenerateRequest, Timings, estimate_tokens

INSTANT = "instant"


# --- worker processes --------------------------------------------------------------------
class InstantBackend:
    """A backend that answers at once and counts tokens as the simulated one does.

    Not the simulated backend with ``time_scale=0``: that one still draws its modelled
    latencies, failures and log-probabilities per call, which is model simulation, not
    lmteams. This one is the least a backend can do, so the figure is lmteams and the bus.
    """

    device, model, n_ctx = INSTANT, "instant", 2048

    async def count_tokens(self, request: GenerateRequest) -> int:
        return estimate_tokens(request.prompt) + estimate_tokens(request.system or "")

    async def generate(self, request: GenerateRequest) -> Completion:
        return Completion(
            text="x", tokens_in=await self.count_tokens(request), tokens_out=1,
            timings=Timings(), finish_reason="stop", device=INSTANT, model=self.model,
        )  # fmt: skip

    async def aclose(self) -> None:
        return None


async def lmteams_worker(url: str, team: str, name: str) -> None:
    from lmteams.agents import WorkerAgent, open_runtime

    class Worker(WorkerAgent):
        @contextlib.asynccontextmanager
        async def open_backend(self) -> AsyncIterator[Backend]:
            yield InstantBackend()

    async with open_bus(url, name=name) as bus, open_runtime(bus, team) as runtime:
        await runtime.spawn(Worker, actor_id=name)
        await anyio.sleep_forever()


async def raw_worker(url: str, team: str, name: str) -> None:
    nc = await nats.connect(url, name=name)
    js = nc.jetstream()
    sub = await js.pull_subscribe(f"{team}.tasks", durable="workers", stream=f"{team}-tasks")
    while True:
        try:
            msgs = await sub.fetch(1, timeout=1.0)
        except nats.errors.TimeoutError:
            continue
        for msg in msgs:
            task = msgspec.msgpack.decode(msg.data)
            result = msgspec.msgpack.encode({"task_id": task["id"], "ok": True, "answer": "x"})
            await js.publish(
                f"{team}.results.{task['id']}",
                result,
                headers={"Nats-Msg-Id": f"result-{task['id']}"},
            )
            await msg.ack()


# --- the caller --------------------------------------------------------------------------
def in_msgs(server: EmbeddedServer) -> int:
    url = f"http://{server.config.host}:{server.config.monitor_port}/varz"
    with urllib.request.urlopen(url, timeout=5) as response:
        return int(json.load(response)["in_msgs"])


async def load_lmteams(url: str, team: str, tasks: int) -> str:
    """The backlog, as ``TeamClient`` submits it; the results subject pattern."""
    from lmteams.bus import publish_durable

    subjects = Subjects(team)
    async with open_bus(url, name="loader") as bus:
        await ensure_team_streams(bus, subjects)

        async def one(i: int) -> None:
            task = Task(id=f"t{i:06d}", prompt=f"task {i}", max_tokens=4)
            await publish_durable(bus, subjects.tasks, task, msg_id=task.id, timeout=30)

        await in_chunks(tasks, one)
    return f"{subjects.root}.results.*"


async def load_raw(url: str, team: str, tasks: int) -> str:
    nc = await nats.connect(url, name="loader")
    js = nc.jetstream()
    await js.add_stream(
        name=f"{team}-tasks", subjects=[f"{team}.tasks"], retention=api.RetentionPolicy.WORK_QUEUE
    )
    await js.add_stream(name=f"{team}-results", subjects=[f"{team}.results.*"])
    await js.add_consumer(
        f"{team}-tasks",
        api.ConsumerConfig(durable_name="workers", ack_policy=api.AckPolicy.EXPLICIT),
    )

    async def one(i: int) -> None:
        body = msgspec.msgpack.encode({"id": f"t{i:06d}", "prompt": f"task {i}", "max_tokens": 4})
        await js.publish(f"{team}.tasks", body, headers={"Nats-Msg-Id": f"t{i:06d}"}, timeout=30)

    await in_chunks(tasks, one)
    await nc.close()
    return f"{team}.results.*"


async def in_chunks(count: int, one: Any, chunk: int = 200) -> None:
    for start in range(0, count, chunk):
        async with anyio.create_task_group() as tg:
            for i in range(start, min(count, start + chunk)):
                tg.start_soon(one, i)


async def trial(server: EmbeddedServer, side: str, team: str, args: argparse.Namespace) -> dict:
    loader = load_lmteams if side == "lmteams" else load_raw
    results = await loader(server.url, team, args.tasks)
    arrivals: list[float] = []
    seen: set[str] = set()
    nc = await nats.connect(server.url, name="counter")

    async def on_result(msg: Any) -> None:
        if msg.subject not in seen:
            seen.add(msg.subject)
            arrivals.append(time.perf_counter())

    await nc.subscribe(results, cb=on_result)
    before = in_msgs(server)
    command = [sys.executable, __file__, "--worker", side, "--url", server.url, "--team", team]
    procs = [
        subprocess.Popen([*command, "--name", f"w{i}"]) for i in range(args.workers)
    ]  # fmt: skip
    try:
        with anyio.fail_after(args.timeout):
            while len(seen) < args.tasks:  # noqa: ASYNC110 - a counter filled by a callback
                await anyio.sleep(0.05)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)
    sent = in_msgs(server) - before
    await nc.close()
    lo, hi = int(0.1 * args.tasks), int(0.9 * args.tasks)
    return {
        "tasks_per_s": (hi - lo) / (arrivals[hi] - arrivals[lo]),
        "server_in_msgs_per_task": sent / args.tasks,
    }


async def main(args: argparse.Namespace) -> None:
    quiet_logs()
    runs: dict[str, list[dict]] = {"lmteams": [], "raw": []}
    async with run_server() as server:
        for i in range(args.trials):
            order = ("raw", "lmteams") if i % 2 == 0 else ("lmteams", "raw")
            for side in order:
                runs[side].append(await trial(server, side, f"{side}{i}", args))

    def median(side: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[side])

    figures = [
        figure(
            "durable tasks/s through lmteams agents / raw nats-py",
            median("lmteams", "tasks_per_s"),
            median("raw", "tasks_per_s"),
            0.5,
            unit="tasks/s",
            tasks=args.tasks,
            workers=args.workers,
            trials=args.trials,
            per_trial_lmteams=[round(r["tasks_per_s"], 1) for r in runs["lmteams"]],
            per_trial_raw=[round(r["tasks_per_s"], 1) for r in runs["raw"]],
            backend="instant (answers at once; tokens counted as the simulated backend does)",
        ),
        figure(
            "server in_msgs per task, lmteams / raw",
            median("lmteams", "server_in_msgs_per_task"),
            median("raw", "server_in_msgs_per_task"),
            None,
            unit="messages/task",
            better="lower",
            note="includes fetch requests, acks, JetStream API calls, progress and heartbeats",
        ),
    ]
    emit(figures, benchmark="task_throughput")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer tasks and trials")
    parser.add_argument("--tasks", type=int, default=4000)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--worker", choices=("lmteams", "raw"), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--team", help=argparse.SUPPRESS)
    parser.add_argument("--name", help=argparse.SUPPRESS)
    ns = parser.parse_args()
    if ns.worker:
        quiet_logs()
        run = lmteams_worker if ns.worker == "lmteams" else raw_worker
        anyio.run(run, ns.url, ns.team, ns.name)
    else:
        if ns.quick:
            ns.tasks, ns.trials = 1000, 2
        anyio.run(main, ns)
