"""``lmteams status``: the team's membership view, the one its strategies and dispatch read.

It opens a ``GossipMembership`` that hosts nobody (an observer, which changes nothing it
looks at) and prints what that view holds: a table for people, JSON for programs, and with
``--watch`` the same live, redrawn on every change (one JSON line per change when piped).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Annotated

import anyio
import msgspec
import typer
from rich.live import Live
from rich.table import Table

from lmteams.agents import MemberInfo, resolve_url
from lmteams.bus import Bus, BusAuth, open_bus
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
from lmteams.gossip import GossipMembership, SwimConfig, fingerprint, open_membership

__all__ = ("status", "observe_team", "NOBODY", "STATE_STYLE", "rate")

STATE_STYLE = {"alive": "green", "suspect": "yellow", "dead": "red", "left": "dim"}
_COLUMNS = ("member", "state", "inc", "device", "model", "tok/s", "load", "served", "roles",
            "key", "flag")  # fmt: skip
_NUMERIC = frozenset(("inc", "tok/s", "load", "served"))
_SAMPLES = 3  # syncs with (likely different) members within --wait
NOBODY = (
    "no gossip members answered in team {team!r} (no agents running, or this credential "
    "may not ask the team's gossip)"
)


def rate(value: float) -> str:
    return f"{value:.1f}" if value else ""


def _table(team: str, members: tuple[MemberInfo, ...]) -> Table:
    live = sum(m.live for m in members)
    table = Table(title=f"team {team}: {live} live of {len(members)}", title_justify="left")
    for name in _COLUMNS:
        table.add_column(name, justify="right" if name in _NUMERIC else "left")
    for m in members:
        facts = m.facts
        state = m.state if facts.serving == "serving" or not m.live else "draining"
        table.add_row(
            m.name,
            f"[{STATE_STYLE[m.state]}]{state}[/]",
            str(m.incarnation),
            facts.device,
            facts.model,
            rate(facts.tokens_per_s),
            str(facts.in_flight),
            str(facts.served),
            ",".join(facts.roles),
            fingerprint(facts.public_key),
            "[red]key conflict[/]" if m.key_conflict else "",
        )
    return table


@contextlib.asynccontextmanager
async def observe_team(
    team: str, nats: str | None, *, wait: float
) -> AsyncIterator[tuple[Bus, GossipMembership]]:
    """The bus and an observer's membership view of the team (``status``, ``top``), syncing
    with ``_SAMPLES`` members per ``wait`` seconds; it hosts nobody and changes nothing."""
    url = resolve_url(nats, team)
    async with (
        open_bus(url, name="status", **BusAuth.from_env().options()) as bus,
        open_membership(bus, team, config=SwimConfig(period_s=wait / _SAMPLES)) as view,
    ):
        yield bus, view


def _json(team: str, members: tuple[MemberInfo, ...]) -> str:
    return msgspec.json.encode({"team": team, "members": members}).decode()


async def _watch(view: GossipMembership, team: str, *, json_out: bool, every: float) -> None:
    """Redraw on every change of the view (and at least every ``every`` seconds) until
    Ctrl-C or SIGTERM, which end it cleanly."""
    async with until_signalled():
        if out.is_terminal and not json_out:
            with Live(_table(team, view.members()), console=out, auto_refresh=False) as live:
                while True:
                    with anyio.move_on_after(every):
                        await view.wait_changed()
                    live.update(_table(team, view.members()), refresh=True)
        else:  # a pipe or --json: a line per change, for a program to read as it comes
            shown: tuple[MemberInfo, ...] | None = None
            while True:
                members = view.members()
                if members != shown:
                    shown = members
                    typer.echo(_json(team, members))
                with anyio.move_on_after(every):
                    await view.wait_changed()


def status(
    *,
    team: TeamOption = "default",
    nats: NatsOption = None,
    json_out: JsonFlag = False,
    wait: Annotated[
        float,
        typer.Option(
            callback=positive,
            help="Seconds to spend asking members before printing; with --watch, the "
            "longest time between redraws.",
        ),
    ] = 1.0,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            help="Keep the view open and redraw it on every change (one JSON line per "
            "change with --json or when piped); Ctrl-C ends it.",
        ),
    ] = False,
) -> None:
    """Show the team's members as its membership view sees them: state, device, load, key."""
    team_subjects(team)

    async def main() -> tuple[MemberInfo, ...]:
        async with observe_team(team, nats, wait=wait) as (_, view):
            if watch:
                await _watch(view, team, json_out=json_out, every=wait)
                return view.members()
            await anyio.sleep(wait)  # a few observer syncs: different members, merged
            return view.members()

    members = run_async(main)
    if watch:
        return
    if json_out:
        typer.echo(_json(team, members))
        return
    if not members:
        err.print(NOBODY.format(team=team))
        raise typer.Exit(code=1)
    out.print(_table(team, members))
