"""Job chaos run: team jobs on a 3-node R3 cluster while coordinators, agents and a node die.

The cluster and the team are ``chaos.py``'s (JetStream at R3 with ``sync_interval: always``;
supervised ``lmteams agent start --backend sim`` processes, restarted when killed, each
logging JSON to ``<home>/state/<team>/<agent>.log``). Jobs of ``chain_plus_free`` shapes,
centralized and decentralized in turn, are kept ``in_flight`` at a time while faults land
every ``fault_every_s`` seconds, in a seeded order: kill -9 of the agent holding the
``coordinator`` lease (KV bucket ``leases``), kill -9 of another random agent, and one NATS
node killed and started again.

Everything is measured from outside the team:

- ``jobs_completed``: jobs whose result (read from the job-results stream) says ``done``.
- ``jobs_lost``: jobs with no result at the end whose record is not ``done`` either.
- ``double_commits``: subtasks committed twice. A plain KV watch on the whole jobs bucket
  sees every write; a subtask whose entry turns ``done`` a second time, or is ``done`` under a
  second (agent, claim revision), was committed twice. The watch also counts the bucket
  revisions it never saw (``watch_missed``: writes replaced while it was reconnecting), so
  the figure says how complete its own check was.
- ``fenced`` / ``released``: late completions refused and lapsed claims released, summed from
  the jobs' figures (or the agents' tallies of a job with no result).
- ``coordinator_takeover_s``: from a coordinator's kill -9 to the lease's next holder.

Caveats: a 2-core shared VM; the counts are the point, not the times.

Run: .venv/bin/python benchmarks/job_chaos.py [--quick] [--jobs 30 --coordinator-kills 4 ...]
(``--quick`` sets 6 jobs, one coordinator and one agent kill, no node kill, over options given.)
"""

from __future__ import annotations

import contextlib
import json
import random
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import anyio
import msgspec

sys.path.insert(0, str(Path(__file__).parent))
from _common import bounce_node, kill_agent, machine, parse_spec, quiet_logs
from chaos import ChaosSpec, team_on
from lmteams.agents import Supervisor
from lmteams.bus import KV, KVEntry, LocalCluster, Subjects, open_kv
from lmteams.errors import BusError, LmteamsError
from lmteams.jobs import (
    Architecture,
    JobClient,
    JobResult,
    JobStatus,
    SubtaskState,
    SubtaskStatus,
    TaskGraph,
    chain_plus_free,
)
from lmteams.testing import wait_until

__all__ = ("JobChaosSpec", "CommitLedger", "job_chaos_run")

_CHAINS = (2, 10, 5, 16)
"""Chain lengths the jobs cycle through (the rest of each job's subtasks are independent)."""

_STATE = msgspec.msgpack.Decoder(SubtaskState)


class JobChaosSpec(msgspec.Struct, frozen=True, kw_only=True):
    jobs: int = 30
    subtasks: int = 20
    agents: int = 5
    in_flight: int = 4  # jobs running at once
    work_tokens: int = 60  # ~0.6 s a subtask on the simulated cpu-x86 device
    lease_s: float = 4.0  # each job's claim lease
    coordinator_kills: int = 4
    agent_kills: int = 4
    node_kills: int = 1
    node_down_s: float = 5.0
    first_fault_s: float = 6.0  # after the first submission
    fault_every_s: float = 7.0
    sim_device: str = "cpu-x86"
    timeout_s: float = 480.0  # the whole run: jobs without a result by then are looked into
    seed: int = 1


QUICK: dict[str, Any] = {"jobs": 6, "coordinator_kills": 1, "agent_kills": 1, "node_kills": 0}


class CommitLedger:
    """Every write to the jobs bucket, as a plain KV watch delivers it, checked per subtask."""

    def __init__(self) -> None:
        self.last: dict[str, SubtaskState] = {}
        self.commits: dict[str, list[tuple[str, int]]] = defaultdict(list)  # (agent, claim_rev)
        self.reopened: set[str] = set()  # a done subtask that later read as not done
        self.entries = 0
        self.missed = 0  # bucket revisions the watch skipped over
        self._revision = 0

    def see(self, entry: KVEntry) -> None:
        self.entries += 1
        if self._revision and entry.revision > self._revision + 1:
            self.missed += entry.revision - self._revision - 1
        self._revision = max(self._revision, entry.revision)
        if ".s." not in entry.key or entry.deleted:
            return
        try:
            state = _STATE.decode(entry.value)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        before = self.last.get(entry.key)
        if state.status is SubtaskStatus.DONE:
            if (
                before is None
                or before.status is not SubtaskStatus.DONE
                or (before.agent, before.claim_rev) != (state.agent, state.claim_rev)
            ):
                self.commits[entry.key].append((state.agent, state.claim_rev))
        elif before is not None and before.status is SubtaskStatus.DONE:
            self.reopened.add(entry.key)
        self.last[entry.key] = state

    def double_commits(self) -> int:
        return sum(1 for found in self.commits.values() if len(found) > 1)

    def committed_by(self, job_id: str, index: int) -> str:
        found = self.commits.get(f"{job_id}.s.{index}")
        return found[0][0] if found else ""

    async def follow(self, kv: KV, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        async with kv.watch(">") as entries:
            task_status.started()
            async for entry in entries:
                if entry is not None:
                    self.see(entry)


def job_graph(spec: JobChaosSpec, i: int) -> TaskGraph:
    chain = min(_CHAINS[i % len(_CHAINS)], spec.subtasks)
    return chain_plus_free(f"chaos-{i}", chain, spec.subtasks - chain, work_tokens=spec.work_tokens)


async def coordinator(leases: KV) -> tuple[str, int]:
    """Who holds the coordinator lease, and at which revision (("", 0) while nobody)."""
    try:
        entry = await leases.get("coordinator")
    except BusError:  # a node is down: ask again later
        return "", 0
    return (entry.value.decode(errors="replace"), entry.revision) if entry else ("", 0)


async def kill_coordinator(
    leases: KV, supervisor: Supervisor, rng: random.Random, killed: set[int]
) -> float | None:
    """kill -9 the lease holder; seconds until the lease has its next holder (None: no kill)."""
    with contextlib.suppress(TimeoutError):
        await wait_until(lambda: _held(leases), timeout=30, interval=0.2)
    holder, _ = await coordinator(leases)
    if not holder or kill_agent(supervisor, rng, killed, among={holder}) is None:
        return None
    killed_at = time.monotonic()
    _, at_kill = await coordinator(leases)  # the dead holder renews no more after this

    async def taken_over() -> bool:
        who, revision = await coordinator(leases)
        return bool(who) and revision > at_kill

    try:
        await wait_until(taken_over, timeout=60, interval=0.1)
    except TimeoutError:
        return float("nan")
    return time.monotonic() - killed_at


async def _held(leases: KV) -> bool:
    return bool((await coordinator(leases))[0])


class Run:
    """One run's moving parts: submission, results, faults."""

    def __init__(self, spec: JobChaosSpec, client: JobClient, supervisor: Supervisor) -> None:
        self.spec = spec
        self.client = client
        self.supervisor = supervisor
        self.ids = [f"jc-{i:03d}" for i in range(spec.jobs)]
        self.submitted: list[str] = []
        self.results: dict[str, JobResult] = {}
        self.all_submitted = anyio.Event()
        self.faults: dict[str, int] = defaultdict(int)
        self.takeovers: list[float] = []

    def running(self) -> int:
        return sum(1 for j in self.submitted if j not in self.results)

    def finished(self) -> bool:
        return self.all_submitted.is_set() and self.running() == 0

    async def submit(self) -> None:
        """Keep ``in_flight`` jobs running; a resubmission through an election is one job."""
        for i, job_id in enumerate(self.ids):
            await wait_until(
                lambda: self.running() < self.spec.in_flight,
                timeout=self.spec.timeout_s,
                interval=0.2,
            )
            architecture: Architecture = "centralized" if i % 2 == 0 else "decentralized"
            with anyio.fail_after(120):
                while True:
                    try:
                        await self.client.submit_job(
                            job_graph(self.spec, i),
                            job_id=job_id,
                            architecture=architecture,
                            lease_s=self.spec.lease_s,
                        )
                        break
                    except BusError:
                        await anyio.sleep(0.5)
            self.submitted.append(job_id)
        self.all_submitted.set()

    async def collect(self) -> None:
        """Read each submitted job's stored result until every one has it."""
        while not self.finished():
            for job_id in [j for j in self.submitted if j not in self.results]:
                with contextlib.suppress(LmteamsError):  # a node is down: next round
                    result = await self.client.job_result(job_id)
                    if result is not None:
                        self.results[job_id] = result
            await anyio.sleep(0.5)

    async def inject(self, cluster: LocalCluster, leases: KV) -> None:
        """The seeded faults, one every ``fault_every_s``, while jobs run."""
        spec = self.spec
        rng = random.Random(spec.seed)
        kinds = (
            ["coordinator"] * spec.coordinator_kills
            + ["agent"] * spec.agent_kills
            + ["node"] * spec.node_kills
        )
        rng.shuffle(kinds)
        killed: set[int] = set()
        await wait_until(lambda: bool(self.submitted), timeout=spec.timeout_s, interval=0.1)
        await anyio.sleep(spec.first_fault_s)
        for kind in kinds:
            if self.finished():
                return
            if kind == "coordinator":
                took = await kill_coordinator(leases, self.supervisor, rng, killed)
                if took is not None:
                    self.faults["coordinator_kills"] += 1
                    self.takeovers.append(took)
            elif kind == "agent":
                holder, _ = await coordinator(leases)
                others = {p.name for p in self.supervisor.processes()} - {holder}
                if kill_agent(self.supervisor, rng, killed, among=others) is not None:
                    self.faults["agent_kills"] += 1
            else:
                self.faults["node_kills"] += 1
                await bounce_node(cluster, rng, spec.node_down_s)
            await anyio.sleep(spec.fault_every_s)


async def job_chaos_run(spec: JobChaosSpec, base: Path) -> dict[str, Any]:
    """One run; returns its counts (the JSON line's figures and context)."""
    cluster = LocalCluster(3, sync_interval="always", base_dir=base / "cluster")
    team = ChaosSpec(agents=spec.agents, sim_device=spec.sim_device)
    await cluster.start()
    try:
        async with team_on(cluster.url, team, base / "home") as (bus, subjects, sup, _):
            client = JobClient(bus, subjects.team)
            board = await client.board()
            leases = await open_kv(bus, Subjects(subjects.team).kv_bucket("leases"))
            ledger = CommitLedger()
            run = Run(spec, client, sup)
            started = time.monotonic()
            async with anyio.create_task_group() as watching:
                await watching.start(ledger.follow, board.kv)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(run.submit)
                    tg.start_soon(run.inject, cluster, leases)
                    with anyio.move_on_after(spec.timeout_s) as deadline:
                        await run.collect()
                    tg.cancel_scope.cancel()  # faults left when every job has ended
                elapsed = time.monotonic() - started
                await anyio.sleep(1.0)  # the watch catches up on the last writes
                watching.cancel_scope.cancel()
            report = await tally(run, client, ledger)
            restarts = sum(p.restarts for p in sup.processes())
    finally:
        await cluster.stop()
        cluster.cleanup()
    kills = run.faults["coordinator_kills"] + run.faults["agent_kills"]
    return {
        **report,
        **run.faults,
        "faults": kills + run.faults["node_kills"],
        "agent_restarts": restarts,
        "restarts_beyond_kills": max(0, restarts - kills),
        "coordinator_takeover_s": sorted(round(t, 2) for t in run.takeovers),
        "timed_out": deadline.cancelled_caught,
        "elapsed_s": round(elapsed, 1),
    }


async def tally(run: Run, client: JobClient, ledger: CommitLedger) -> dict[str, Any]:
    """The outside view of every job: results, what the bucket says of the rest, commits."""
    completed = failed = lost = mismatched = fenced = released = 0
    unfinished: dict[str, dict[str, Any]] = {}
    for job_id in run.submitted:
        result = run.results.get(job_id)
        if result is not None:
            completed += result.status is JobStatus.DONE
            failed += result.status is not JobStatus.DONE
            if result.figures is not None:
                fenced += result.figures.fenced
                released += result.figures.releases
            for i, record in enumerate(result.subtasks):  # the result is what was committed
                if record.status is SubtaskStatus.DONE:
                    mismatched += record.agent != ledger.committed_by(job_id, i)
            continue
        view = None
        with contextlib.suppress(LmteamsError):
            view = await client.job(job_id)
        if view is None or view.record.status is not JobStatus.DONE:
            lost += 1
        if view is not None:
            fenced += sum(t.fenced for t in view.tallies.values())
            released += sum(t.released for t in view.tallies.values())
            unfinished[job_id] = {  # where a job without a result stands: what to look into
                "status": view.record.status,
                "architecture": view.record.spec.options.architecture,
                "subtasks": {
                    str(s.index): f"{s.status}:{s.holder}:{s.claim_rev}"
                    for s in view.states
                    if s.status is not SubtaskStatus.DONE
                },
            }
        else:
            unfinished[job_id] = {"status": "not admitted"}
    return {
        "jobs": len(run.ids),
        "jobs_submitted": len(run.submitted),
        "jobs_completed": completed,
        "jobs_failed": failed,
        "jobs_lost": lost,
        "subtasks_committed": len(ledger.commits),
        "double_commits": ledger.double_commits(),
        "reopened_after_commit": len(ledger.reopened),
        "result_mismatches": mismatched,
        "fenced": fenced,
        "released": released,
        "watch_entries": ledger.entries,
        "watch_missed": ledger.missed,
        "unfinished": unfinished,
    }


def figures(report: dict[str, Any], spec: JobChaosSpec) -> list[dict[str, Any]]:
    """Counts as figures: ``ratio`` is the count over what it is a count of."""

    def count(name: str, of: int, target: float | None, *, most: bool = True) -> dict[str, Any]:
        value = report[name]
        met = None if target is None else (value <= target if most else value / of >= target)
        return {
            "name": name,
            "value": value,
            "baseline": of,
            "ratio": round(value / of, 4) if of else None,
            "target": target,
            "met": met,
        }

    jobs, commits = report["jobs"], report["subtasks_committed"]
    planned = spec.coordinator_kills + spec.agent_kills + spec.node_kills
    takeovers = report["coordinator_takeover_s"]
    return [
        count("jobs_completed", jobs, 1.0, most=False),
        count("jobs_lost", jobs, 0),
        count("double_commits", commits, 0),
        count("result_mismatches", commits, 0),
        count("fenced", commits, None),
        count("released", commits, None),
        count("faults", planned, None),
        count("watch_missed", report["watch_entries"], None),
        {
            "name": "coordinator_takeover_s",
            "value": statistics.median(takeovers) if takeovers else None,
            "baseline": None,
            "ratio": None,
            "target": None,
            "met": None,
            "note": "median, kill -9 of the lease holder to its successor's lease",
        },
    ]


def main() -> None:
    quick = "--quick" in sys.argv
    if quick:
        sys.argv.remove("--quick")
    spec = parse_spec(JobChaosSpec, __doc__.split("\n")[0])
    if quick:
        spec = msgspec.structs.replace(spec, **QUICK)
    quiet_logs()
    base = Path(tempfile.mkdtemp(prefix="lmteams-job-chaos-"))
    report = anyio.run(job_chaos_run, spec, base)
    logs = base / "home"
    print(f"spec: {msgspec.json.encode(spec).decode()}")
    print(
        f"jobs={report['jobs']} completed={report['jobs_completed']} "
        f"failed={report['jobs_failed']} lost={report['jobs_lost']} "
        f"double_commits={report['double_commits']} fenced={report['fenced']} "
        f"released={report['released']} faults={report['faults']} "
        f"(coordinator {report.get('coordinator_kills', 0)}, agent "
        f"{report.get('agent_kills', 0)}, node {report.get('node_kills', 0)}) "
        f"takeovers={report['coordinator_takeover_s']} in {report['elapsed_s']}s; "
        f"agent logs under {logs}"
    )
    print(
        json.dumps(
            {
                "figures": figures(report, spec),
                **report,
                "spec": msgspec.to_builtins(spec),
                "quick": quick,
                "logs": str(logs),
                "machine": machine(),
            }
        )
    )


if __name__ == "__main__":
    main()
