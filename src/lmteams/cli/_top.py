"""``lmteams top``: the team at a glance, redrawn every second, for people who would rather look.

One frame is the membership view ``lmteams status`` reads (members, state, device, load,
tokens/s, counts: the facts each agent gossips every heartbeat) plus the jobs running in the
team's jobs bucket, and with ``--metrics`` what the agents' Prometheus endpoints measured:
the tokens/s an agent advertises is its device's rate, the one measured here is what it
generated between two scrapes. On a terminal it is a rich ``Live`` table; piped (or with
``--json``) it is a frame per refresh, whole lines, for a program to read; ``--once`` prints
one and exits.
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
from rich.text import Text

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
from lmteams.cli._scrape import AgentSeries, Endpoint, Scrape, metrics_url, scrape_all
from lmteams.cli._status import NOBODY, STATE_STYLE, observe_team, rate
from lmteams.errors import BusError
from lmteams.gossip import GossipMembership
from lmteams.jobs import JobClient, JobRecord, JobStatus

__all__ = ("top",)

_COLUMNS = ("member", "state", "device", "model", "tok/s", "adv tok/s", "in flight", "queue",
            "served", "tasks", "roles")  # fmt: skip
_NUMERIC = frozenset(("tok/s", "adv tok/s", "in flight", "queue", "served"))
_UNSEEN = "unseen"  # scraped, but not (yet) in the membership view


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
    measured_tokens_per_s: float | None  # what the scraped agents generated; None: not known
    served: int
    jobs_in_flight: int | None  # None: the jobs bucket could not be read
    jobs: tuple[RunningJob, ...]
    members: tuple[MemberInfo, ...]
    metrics: tuple[AgentSeries, ...] = ()  # per agent, from --metrics, with measured tok/s
    endpoints: tuple[Endpoint, ...] = ()  # each --metrics URL: ok, unreachable or malformed


class _Rates:
    """Measured tokens/s: an agent's tokens-out counter between two of its scrapes."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, float]] = {}  # agent: (monotonic time, tokens out)

    def measure(self, series: AgentSeries, at: float) -> AgentSeries:
        last = self._last.get(series.agent)
        self._last[series.agent] = (at, series.tokens_out)
        if last is None or at <= last[0]:
            return series
        then, before = last
        made = series.tokens_out - before
        if made < 0:  # the counter went back: a new process, counting from 0
            made = series.tokens_out
        return msgspec.structs.replace(series, tokens_per_s=made / (at - then))


class _Sampler:
    """Reads a frame from an open view and the team's jobs bucket (opened once)."""

    def __init__(
        self, bus: Bus, view: GossipMembership, team: str, urls: tuple[str, ...] = ()
    ) -> None:
        self._view = view
        self._team = team
        self._jobs = JobClient(bus, team)
        self._urls = urls
        self._rates = _Rates()

    async def prime(self) -> None:
        """A first scrape, so that the next frame has a measured rate."""
        self._measure(await scrape_all(self._urls, self._team))

    async def frame(self) -> Frame:
        scrapes = await scrape_all(self._urls, self._team)
        members = self._view.members()
        live = [m for m in members if m.live]
        running = await self._running_jobs()
        metrics = self._measure(scrapes)
        rates = [s.tokens_per_s for s in metrics if s.tokens_per_s is not None]
        return Frame(
            team=self._team,
            live=len(live),
            tasks_in_flight=sum(m.facts.in_flight for m in live),
            tokens_per_s=sum(m.facts.tokens_per_s for m in live if m.available),
            measured_tokens_per_s=sum(rates) if rates else None,
            served=sum(m.facts.served for m in members),
            jobs_in_flight=None if running is None else len(running),
            jobs=running or (),
            members=members,
            metrics=metrics,
            endpoints=tuple(s.endpoint for s in scrapes),
        )

    def _measure(self, scrapes: tuple[Scrape, ...]) -> tuple[AgentSeries, ...]:
        return tuple(self._rates.measure(s, scrape.at) for scrape in scrapes for s in scrape.series)

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
    measured = "" if frame.measured_tokens_per_s is None else (
        f"{frame.measured_tokens_per_s:.1f} tok/s measured, "
    )  # fmt: skip
    title = (
        f"team {frame.team}: {frame.live} live of {len(frame.members)} · tasks in flight "
        f"{frame.tasks_in_flight} · jobs running {jobs} · {measured}"
        f"{frame.tokens_per_s:.1f} tok/s advertised"
    )
    table = Table(title=title, title_justify="left")
    for name in _COLUMNS:
        table.add_column(name, justify="right" if name in _NUMERIC else "left")
    scraped = {s.agent: s for s in frame.metrics}
    for m in frame.members:
        facts, s = m.facts, scraped.pop(m.name, None)
        state = m.state if facts.serving == "serving" or not m.live else "draining"
        table.add_row(
            m.name, f"[{STATE_STYLE[m.state]}]{state}[/]", facts.device, facts.model,
            *_measured(s, rate(facts.tokens_per_s), facts.in_flight), str(facts.served),
            _tasks(s), ",".join(facts.roles),
        )  # fmt: skip
    for s in scraped.values():  # an agent that serves metrics but is no member we know
        table.add_row(
            s.agent, f"[dim]{_UNSEEN}[/]", "", "", *_measured(s, "", None), "", _tasks(s), ""
        )
    parts: list[Table | Text] = [table]
    parts += [_endpoint(e) for e in frame.endpoints if e.status != "ok"]
    if frame.jobs:
        parts.append(_jobs(frame.jobs))
    return Group(*parts)


def _measured(s: AgentSeries | None, advertised: str, in_flight: int | None) -> tuple[str, ...]:
    """tok/s, adv tok/s, in flight and queue; a scrape's gauges over the gossiped load."""
    if s is None:
        return "", advertised, "" if in_flight is None else str(in_flight), ""
    flight = s.in_flight if s.in_flight is not None else in_flight
    return (
        "" if s.tokens_per_s is None else f"{s.tokens_per_s:.1f}",
        advertised,
        "" if flight is None else str(flight),
        "" if s.mailbox is None else str(s.mailbox),
    )


def _tasks(s: AgentSeries | None) -> str:
    """Tasks by outcome, the ones that happened: ``ok 3 error 1``."""
    if s is None:
        return ""
    return " ".join(f"{outcome} {n}" for outcome, n in s.tasks.items() if n)


def _endpoint(e: Endpoint) -> Text:
    return Text(f"metrics {e.url}: {e.status} ({e.error})", style="red")


def _jobs(jobs: tuple[RunningJob, ...]) -> Table:
    running = Table(title="jobs running", title_justify="left")
    for name in ("job", "subtasks", "round", "running"):
        running.add_column(name, justify="left" if name == "job" else "right")
    for job in jobs:
        running.add_row(job.id, str(job.subtasks), str(job.round), f"{job.running_s:.0f}s")
    return running


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
    metrics: Annotated[
        list[str] | None,
        typer.Option(
            "--metrics",
            metavar="URL[,URL...]",
            help="Agents' Prometheus endpoints (from --metrics-port; host:port is enough), "
            "scraped every refresh for measured tok/s, tasks by outcome and queue.",
        ),
    ] = None,
) -> None:
    """Watch the team live: members, state, device, load, tokens/s, tasks and jobs in flight.

    With --metrics, the tokens/s each agent generated between two scrapes (with --once,
    over --wait) beside the rate it advertises, its tasks by outcome and its mailbox; an
    endpoint that cannot be read is shown as unreachable or malformed.
    """
    team_subjects(team)
    urls = _urls(metrics or [])

    async def main() -> Frame | None:
        async with observe_team(team, nats, wait=wait if once else every) as (bus, view):
            sampler = _Sampler(bus, view, team, urls)
            if not once:
                await _refresh(sampler, json_out=json_out, every=every)
                return None
            await sampler.prime()
            await anyio.sleep(wait)  # a few observer syncs: different members, merged
            return await sampler.frame()

    frame = run_async(main)
    if frame is None:
        return
    if json_out:
        typer.echo(_json(frame))
        return
    if not frame.members and not frame.metrics:
        err.print(NOBODY.format(team=team))
        raise typer.Exit(code=1)
    out.print(_render(frame))


def _urls(values: list[str]) -> tuple[str, ...]:
    """Each --metrics value, comma-separated or repeated, as a URL to GET; once each."""
    try:
        urls = (metrics_url(v) for value in values for v in value.split(",") if v.strip())
        return tuple(dict.fromkeys(urls))
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--metrics") from None
