"""Chaos run: a 3-node NATS cluster, agent processes on the simulated backend, faults injected.

The cluster runs JetStream at R3 with ``sync_interval: always`` (an acknowledged task is on
disk on a quorum). ``lmteams agent start --backend sim`` children run under the process
supervisor (as ``lmteams up`` runs them), which restarts the ones we ``kill -9``. While tasks
are submitted, random agents are killed and one NATS node is killed and brought back.

The caller's view is measured directly: a subscriber on ``lmt.<team>.results.>`` counts every
result message per task id, and the results stream is read for any task the subscriber
missed while it was reconnecting (core NATS is at-most-once; the stream is the record).

- ``lost``: tasks with no result at the end, neither seen nor stored.
- ``duplicated``: tasks answered twice, i.e. more than one *distinct* result message (distinct
  envelope message ids) reached the caller. A retransmit of one publish through a leader
  election carries the same id and is counted apart, as ``retransmits``.
- ``redelivered``: tasks whose result says JetStream handed them out more than once.
- ``faults``: agent kills plus node kills.
- ``hostile_inputs``: messages an outsider could publish (random bytes, malformed and deeply
  nested bodies, hostile ids and values, wrong ``Lmt`` headers and content types; see
  ``_hostile.py``) sent on the tasks subject, inboxes, role, control, gossip, key-binding
  and vote subjects while the run goes on; ``restarts_from_input`` are agent restarts
  beyond the kills (each kill -9 costs exactly one restart), the target 0.

Caveats: a 2-core shared VM; timings vary run to run, the counts are the point, not the speed.

Run: .venv/bin/python benchmarks/chaos.py [--tasks 1000 --agent-kills 10 --node-kills 2]
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import msgspec

sys.path.insert(0, str(Path(__file__).parent))
from _common import bounce_node, kill_agent, machine, parse_spec, quiet_logs
from _hostile import hostile_inputs
from lmteams.agents import (
    Ping,
    Pong,
    Result,
    Supervisor,
    SupervisorConfig,
    Task,
    open_supervisor,
)
from lmteams.bus import (
    Bus,
    Codec,
    Envelope,
    Incoming,
    LocalCluster,
    StreamSettings,
    SubjectKind,
    Subjects,
    ensure_team_streams,
    last_message,
    open_bus,
    publish_durable,
)
from lmteams.errors import BusError, LmteamsError
from lmteams.testing import wait_until

__all__ = ("ChaosSpec", "ResultLedger", "chaos_run", "wait_for_agents", "publish_all")

TEAM = "chaos"


class ChaosSpec(msgspec.Struct, frozen=True, kw_only=True):
    tasks: int = 200
    agents: int = 3
    agent_kills: int = 3
    node_kills: int = 1
    node_down_s: float = 3.0
    ack_wait_s: float = 5.0
    publish_rate: float = 40.0  # tasks per second, so faults land while work is in flight
    max_tokens: int = 8
    sim_device: str = "cpu-x86"  # ~0.1 s a task: kills often land on a task in flight
    settle_timeout_s: float = 90.0  # after the last fault, time for every task to finish
    seed: int = 1
    hostile_rate: float = 50.0  # hostile messages per second while tasks are published


class ResultLedger:
    """Every result message the caller saw, per task id: (envelope message id, deliveries)."""

    def __init__(self) -> None:
        self.seen: dict[str, list[tuple[str, int]]] = defaultdict(list)
        self.recovered = 0  # results read from the stream because the subscriber missed them
        self._from_stream: dict[str, str] = {}  # task id -> message id read from the stream

    async def on_result(self, inc: Incoming[Result]) -> None:
        task_id, msg_id = inc.body.task_id, inc.envelope.id
        if self._from_stream.get(task_id) == msg_id:
            # the stream was read while this copy was still on its way: late, not missed,
            # and not a second delivery either
            del self._from_stream[task_id]
            self.recovered -= 1
            return
        self.seen[task_id].append((msg_id, inc.body.deliveries))

    async def fill_from_stream(self, bus: Bus, subjects: Subjects, task_ids: list[str]) -> int:
        """Results the subscriber missed (it was reconnecting) are in the stream: read them."""
        recovered = 0
        for task_id in task_ids:
            if self.seen.get(task_id):
                continue
            stored = await last_message(bus, subjects.results_stream, subjects.results(task_id))
            if stored is not None and not self.seen.get(task_id):  # not arrived meanwhile
                result = bus.decode_raw(stored[0], stored[1], Codec(Result))
                msg_id = Envelope.from_headers(stored[1]).id
                self.seen[task_id].append((msg_id, result.deliveries))
                self._from_stream[task_id] = msg_id
                recovered += 1
        self.recovered += recovered
        return recovered

    def counts(self, task_ids: list[str]) -> dict[str, int]:
        answered = sum(1 for t in task_ids if self.seen.get(t))
        duplicated = sum(1 for t in task_ids if len({m for m, _ in self.seen.get(t, [])}) > 1)
        retransmits = sum(
            len(self.seen.get(t, [])) - len({m for m, _ in self.seen.get(t, [])}) for t in task_ids
        )
        redelivered = sum(1 for t in task_ids if any(d > 1 for _, d in self.seen.get(t, [])))
        return {
            "answered": answered,
            "lost": len(task_ids) - answered,
            "duplicated": duplicated,
            "retransmits": retransmits,
            "redelivered": redelivered,
            "recovered_from_stream": self.recovered,
        }


async def wait_for_agents(bus: Bus, subjects: Subjects, names: list[str], timeout: float) -> None:
    """Until every named agent's worker answers a ping: it serves."""

    async def serves(name: str) -> bool:
        try:
            await bus.request(subjects.agent(name), Ping(), expect=Pong, timeout=1)
        except LmteamsError:  # not serving yet: no responders, timeout
            return False
        return True

    for name in names:
        await wait_until(lambda n=name: serves(n), timeout=timeout)


async def publish_all(
    bus: Bus, subjects: Subjects, task_ids: list[str], *, rate: float, max_tokens: int
) -> int:
    """Submit every task durably, retrying through elections (same id, so never twice)."""
    sent = 0
    for task_id in task_ids:
        task = Task(
            id=task_id, prompt=f"chaos {task_id}", max_tokens=max_tokens, submitted_at=time.time()
        )
        with anyio.fail_after(120):
            while True:
                try:
                    await publish_durable(bus, subjects.tasks, task, msg_id=task_id, timeout=10)
                    break
                except BusError:
                    await anyio.sleep(0.5)
        sent += 1
        if rate > 0:
            await anyio.sleep(1.0 / rate)
    return sent


@contextlib.asynccontextmanager
async def team_on(
    url: str, spec: ChaosSpec, home: Path, *, replicas: int = 3
) -> AsyncIterator[tuple[Bus, Subjects, Supervisor, ResultLedger]]:
    """The caller's bus (with its results ledger) and a supervised team of sim agents."""
    saved_home = os.environ.get("LMTEAMS_HOME")
    os.environ["LMTEAMS_HOME"] = str(home)  # the supervisor's state and agent logs
    try:
        async with _team(url, spec, replicas) as team:
            yield team
    finally:
        if saved_home is None:
            os.environ.pop("LMTEAMS_HOME", None)
        else:
            os.environ["LMTEAMS_HOME"] = saved_home


@contextlib.asynccontextmanager
async def _team(
    url: str, spec: ChaosSpec, replicas: int
) -> AsyncIterator[tuple[Bus, Subjects, Supervisor, ResultLedger]]:
    subjects = Subjects(TEAM)
    config = SupervisorConfig(
        team=TEAM,
        agents=spec.agents,
        backend="sim",
        sim_device=spec.sim_device,
        threads=1,
        nats_url=url,
        ack_wait_s=spec.ack_wait_s,
        drain_timeout_s=5.0,
        restart_backoff_s=0.2,
        restart_backoff_max_s=2.0,
        replicas=replicas,
    )
    async with open_bus(url, name="chaos-caller") as bus:
        await ensure_team_streams(bus, subjects, StreamSettings(replicas=replicas))
        ledger = ResultLedger()
        await bus.subscribe(
            subjects.all(SubjectKind.RESULTS), ledger.on_result, codec=Codec(Result)
        )
        async with open_supervisor(config) as supervisor:
            await supervisor.start_agents("sim")
            await wait_for_agents(bus, subjects, supervisor.agent_names(), timeout=90)
            yield bus, subjects, supervisor, ledger


async def inject_faults(
    spec: ChaosSpec, cluster: LocalCluster, supervisor: Supervisor, span_s: float
) -> dict[str, int]:
    """Spread agent kills (-9) and node kills (with restart) over ``span_s`` seconds."""
    rng = random.Random(spec.seed)
    events: list[tuple[float, str]] = [(rng.uniform(0.1, 0.9) * span_s, "agent")
                                       for _ in range(spec.agent_kills)]  # fmt: skip
    events += [((i + 0.5) / max(1, spec.node_kills) * span_s * 0.8, "node")
               for i in range(spec.node_kills)]  # fmt: skip
    events.sort()
    counts = {"agent_kills": 0, "node_kills": 0}
    killed: set[int] = set()  # a pid not yet reaped still looks alive: never count it twice
    started = time.monotonic()
    for at, kind in events:
        await anyio.sleep(max(0.0, at - (time.monotonic() - started)))
        if kind == "agent":
            if kill_agent(supervisor, rng, killed) is not None:
                counts["agent_kills"] += 1
        else:
            counts["node_kills"] += 1
            await bounce_node(cluster, rng, spec.node_down_s)
    return counts


async def publish_hostile(
    bus: Bus, subjects: Subjects, agents: list[str], spec: ChaosSpec, done: anyio.Event
) -> int:
    """Hostile input at ``hostile_rate`` until ``done``; returns how many the server took."""
    sent = 0
    if spec.hostile_rate <= 0:
        return 0
    for subject, body, headers in hostile_inputs(subjects, agents, seed=spec.seed):
        if done.is_set():
            return sent
        try:
            await bus.nc.publish(subject, body, headers=headers or None)
            sent += 1
        except Exception:  # a node is down and the client is reconnecting: skip this one
            await anyio.sleep(0.1)
        await anyio.sleep(1.0 / spec.hostile_rate)
    return sent


async def settle(
    bus: Bus, subjects: Subjects, ledger: ResultLedger, task_ids: list[str], timeout: float
) -> None:
    """Until every task has a result (seen or stored) and the task queue is empty."""
    with anyio.move_on_after(timeout):
        while True:
            await ledger.fill_from_stream(bus, subjects, task_ids)
            if all(ledger.seen.get(t) for t in task_ids):
                with contextlib.suppress(Exception):
                    info = await bus.js.stream_info(subjects.tasks_stream)
                    if info.state.messages == 0:
                        return
            await anyio.sleep(0.5)


async def chaos_run(spec: ChaosSpec, *, base_dir: Path | None = None) -> dict[str, Any]:
    """One chaos run; returns the counts (the JSON line's keys)."""
    base = base_dir or Path(tempfile.mkdtemp(prefix="lmteams-chaos-"))
    cluster = LocalCluster(3, sync_interval="always", base_dir=base / "cluster")
    await cluster.start()
    started = time.monotonic()
    try:
        async with team_on(cluster.url, spec, base / "home") as (bus, subjects, sup, ledger):
            task_ids = [f"c{i:06d}" for i in range(spec.tasks)]
            span = spec.tasks / spec.publish_rate if spec.publish_rate > 0 else 5.0
            faults: dict[str, int] = {}
            sent = hostile = 0
            published = anyio.Event()
            agents = [p.name for p in sup.processes()]

            async def publisher() -> None:
                nonlocal sent
                sent = await publish_all(
                    bus, subjects, task_ids, rate=spec.publish_rate, max_tokens=spec.max_tokens
                )
                published.set()

            async def attacker() -> None:
                nonlocal hostile
                hostile = await publish_hostile(bus, subjects, agents, spec, published)

            async def chaos() -> None:
                faults.update(await inject_faults(spec, cluster, sup, max(span, 3.0)))

            async with anyio.create_task_group() as tg:
                tg.start_soon(publisher)
                tg.start_soon(attacker)
                tg.start_soon(chaos)
            await settle(bus, subjects, ledger, task_ids, spec.settle_timeout_s)
            counts = ledger.counts(task_ids)
            info = await bus.js.stream_info(subjects.tasks_stream)
            restarts = sum(p.restarts for p in sup.processes())
    finally:
        await cluster.stop()
        cluster.cleanup()
    return {
        "sent": sent,
        **counts,
        "faults": faults.get("agent_kills", 0) + faults.get("node_kills", 0),
        **faults,
        "agent_restarts": restarts,
        "hostile_inputs": hostile,
        "restarts_from_input": max(0, restarts - faults.get("agent_kills", 0)),
        "tasks_left_in_queue": info.state.messages,
        "elapsed_s": round(time.monotonic() - started, 1),
    }


def main() -> None:
    spec = parse_spec(ChaosSpec, __doc__.split("\n")[0])
    quiet_logs()
    report = anyio.run(chaos_run, spec)
    print(f"spec: {msgspec.json.encode(spec).decode()}")
    print(
        f"sent={report['sent']} answered={report['answered']} lost={report['lost']} "
        f"duplicated={report['duplicated']} redelivered={report['redelivered']} "
        f"faults={report['faults']} ({report['agent_kills']} agents, "
        f"{report['node_kills']} nodes) hostile_inputs={report['hostile_inputs']} "
        f"restarts_from_input={report['restarts_from_input']} in {report['elapsed_s']}s"
    )
    print(json.dumps({**report, "spec": msgspec.to_builtins(spec), "machine": machine()}))


if __name__ == "__main__":
    main()
