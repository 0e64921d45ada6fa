"""SWIM gossip: rounds for an update to reach everyone, time to declare a killed member dead.

N simulated members (N = 8 .. 256) run in this one process over a real nats-server, on two
shared connections, each member a ``lmteams.gossip`` member with its own inbox subscription.

Dissemination trials: a random member bumps its gossiped map; the trial's rounds are the
protocol periods (wall time / nominal period, rounded up) until every live member holds the
new version. Trials overlap (a new one every two periods, a few in flight, never two from
the same member) so 100 trials per N fit in minutes. Bound: ceil(log2 N) + ceil(ln N) + 2.

Detection trials: a random member is cancelled without leaving (a crash: its subscription
goes, like a killed process's) and replaced by a fresh member; the trial lasts until every
member that was alive at the kill has declared it dead. Meanwhile other members are paused
(``pause_member``, a simulated SIGSTOP) for a fraction of the suspicion timeout (``--pause``,
half by default): slow, not dead; any death declared about a member that was not killed is
a false death.

Consumers: every process that acts on liveness reads one membership view
(``GossipMembership``): a strategy's, in an agent process (hosting a member), a dispatcher's
and ``lmteams status``'s (observers, which pull a member's table every period). Three such
views follow the swarm; ``dead_everywhere_s`` is, per crash, the time until the last of them
says dead: what "strategies stop asking it, dispatch stops placing on it, status shows it
dead" waits for, detection plus the observers' lag of up to one period.

Figures, one per N: value = within_bound, the fraction of dissemination trials within the
bound; baseline = 1.0 (every trial within the bound), so ratio = within_bound; target 0.99.
Each also carries rounds p50/p99 (and p99 over log2 N), detection seconds and periods
p50/p99, dead_everywhere_s p50/p99, messages sent per member per period (constant in N
is the claim: one ping and about one ack, a few ping-reqs, a sync every 10 periods), the
same during the detection trials, and the false-death count (target 0).

Caveats: one Python process runs all members, so its event loop is the bottleneck; the
period grows with N (see ``period_for``) to keep the loop below saturation, and rounds are
counted by the nominal period, which overstates them when the loop lags. All members share
one heap, so a full garbage collection pauses them all at once (50-120 ms at N = 128, more
than a ping timeout): the benchmark freezes the heap after the joins and collects young
objects less often, because separate agent processes have no such shared pause. Detection
includes, by design, the dead timeout: the suspicion timeout, 5 * log10(N) periods (at
least 5), which a slow member is promised, plus ceil(log2(N + 1)) periods for its
refutation to travel; and suspicion timers stop while their owner's loop lags, so a
saturated loop stretches detection.

Run: .venv/bin/python benchmarks/gossip_convergence.py [--quick] [--sizes 8,16] [--trials N]
[--pause 0.9]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import random
import statistics
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, figure, quiet_logs
from lmteams.agents import MemberFacts
from lmteams.bus import Bus, open_bus, run_server
from lmteams.gossip import (
    ChangeKind,
    GossipMembership,
    MemberEvent,
    SwimConfig,
    SwimMember,
    open_member,
    open_membership,
    pause_member,
)

CONNECTIONS = 2


def bound_rounds(n: int) -> int:
    return math.ceil(math.log2(n)) + math.ceil(math.log(n)) + 2


def period_for(n: int) -> float:
    """A period long enough that n members' probes use well under one core of this loop."""
    return max(0.1, n * 0.002)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


class Trial:
    __slots__ = ("done", "origin", "pending", "start", "tag")

    def __init__(self, tag: int, origin: str, pending: set[str]) -> None:
        self.tag = tag
        self.origin = origin
        self.pending = pending
        self.start = time.monotonic()
        self.done = 0.0


class Swarm:
    """N members on shared connections, with crash, replacement and event bookkeeping."""

    def __init__(self, buses: list[Bus], team: str, config: SwimConfig, tg: TaskGroup) -> None:
        self.buses = buses
        self.team = team
        self.config = config
        self.tg = tg
        self.members: dict[str, tuple[SwimMember, anyio.CancelScope]] = {}
        self.spawned = 0
        self.spreading: dict[str, Trial] = {}  # origin -> open dissemination trial
        self.killed: dict[str, Trial] = {}  # victim -> open detection trial
        self.ever_killed: set[str] = set()
        self.crashes: list[tuple[str, float]] = []  # victim, crashed at
        self.false_deaths: list[tuple[str, str]] = []

    async def spawn(self) -> SwimMember:
        name = f"m{self.spawned}"
        bus = self.buses[self.spawned % len(self.buses)]
        self.spawned += 1
        member: SwimMember = await self.tg.start(self._run, bus, name)
        return member

    async def _run(self, bus: Bus, name: str, *, task_status: TaskStatus[SwimMember]) -> None:
        scope = anyio.CancelScope()
        with scope:
            async with open_member(
                bus,
                self.team,
                name,
                {"device": "sim", "load": 0.0, "trial": -1.0},
                config=self.config,
                on_event=self.on_event,
            ) as member:
                self.members[name] = (member, scope)
                task_status.started(member)
                await anyio.sleep_forever()

    def kill(self, name: str) -> None:
        _, scope = self.members.pop(name)
        self.ever_killed.add(name)
        self.killed[name] = Trial(0, name, set(self.members))
        self.crashes.append((name, time.monotonic()))
        scope.cancel()

    def crash_all(self) -> None:
        for _, scope in self.members.values():
            scope.cancel()
        self.members.clear()

    def on_event(self, event: MemberEvent) -> None:
        trial = self.spreading.get(event.member)
        if trial is not None and event.meta.get("trial") == float(trial.tag):
            trial.pending.discard(event.observer)
            if not trial.pending and not trial.done:
                trial.done = time.monotonic()
        if event.kind is ChangeKind.DEAD:
            if event.member not in self.ever_killed:
                self.false_deaths.append((event.observer, event.member))
            victim = self.killed.get(event.member)
            if victim is not None:
                victim.pending.discard(event.observer)
                if not victim.pending and not victim.done:
                    victim.done = time.monotonic()

    def converged(self) -> bool:
        n = len(self.members)
        return all(m.statistics().alive == n for m, _ in self.members.values())

    def counters(self) -> dict[str, tuple[int, int]]:
        """Messages sent and periods run, per current member."""
        out = {}
        for name, (m, _) in self.members.items():
            s = m.statistics()
            out[name] = (s.messages_sent, s.periods)
        return out

    def message_rate(self, since: dict[str, tuple[int, int]]) -> float:
        """Messages per member per period since ``since``, over the members alive now
        (replacements count from their start; members killed meanwhile are left out)."""
        sent = periods = 0
        for name, (s, p) in self.counters().items():
            s0, p0 = since.get(name, (0, 0))
            sent += s - s0
            periods += p - p0
        return sent / max(1, periods)


class Consumers:
    """The views that act on liveness: a strategy's (hosting a member), a dispatcher's and
    ``lmteams status``'s (observers); when each first said a member is dead."""

    def __init__(self, views: dict[str, GossipMembership], period: float) -> None:
        self.views = views
        self.period = period
        self.dead_at: dict[str, dict[str, float]] = {role: {} for role in views}

    async def watch(self, role: str) -> None:
        view, seen = self.views[role], self.dead_at[role]
        while True:
            now = time.monotonic()
            for info in view.members():
                if info.state == "dead":
                    seen.setdefault(info.name, now)
            with anyio.move_on_after(self.period):
                await view.wait_changed()

    def dead_everywhere(self, victim: str) -> float | None:
        """When the last view said ``victim`` is dead (None while one has not)."""
        times = [seen.get(victim) for seen in self.dead_at.values()]
        return None if None in times else max(t for t in times if t is not None)

    async def settle(self, crashes: list[tuple[str, float]], limit: float) -> list[float]:
        """Seconds from each crash until every view said dead (inf past ``limit``)."""
        with anyio.move_on_after(limit):
            while any(self.dead_everywhere(v) is None for v, _ in crashes):  # noqa: ASYNC110
                await anyio.sleep(self.period / 4)
        return [
            math.inf if (at := self.dead_everywhere(v)) is None else at - start
            for v, start in crashes
        ]


@contextlib.asynccontextmanager
async def consumers(bus: Bus, team: str, config: SwimConfig) -> AsyncIterator[Consumers]:
    async with (
        open_membership(bus, team, config=config) as strategy,
        open_membership(bus, team, config=config) as dispatch,
        open_membership(bus, team, config=config) as status,
        anyio.create_task_group() as tg,
    ):
        await strategy.join("strategy-host", MemberFacts(device="sim"))  # an agent process
        seen = Consumers(
            {"strategy": strategy, "dispatch": dispatch, "status": status}, config.period_s
        )
        for role in seen.views:
            tg.start_soon(seen.watch, role)
        yield seen
        tg.cancel_scope.cancel()


async def disseminate(swarm: Swarm, trials: int, period: float, limit: float) -> list[float]:
    """Rounds per trial (inf for a trial that timed out)."""
    results: list[float] = []
    in_flight: list[Trial] = []
    started = 0
    max_in_flight = 4
    while len(results) < trials:
        now = time.monotonic()
        for trial in list(in_flight):
            if trial.done or now - trial.start > limit:
                elapsed = (trial.done - trial.start) if trial.done else math.inf
                results.append(math.ceil(elapsed / period) if trial.done else math.inf)
                in_flight.remove(trial)
                del swarm.spreading[trial.origin]
        if started < trials and len(in_flight) < max_in_flight:
            busy = {t.origin for t in in_flight}
            origin = random.choice([m for m in swarm.members if m not in busy])
            member, _ = swarm.members[origin]
            started += 1
            trial = Trial(started, origin, {m for m in swarm.members if m != origin})
            swarm.spreading[origin] = trial
            in_flight.append(trial)
            member.update_meta({"trial": float(started)})
            await anyio.sleep(2 * period)
        else:
            await anyio.sleep(period / 4)
    return results


async def detect(
    swarm: Swarm, trials: int, period: float, limit: float, *, concurrency: int, pause: float
) -> tuple[list[float], int]:
    """Seconds per detection trial (inf if not all survivors declared death in time); the
    victims and their crash times are in ``swarm.crashes``."""
    results: list[float] = []
    pauses = 0
    started = 0
    suspicion = swarm.config.suspicion_timeout(len(swarm.members))
    while len(results) < trials:
        now = time.monotonic()
        for victim, trial in list(swarm.killed.items()):
            trial.pending &= set(swarm.members)  # a survivor killed meanwhile is excused
            if not trial.pending and not trial.done:
                trial.done = now
            if trial.done or now - trial.start > limit:
                results.append(trial.done - trial.start if trial.done else math.inf)
                del swarm.killed[victim]
        if started < trials and len(swarm.killed) < concurrency:
            busy = set(swarm.killed)
            victim = random.choice([m for m in swarm.members if m not in busy])
            started += 1
            swarm.kill(victim)
            await swarm.spawn()
            # a slow member: paused for less than the suspicion timeout, it must not be killed
            slow, _ = random.choice(list(swarm.members.values()))
            pause_member(slow, pause * suspicion)
            pauses += 1
            await anyio.sleep(2 * period)
        else:
            await anyio.sleep(period / 4)
    return results, pauses


async def run_size(url: str, n: int, trials: int, pause: float) -> dict[str, Any]:
    period = period_for(n)
    config = SwimConfig(period_s=period)
    bound = bound_rounds(n)
    suspicion = config.suspicion_timeout(n)
    async with anyio.create_task_group() as tg:
        stop = anyio.Event()
        buses = [await tg.start(_bus, url, f"bench-{n}-{i}", stop) for i in range(CONNECTIONS)]
        swarm = Swarm(buses, f"g{n}", config, tg)
        t0 = time.monotonic()
        for _ in range(n):
            await swarm.spawn()
        with anyio.fail_after(60 + n * period):
            while not swarm.converged():  # noqa: ASYNC110 - polling every member's table
                await anyio.sleep(max(period, 0.2))
        join_s = time.monotonic() - t0
        # N members share this process's heap: a full collection would pause all of them
        # at once (separate agent processes never do), longer than a ping timeout
        gc.collect()
        gc.freeze()
        async with consumers(buses[0], swarm.team, config) as views:
            start = swarm.counters()
            rounds = await disseminate(swarm, trials, period, limit=4 * bound * period)
            msgs = swarm.message_rate(start)
            detection_limit = config.dead_timeout(n) + 6 * bound * period
            start = swarm.counters()
            detections, pauses = await detect(
                swarm, trials, period, detection_limit, concurrency=max(1, n // 32), pause=pause
            )
            msgs_churn = swarm.message_rate(start)  # with suspicions and refutations
            everywhere = await views.settle(swarm.crashes, detection_limit)
        swarm.crash_all()
        stop.set()
    within = sum(1 for r in rounds if r <= bound) / len(rounds)
    finite = [d for d in detections if math.isfinite(d)]
    everywhere_finite = [d for d in everywhere if math.isfinite(d)]
    return figure(
        f"gossip_within_bound_n{n}",
        within,
        1.0,
        0.99,
        n=n,
        trials=len(rounds),
        bound_rounds=bound,
        rounds_p50=pct(rounds, 0.5),
        rounds_p99=pct(rounds, 0.99),
        rounds_p99_over_log2n=round(pct(rounds, 0.99) / math.log2(n), 3),
        detect_s_p50=round(pct(finite, 0.5), 3),
        detect_s_p99=round(pct(finite, 0.99), 3) if len(finite) == len(detections) else None,
        detect_periods_p50=round(pct(finite, 0.5) / period, 1),
        detected=f"{len(finite)}/{len(detections)}",
        dead_everywhere_s_p50=round(pct(everywhere_finite, 0.5), 3),
        dead_everywhere_s_p99=(
            round(pct(everywhere_finite, 0.99), 3)
            if len(everywhere_finite) == len(everywhere)
            else None
        ),
        dead_everywhere_consumers="strategy (hosting), dispatch, status (observers)",
        msgs_per_member_round=round(msgs, 3),
        msgs_per_member_round_churn=round(msgs_churn, 3),
        false_deaths=len(swarm.false_deaths),
        slow_pauses=pauses,
        period_s=period,
        suspicion_s=round(suspicion, 3),
        dead_timeout_s=round(config.dead_timeout(n), 3),
        pause_fraction=pause,
        join_s=round(join_s, 2),
        mean_detect_s=round(statistics.fmean(finite), 3) if finite else None,
    )


async def _bus(url: str, name: str, stop: anyio.Event, *, task_status: TaskStatus[Bus]) -> None:
    async with open_bus(url, name=name) as bus:
        task_status.started(bus)
        await stop.wait()


async def main(sizes: list[int], trials: int, pause: float) -> None:
    quiet_logs()
    random.seed(1)
    gc.set_threshold(50_000, 20, 1000)  # fewer, cheaper young collections (see run_size)
    figures = []
    async with run_server() as server:
        for n in sizes:
            started = time.monotonic()
            fig = await run_size(server.url, n, trials, pause)
            print(f"# n={n} took {time.monotonic() - started:.0f}s: {fig}", file=sys.stderr)
            figures.append(fig)
    emit(
        figures,
        benchmark="gossip_convergence",
        baseline="1.0 = every dissemination trial within ceil(log2 N) + ceil(ln N) + 2 rounds",
        trials=trials,
        note="simulated members in one process over a real nats-server; period grows with N",
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 8, 32, 64 and 20 trials")
    parser.add_argument("--sizes", help="comma-separated N (default 8,16,32,64,128,256)")
    parser.add_argument("--trials", type=int, help="trials per N (default 100)")
    parser.add_argument(
        "--pause",
        type=float,
        default=0.5,
        help="slow members pause for this fraction of the suspicion timeout (default 0.5)",
    )
    args = parser.parse_args()
    if not 0 < args.pause < 1:
        parser.error("--pause must be in (0, 1): a slow member pauses less than the timeout")
    default_sizes = "8,32,64" if args.quick else "8,16,32,64,128,256"
    sizes = [int(s) for s in (args.sizes or default_sizes).split(",")]
    trials = args.trials or (20 if args.quick else 100)
    anyio.run(main, sizes, trials, args.pause)
