"""``lmteams top``: the team at a glance, redrawn every second, for people who would rather look.

One frame is the membership view ``lmteams status`` reads (members, state, device, load,
tokens/s, counts: the facts each agent gossips every heartbeat) plus the jobs running in the
team's jobs bucket. On a terminal it is a rich ``Live`` table; piped (or with ``--json``) it
is a frame per refresh, whole lines, for a program to read; ``--once`` prints one and exits.
"""

from __future__ import annotations

import time
from typing import Annotated

import anyio
import msgspec
import typer
from rich.console import Group
from rich.live import Live
from rich.table import Table

from lmteams.agents import MemberInfo
from lmteams.bus import Bus
from lmteams.cli._common import (
    JsonFlag,
    NatsOption,
    TeamOption,
    err,
    out,
    positive,
    run_async,
    team_subjects,
    until_signalled,
)
from lmteams.cli._status import NOBODY, STATE_STYLE, observe_team, rate
from lmteams.errors import BusError
from lmteams.gossip import GossipMembership
from lmteams.jobs import JobClient, JobRecord, JobStatus

__all__ = ("top",)

_COLUMNS = ("member", "state", "device", "model", "tok/s", "in flight", "served", "roles")
_NUMERIC = frozenset(("tok/s", "in flight", "served"))


class RunningJob(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    subtasks: int
    round: int
    running_s: float


class Frame(msgspec.Struct, frozen=True, kw_only=True):
    """What one redraw shows; ``--json`` prints it as it is."""

    team: str
    live: int
    tasks_in_flight: int  # model calls the live members report running
    tokens_per_s: float  # what the live members advertise, together
    served: int
    jobs_in_flight: int | None  # None: the jobs bucket could not be read
    jobs: tuple[RunningJob, ...]
    members: tuple[MemberInfo, ...]


class _Sampler:
    """Reads a frame from an open view and the team's jobs bucket (opened once)."""

    def __init__(self, bus: Bus, view: GossipMembership, team: str) -> None:
        self._view = view
        self._team = team
        self._jobs = JobClient(bus, team)

    async def frame(self) -> Frame:
        members = self._view.members()
        live = [m for m in members if m.live]
        running = await self._running_jobs()
        return Frame(
            team=self._team,
            live=len(live),
            tasks_in_flight=sum(m.facts.in_flight for m in live),
            tokens_per_s=sum(m.facts.tokens_per_s for m in live if m.available),
            served=sum(m.facts.served for m in members),
            jobs_in_flight=None if running is None else len(running),
            jobs=running or (),
            members=members,
        )

    async def _running_jobs(self) -> tuple[RunningJob, ...] | None:
        try:
            records = await self._jobs.jobs()
        except (BusError, TimeoutError):  # no JetStream, or not this credential's to read
            return None
        now = time.time()
        return tuple(_running(r, now) for r in records if r.status is JobStatus.RUNNING)


def _running(record: JobRecord, now: float) -> RunningJob:
    return RunningJob(
        id=record.spec.id,
        subtasks=len(record.spec.graph.subtasks),
        round=record.round,
        running_s=max(0.0, now - record.admitted_at),
    )


def _render(frame: Frame) -> Group:
    jobs = "?" if frame.jobs_in_flight is None else str(frame.jobs_in_flight)
    title = (
        f"team {frame.team}: {frame.live} live of {len(frame.members)} · tasks in flight "
        f"{frame.tasks_in_flight} · jobs running {jobs} · {frame.tokens_per_s:.1f} tok/s"
    )
    table = Table(title=title, title_justify="left")
    for name in _COLUMNS:
        table.add_column(name, justify="right" if name in _NUMERIC else "left")
    for m in frame.members:
        facts = m.facts
        state = m.state if facts.serving == "serving" or not m.live else "draining"
        table.add_row(
            m.name, f"[{STATE_STYLE[m.state]}]{state}[/]", facts.device, facts.model,
            rate(facts.tokens_per_s), str(facts.in_flight), str(facts.served),
            ",".join(facts.roles),
        )  # fmt: skip
    if not frame.jobs:
        return Group(table)
    running = Table(title="jobs running", title_justify="left")
    for name in ("job", "subtasks", "round", "running"):
        running.add_column(name, justify="left" if name == "job" else "right")
    for job in frame.jobs:
        running.add_row(job.id, str(job.subtasks), str(job.round), f"{job.running_s:.0f}s")
    return Group(table, running)


def _json(frame: Frame) -> str:
    return msgspec.json.encode(frame).decode()


async def _refresh(sampler: _Sampler, *, json_out: bool, every: float) -> None:
    """Redraw every ``every`` seconds until Ctrl-C or SIGTERM, which end it cleanly."""
    async with until_signalled():
        if out.is_terminal and not json_out:
            with Live(_render(await sampler.frame()), console=out, auto_refresh=False) as live:
                while True:
                    await anyio.sleep(every)
                    live.update(_render(await sampler.frame()), refresh=True)
        else:  # a pipe or --json: a frame per refresh, whole lines
            while True:
                frame = await sampler.frame()
                if json_out:
                    typer.echo(_json(frame))
                else:
                    out.print(_render(frame))
                await anyio.sleep(every)


def top(
    *,
    team: TeamOption = "default",
    nats: NatsOption = None,
    json_out: JsonFlag = False,
    once: Annotated[
        bool, typer.Option("--once", help="Print one frame (after --wait) and exit.")
    ] = False,
    every: Annotated[float, typer.Option(callback=positive, help="Seconds between redraws.")] = 1.0,
    wait: Annotated[
        float,
        typer.Option(callback=positive, help="With --once, seconds to spend asking members first."),
    ] = 1.0,
) -> None:
    """Watch the team live: members, state, device, load, tokens/s, tasks and jobs in flight."""
    team_subjects(team)

    async def main() -> Frame | None:
        async with observe_team(team, nats, wait=wait if once else every) as (bus, view):
            sampler = _Sampler(bus, view, team)
            if not once:
                await _refresh(sampler, json_out=json_out, every=every)
                return None
            await anyio.sleep(wait)  # a few observer syncs: different members, merged
            return await sampler.frame()

    frame = run_async(main)
    if frame is None:
        return
    if json_out:
        typer.echo(_json(frame))
        return
    if not frame.members:
        err.print(NOBODY.format(team=team))
        raise typer.Exit(code=1)
    out.print(_render(frame))
