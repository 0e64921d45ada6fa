"""Soak: many tasks through simulated agent processes; memory and subscriptions stay flat.

An embedded nats-server, ``lmteams agent start --backend sim`` children under the process
supervisor (as ``lmteams up`` runs them), and a caller that keeps a bounded number of tasks
outstanding. After a warm-up the resident memory of every agent process (``VmRSS`` from
``/proc/<pid>/status``) and the server's subscription count (monitor ``/subsz``) are sampled;
they are sampled again at the end. Growth is reported, not asserted.

- ``rss_growth_mb``: the largest growth of one agent's RSS between warm-up and the end
  (target < 10 MB over 10,000 tasks).
- ``subscriptions_leaked``: server subscriptions at the end minus after warm-up (target 0).
- ``lost`` / ``duplicated``: as in ``chaos.py`` (no faults here).

Caveats: a 2-core shared VM; RSS moves by a page or two with allocator timing, which is why
the warm-up is taken out. Throughput depends on the neighbours; counts are the point.

Run: .venv/bin/python benchmarks/soak.py [--tasks 10000 --agents 3 --warmup 1000]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import anyio
import msgspec

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, parse_spec, quiet_logs
from chaos import ResultLedger, team_on
from lmteams.agents import Supervisor, Task
from lmteams.bus import Bus, EmbeddedServer, Subjects, publish_durable, run_server


class SoakSpec(msgspec.Struct, frozen=True, kw_only=True):
    tasks: int = 10_000
    agents: int = 3
    warmup: int = 1000
    outstanding: int = 200  # tasks in flight at most: a steady load, not one huge backlog
    max_tokens: int = 4
    sim_device: str = "h100-cuda"
    settle_timeout_s: float = 120.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def agent_rss(supervisor: Supervisor) -> dict[str, tuple[int, float]]:
    """name -> (pid, RSS MB) of every running agent process."""
    out: dict[str, tuple[int, float]] = {}
    for proc in supervisor.processes():
        if proc.running and proc.pid:
            try:
                out[proc.name] = (proc.pid, rss_mb(proc.pid))
            except OSError:
                continue
    return out


async def subscriptions(server: EmbeddedServer) -> int:
    url = f"http://{server.config.host}:{server.config.monitor_port}/subsz"

    def fetch() -> int:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(json.load(response)["num_subscriptions"])

    return await anyio.to_thread.run_sync(fetch)


async def push(
    bus: Bus, subjects: Subjects, ledger: ResultLedger, ids: list[str], spec: SoakSpec
) -> None:
    """Publish ``ids`` keeping at most ``spec.outstanding`` unanswered, then wait for all."""
    answered_before = len(ledger.seen)
    for n, task_id in enumerate(ids):
        with anyio.fail_after(spec.settle_timeout_s):
            while n - (len(ledger.seen) - answered_before) >= spec.outstanding:  # noqa: ASYNC110 - a window over a counter
                await anyio.sleep(0.01)
        task = Task(id=task_id, prompt=f"soak {task_id}", max_tokens=spec.max_tokens)
        await publish_durable(bus, subjects.tasks, task, msg_id=task_id, timeout=10)
    with anyio.move_on_after(spec.settle_timeout_s):
        while not all(ledger.seen.get(t) for t in ids):
            await ledger.fill_from_stream(bus, subjects, ids)
            await anyio.sleep(0.2)


async def soak(spec: SoakSpec) -> dict[str, Any]:
    from chaos import ChaosSpec

    team_spec = ChaosSpec(agents=spec.agents, sim_device=spec.sim_device, ack_wait_s=30.0)
    base = Path(tempfile.mkdtemp(prefix="lmteams-soak-"))
    ids = [f"s{i:06d}" for i in range(spec.tasks)]
    warm, rest = ids[: spec.warmup], ids[spec.warmup :]
    async with (
        run_server() as server,
        team_on(server.url, team_spec, base / "home", replicas=1) as (bus, subjects, sup, ledger),
    ):
        started = time.monotonic()
        await push(bus, subjects, ledger, warm, spec)
        await anyio.sleep(1.0)  # let heartbeats and GC settle before the baseline
        rss_warm = agent_rss(sup)
        subs_warm = await subscriptions(server)
        await push(bus, subjects, ledger, rest, spec)
        await anyio.sleep(1.0)
        rss_end = agent_rss(sup)
        subs_end = await subscriptions(server)
        elapsed = time.monotonic() - started
        counts = ledger.counts(ids)
        info = await bus.js.stream_info(subjects.tasks_stream)
        consumer = await bus.js.consumer_info(subjects.tasks_stream, "workers")
        restarts = sum(p.restarts for p in sup.processes())
    same_process = [n for n in rss_end if n in rss_warm and rss_end[n][0] == rss_warm[n][0]]
    growth = {n: round(rss_end[n][1] - rss_warm[n][1], 2) for n in same_process}
    return {
        "sent": len(ids),
        **counts,
        "faults": 0,
        "rss_growth_mb": max(growth.values()) if growth else None,
        "rss_growth_by_agent_mb": growth,
        "rss_end_mb": {n: round(v[1], 1) for n, v in rss_end.items()},
        "subscriptions_after_warmup": subs_warm,
        "subscriptions_at_end": subs_end,
        "subscriptions_leaked": subs_end - subs_warm,
        "tasks_left_in_queue": info.state.messages,
        "acks_pending": consumer.num_ack_pending,
        "agent_restarts": restarts,
        "tasks_per_s": round(len(ids) / elapsed, 1),
        "elapsed_s": round(elapsed, 1),
    }


def main() -> None:
    spec = parse_spec(SoakSpec, __doc__.split("\n")[0])
    quiet_logs()
    report = anyio.run(soak, spec)
    print(
        f"sent={report['sent']} answered={report['answered']} lost={report['lost']} "
        f"duplicated={report['duplicated']} rss_growth_mb={report['rss_growth_mb']} "
        f"subscriptions_leaked={report['subscriptions_leaked']} "
        f"({report['tasks_per_s']} tasks/s over {report['elapsed_s']}s)"
    )
    print(json.dumps({**report, "spec": msgspec.to_builtins(spec), "machine": machine()}))


if __name__ == "__main__":
    main()
