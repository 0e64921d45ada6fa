"""``lmteams job submit | status | list | cancel``: thin verbs over ``lmteams.jobs.JobClient``.

A job file is checked whole before anything connects (``new_job``: the graph, its templates
and every option), so a bad one exits 2 with one line and the team never sees it. ``submit
--wait`` follows the job on the team's board while it runs: a redrawn table on a terminal,
one plain line per subtask change otherwise (a log a script or a person can read later).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import anyio
import msgspec
import typer
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from lmteams.agents import open_team
from lmteams.bus import BusAuth, StreamSettings
from lmteams.cli._agents import (
    CredsOption,
    NkeySeedOption,
    ReplicasOption,
    TlsCaOption,
    UserOption,
)
from lmteams.cli._common import (
    JsonFlag,
    NatsOption,
    TeamOption,
    choice,
    err,
    fail,
    out,
    positive,
    run_async,
    team_subjects,
    token,
)
from lmteams.errors import LmteamsError
from lmteams.jobs import (
    JobClient,
    JobRecord,
    JobResult,
    JobStatus,
    JobView,
    SubtaskState,
    SubtaskStatus,
    new_job,
)

__all__ = ("job_app", "summarize", "wait_showing")

T = TypeVar("T")

job_app = typer.Typer(
    name="job", help="Give a team a task graph to work through together, and follow it."
)

_STYLE = {"pending": "dim", "ready": "cyan", "claimed": "yellow", "done": "green", "failed": "red"}
_STYLE |= {"running": "yellow", "cancelled": "dim"}  # a job's statuses beside a subtask's
_COLUMNS = ("subtask", "status", "agent", "attempt", "tokens")
_ARCHITECTURES = ("centralized", "decentralized")
_SCHEDULINGS = ("async", "rounds")
_CHOICES = ("first", "model")
_PLACEMENTS = ("greedy", "preassigned")


def _client(
    nats: str | None, team: str, auth: BusAuth, replicas: int = 1
) -> AbstractAsyncContextManager[JobClient]:
    """A job client on the team's bus; it only finds the operator's streams (update=False)."""
    streams = StreamSettings(replicas=replicas)
    return open_team(JobClient, nats, team, name="client", streams=streams, **auth.options())


def _with_client(
    nats: str | None, team: str, auth: BusAuth, use: Callable[[JobClient], Awaitable[T]]
) -> T:
    async def main() -> T:
        async with _client(nats, team, auth) as client:
            return await use(client)

    return run_async(main)


# --- what a subtask row shows ------------------------------------------------------------------


def _styled(status: str) -> str:
    style = _STYLE.get(status)
    return f"[{style}]{status}[/]" if style else escape(status)


def _row(s: SubtaskState, ready: bool) -> tuple[str, str, str, str, str]:
    status = "ready" if ready else s.status.value
    who = s.agent if s.status is SubtaskStatus.DONE else s.holder
    if s.backups:
        who += f" (+{','.join(s.backups)})"
    tokens = f"{s.tokens_in}/{s.tokens_out}" if s.status is SubtaskStatus.DONE else ""
    return s.id, status, who, str(s.attempt) if s.attempt else "", tokens


def _rows(view: JobView) -> list[tuple[str, str, str, str, str]]:
    ready = set(view.ready())
    return [_row(s, s.index in ready) for s in view.states]


def _headline(view: JobView) -> str:
    record = view.record
    options = record.spec.options
    done = len(view.done())
    return (
        f"job {record.spec.id} ({record.spec.graph.name}): {record.status.value}, "
        f"{options.architecture}/{options.scheduling}, {done}/{len(view.states)} done"
    )


def _table(view: JobView) -> Table:
    table = Table(title=escape(_headline(view)), title_justify="left")
    for name in _COLUMNS:
        table.add_column(name, justify="right" if name in {"attempt", "tokens"} else "left")
    for row in _rows(view):
        table.add_row(escape(row[0]), _styled(row[1]), *map(escape, row[2:]))
    return table


class _Follower:
    """The job shown as it changes: a redrawn table on a terminal, else one plain line per
    subtask change (a log a script or a person reads later)."""

    def __init__(self) -> None:
        self._shown: dict[str, tuple[str, ...]] = {}
        self._live = Live(console=out, auto_refresh=False) if out.is_terminal else None

    def __enter__(self) -> _Follower:
        if self._live is not None:
            self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.stop()

    def show(self, view: JobView) -> None:
        if self._live is not None:
            self._live.update(_table(view), refresh=True)
            return
        for row in _rows(view):
            if self._shown.get(row[0]) != row:
                self._shown[row[0]] = row
                subtask, status, who, attempt, tokens = row
                facts = [f"{subtask} {status}", who]
                facts += [f"attempt {attempt}" if attempt else ""]
                facts += [f"tokens {tokens}" if tokens else ""]
                typer.echo(" ".join(f for f in facts if f))


async def wait_showing(client: JobClient, job_id: str, timeout: float) -> JobResult:
    """Wait for the result while the board's views are shown; then show the job's last state
    (the result may come before the watch's first view)."""
    with _Follower() as follower:
        async with anyio.create_task_group() as tg:

            async def follow() -> None:
                async with client.watch_job(job_id) as views:
                    async for view in views:
                        follower.show(view)

            tg.start_soon(follow)
            # the result is kept in its stream: waiting after publishing misses nothing
            result = await client.wait_job(job_id, timeout=timeout)
            tg.cancel_scope.cancel()
        final = await client.job(job_id)
        if final is not None:
            follower.show(final)
    return result


def summarize(result: JobResult) -> None:
    f = result.figures
    line = f"job {result.job_id} {result.status.value}"
    if f is not None:
        line += (
            f" in {f.makespan_s:.2f}s on {f.agents} agent(s): speedup {f.speedup:.2f}x, "
            f"work/span bound {f.work_span_bound:.2f}x ({f.bound_fraction:.0%} of it), "
            f"Amdahl {f.amdahl_bound:.2f}x; {f.tokens_out} tokens out"
        )
    if result.error:
        line += f": {result.error}"
    err.print(escape(line), highlight=False)
    for subtask, output in result.outputs.items():
        if len(result.outputs) > 1:
            out.print(f"[bold]{escape(subtask)}[/bold]", highlight=False)
        typer.echo(output)


# --- verbs -----------------------------------------------------------------------------------


@job_app.command("submit")
def job_submit(
    file: Annotated[Path, typer.Argument(help="The job: a task graph file (.toml or .json).")],
    *,
    architecture: Annotated[
        str | None,
        typer.Option(help=f"Who decides who runs what: {'|'.join(_ARCHITECTURES)}."),
    ] = None,
    scheduling: Annotated[
        str | None,
        typer.Option(help=f"{'|'.join(_SCHEDULINGS)}: rounds is the paper's barrier."),
    ] = None,
    agents: Annotated[
        int | None, typer.Option(min=0, help="How many agents take part (0: all available).")
    ] = None,
    backups: Annotated[
        bool | None,
        typer.Option(
            "--backups/--no-backups", help="Let idle agents run backup copies of stragglers."
        ),
    ] = None,
    lease: Annotated[
        float | None,
        typer.Option(callback=positive, help="Seconds a claim lasts without a renewal."),
    ] = None,
    choose: Annotated[
        str | None,
        typer.Option(
            help=f"How decentralized agents pick a subtask: {'|'.join(_CHOICES)} "
            "(model: ask the agent's model, which costs tokens)."
        ),
    ] = None,
    placement: Annotated[
        str | None,
        typer.Option(
            help=f"How a centralized coordinator places subtasks: {'|'.join(_PLACEMENTS)} "
            "(preassigned: the paper's lists, dealt before the run)."
        ),
    ] = None,
    job_id: Annotated[
        str | None, typer.Option("--id", help="Job id (default: a fresh one).")
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Follow the job live and print its result.")
    ] = False,
    timeout: Annotated[
        float, typer.Option(callback=positive, help="Seconds to wait with --wait.")
    ] = 3600.0,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the id, or with --wait the result, as JSON.")
    ] = False,
    nats: NatsOption = None,
    team: TeamOption = "default",
    replicas: ReplicasOption = 1,
    nkey_seed: NkeySeedOption = None,
    user: UserOption = None,
    creds: CredsOption = None,
    tls_ca: TlsCaOption = None,
) -> None:
    """Submit a job to the team; with --wait, follow it and print its result.

    The file's job table says how it runs; options given here override it. The whole job
    is checked before anything connects: a bad one exits 2 naming the problem.
    """
    team_subjects(team)
    for value, known, option in (
        (architecture, _ARCHITECTURES, "--architecture"),
        (scheduling, _SCHEDULINGS, "--scheduling"),
        (choose, _CHOICES, "--choose"),
        (placement, _PLACEMENTS, "--placement"),
    ):
        if value is not None:
            choice(value, known, option)
    given = {
        "architecture": architecture,
        "scheduling": scheduling,
        "choose": choose,
        "placement": placement,
        "agents": agents,
        "backups": backups,
        "lease_s": lease,
    }
    overrides: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    try:
        spec = new_job(file, job_id=job_id, submitted_by="cli", **overrides)
    except LmteamsError as exc:
        raise fail(exc, code=2) from None
    auth = BusAuth.from_env(nkey_seed=nkey_seed, user=user, creds=creds, tls_ca=tls_ca)

    async def main() -> JobResult | None:
        async with _client(nats, team, auth, replicas) as client:
            await client.publish_job(spec)
            if not wait:
                return None
            if not json_out:
                err.print(
                    f"job {escape(spec.id)} submitted to team {escape(team)}", highlight=False
                )
            if json_out:
                return await client.wait_job(spec.id, timeout=timeout)
            return await wait_showing(client, spec.id, timeout)

    result = run_async(main)
    if result is None:
        typer.echo(msgspec.json.encode({"job_id": spec.id}).decode() if json_out else spec.id)
        return
    if json_out:
        typer.echo(msgspec.json.encode(result).decode())
    else:
        summarize(result)
    if result.status is not JobStatus.DONE:
        raise typer.Exit(code=1)


JobIdArgument = Annotated[str, typer.Argument(help="The job's id (see `lmteams job list`).")]


@job_app.command("status")
def job_status(
    job_id: JobIdArgument,
    *,
    json_out: JsonFlag = False,
    nats: NatsOption = None,
    team: TeamOption = "default",
) -> None:
    """Show one job: every subtask's state, who holds it, and its result once it has one."""
    team_subjects(team)
    token(job_id, "job id", "ID")

    async def read(client: JobClient) -> tuple[JobView | None, JobResult | None]:
        return await client.job(job_id), await client.job_result(job_id)

    view, result = _with_client(nats, team, BusAuth.from_env(), read)
    if view is None and result is None:
        raise fail(LmteamsError(f"team {team!r} holds no job {job_id!r}"))
    if json_out:
        shown = {
            "job": view.record if view else None,
            "subtasks": view.states if view else [],
            "tallies": view.tallies if view else {},
            "result": result,
        }
        typer.echo(msgspec.json.encode(shown).decode())
        return
    if view is not None:
        out.print(_table(view))
    if result is not None:
        summarize(result)


def _listed(r: JobRecord) -> dict[str, object]:
    """One job of ``list --json``: what it is and where it stands, without its whole graph."""
    return {
        "id": r.spec.id,
        "graph": r.spec.graph.name,
        "status": r.status.value,
        "architecture": r.spec.options.architecture,
        "scheduling": r.spec.options.scheduling,
        "subtasks": len(r.spec.graph.subtasks),
        "participants": r.participants,
        "admitted_at": r.admitted_at,
        "ended_at": r.ended_at,
        "error": r.error,
    }


@job_app.command("list")
def job_list(
    *,
    json_out: JsonFlag = False,
    nats: NatsOption = None,
    team: TeamOption = "default",
) -> None:
    """List the team's jobs, oldest first."""
    team_subjects(team)
    records = _with_client(nats, team, BusAuth.from_env(), lambda client: client.jobs())
    if json_out:
        typer.echo(msgspec.json.encode([_listed(r) for r in records]).decode())
        return
    if not records:
        err.print(f"team {escape(team)} holds no jobs", highlight=False)
        return
    table = Table(title=f"team {escape(team)}: {len(records)} job(s)", title_justify="left")
    for name in ("job", "graph", "status", "architecture", "subtasks", "agents", "admitted"):
        table.add_column(name, justify="right" if name in {"subtasks", "agents"} else "left")
    for r in records:
        options = r.spec.options
        table.add_row(
            escape(r.spec.id),
            escape(r.spec.graph.name),
            _styled(r.status.value),
            f"{options.architecture}/{options.scheduling}",
            str(len(r.spec.graph.subtasks)),
            str(len(r.participants)),
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.admitted_at)),
        )
    out.print(table)


@job_app.command("cancel")
def job_cancel(
    job_id: JobIdArgument,
    *,
    reason: Annotated[str, typer.Option(help="Why: kept in the job's record.")] = "",
    nats: NatsOption = None,
    team: TeamOption = "default",
) -> None:
    """Ask the team to stop a job; it ends cancelled, with a result like any other."""
    team_subjects(team)
    token(job_id, "job id", "ID")

    async def cancel(client: JobClient) -> bool:
        await client.cancel_job(job_id, reason)
        return await client.job(job_id) is not None

    known = _with_client(nats, team, BusAuth.from_env(), cancel)
    if not known:
        err.print(
            f"[yellow]warning:[/yellow] team {escape(team)} holds no job {escape(job_id)} "
            "(yet); the cancel was sent anyway",
            highlight=False,
        )
    typer.echo(job_id)
