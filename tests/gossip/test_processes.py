"""Gossip members in separate processes, killed and stopped for real (SIGKILL, SIGSTOP).

The process under test joins the same team as in-process survivors that record what they
see. A killed process vanishes from the bus at once; a stopped one keeps its connection and
answers nothing until it is resumed, then reads its backlog and refutes.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

from lmteams.bus import Bus, EmbeddedServer
from lmteams.gossip import ChangeKind, MemberEvent, MemberState, SwimConfig, SwimMember, open_member
from lmteams.testing import wait_until

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs POSIX signals")

TEAM = "gp"
SCRIPT = Path(__file__).with_name("member_proc.py")
PERIOD = 0.1


class Recorder:
    def __init__(self) -> None:
        self.events: list[MemberEvent] = []

    def __call__(self, event: MemberEvent) -> None:
        self.events.append(event)

    def about(self, member: str, kind: ChangeKind) -> set[str]:
        return {e.observer for e in self.events if e.member == member and e.kind is kind}


@contextlib.contextmanager
def member_process(url: str, name: str, suspicion_mult: float) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), url, TEAM, name, str(PERIOD), str(suspicion_mult)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "LMTEAMS_LOG_LEVEL": "warning"},
    )
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


async def ready(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    with anyio.fail_after(30):
        line = await anyio.to_thread.run_sync(proc.stdout.readline)
    assert line.strip() == "ready", f"member process did not start: {line!r}"


@contextlib.asynccontextmanager
async def survivors(
    bus: Bus, n: int, suspicion_mult: float, recorder: Recorder
) -> AsyncIterator[list[SwimMember]]:
    config = SwimConfig(period_s=PERIOD, suspicion_mult=suspicion_mult)
    async with contextlib.AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(
                open_member(bus, TEAM, f"s{i}", config=config, on_event=recorder)
            )
            for i in range(n)
        ]


def everyone_sees(team: list[SwimMember], name: str, state: MemberState) -> bool:
    records = [m.member(name) for m in team]
    return all(r is not None and r.state is state for r in records)


async def test_killed_process_is_declared_dead_by_every_survivor(
    bus: Bus, nats_server: EmbeddedServer
) -> None:
    recorder = Recorder()
    async with survivors(bus, 5, 4.0, recorder) as team:
        with member_process(nats_server.url, "doomed", 4.0) as proc:
            await ready(proc)
            await wait_until(lambda: everyone_sees(team, "doomed", MemberState.ALIVE), timeout=15)
            os.kill(proc.pid, signal.SIGKILL)
            await wait_until(lambda: everyone_sees(team, "doomed", MemberState.DEAD), timeout=20)
    assert recorder.about("doomed", ChangeKind.DEAD) == {m.id for m in team}


async def test_stopped_process_is_suspected_then_refutes_when_resumed(
    bus: Bus, nats_server: EmbeddedServer
) -> None:
    recorder = Recorder()
    async with survivors(bus, 5, 4.0, recorder) as team:
        with member_process(nats_server.url, "sleeper", 4.0) as proc:
            await ready(proc)
            await wait_until(lambda: everyone_sees(team, "sleeper", MemberState.ALIVE), timeout=15)
            before = max(m.member("sleeper").incarnation for m in team)  # type: ignore[union-attr]
            os.kill(proc.pid, signal.SIGSTOP)
            # paused past the suspicion timeout (0.4 s): suspected, then confirmed dead
            await wait_until(lambda: everyone_sees(team, "sleeper", MemberState.DEAD), timeout=20)
            assert recorder.about("sleeper", ChangeKind.SUSPECT)
            os.kill(proc.pid, signal.SIGCONT)
            await wait_until(lambda: everyone_sees(team, "sleeper", MemberState.ALIVE), timeout=20)
            after = [m.member("sleeper").incarnation for m in team]  # type: ignore[union-attr]
    assert min(after) > before
    assert recorder.about("sleeper", ChangeKind.ALIVE) == {m.id for m in team}


async def test_process_stopped_shorter_than_suspicion_is_never_declared_dead(
    bus: Bus, nats_server: EmbeddedServer
) -> None:
    recorder = Recorder()
    mult = 20.0  # suspicion timeout 2 s
    async with survivors(bus, 5, mult, recorder) as team:
        with member_process(nats_server.url, "napper", mult) as proc:
            await ready(proc)
            await wait_until(lambda: everyone_sees(team, "napper", MemberState.ALIVE), timeout=15)
            os.kill(proc.pid, signal.SIGSTOP)
            await anyio.sleep(0.5)  # the fault itself: a quarter of the suspicion timeout
            os.kill(proc.pid, signal.SIGCONT)
            # modelled time: each survivor runs enough periods for any accusation made during
            # the stop to have expired into a death, had the member not refuted it
            config = SwimConfig(period_s=PERIOD, suspicion_mult=mult)
            settle = 2 * math.ceil(config.dead_timeout(len(team) + 1) / PERIOD)
            ran = {m.id: m.statistics().periods for m in team}
            await wait_until(
                lambda: all(m.statistics().periods >= ran[m.id] + settle for m in team),
                timeout=60,
            )
            await wait_until(lambda: everyone_sees(team, "napper", MemberState.ALIVE), timeout=10)
    assert not recorder.about("napper", ChangeKind.DEAD)
