"""``lmteams status``: the team's members as gossip sees them, in a table or as JSON."""

from __future__ import annotations

from typing import Annotated

import msgspec
import typer
from rich.table import Table

from lmteams.agents import resolve_url
from lmteams.bus import BusAuth, open_bus
from lmteams.cli._common import (
    JsonFlag,
    NatsOption,
    TeamOption,
    err,
    out,
    positive,
    run_async,
    team_subjects,
)
from lmteams.gossip import MemberState, Update, observe_members

__all__ = ("status",)

_STYLE = {
    MemberState.ALIVE: "green",
    MemberState.SUSPECT: "yellow",
    MemberState.DEAD: "red",
    MemberState.LEFT: "dim",
}
_COLUMNS = ("device", "load", "model")


def _cell(value: str | float | None) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:g}"
    return value


def _table(team: str, members: tuple[Update, ...]) -> Table:
    table = Table(title=f"team {team}: {len(members)} members", title_justify="left")
    for name in ("member", "state", "incarnation", *_COLUMNS, "other"):
        table.add_column(name, justify="right" if name in ("incarnation", "load") else "left")
    for m in members:
        meta = m.meta or {}
        other = " ".join(f"{k}={_cell(v)}" for k, v in sorted(meta.items()) if k not in _COLUMNS)
        table.add_row(
            m.member,
            f"[{_STYLE[m.state]}]{m.state.value}[/]",
            str(m.incarnation),
            *(_cell(meta.get(c)) for c in _COLUMNS),
            other,
        )
    return table


def status(
    *,
    team: TeamOption = "default",
    nats: NatsOption = None,
    json_out: JsonFlag = False,
    wait: Annotated[
        float,
        typer.Option(
            callback=positive,
            help="Seconds to spend asking members (a few protocol periods).",
        ),
    ] = 1.0,
) -> None:
    """Show the team's members, their state, device, load and model, from gossip."""
    team_subjects(team)

    async def main() -> tuple[Update, ...]:
        url = resolve_url(nats, team)
        async with open_bus(url, name="status", **BusAuth.from_env().options()) as bus:
            samples = 3
            return await observe_members(
                bus, team, samples=samples, interval=wait / samples, timeout=max(wait, 1.0)
            )

    members = run_async(main)
    if json_out:
        typer.echo(msgspec.json.encode({"team": team, "members": members}).decode())
        return
    if not members:
        err.print(
            f"no gossip members answered in team {team!r} (no agents running, or this "
            "credential may not publish on gossip subjects)"
        )
        raise typer.Exit(code=1)
    out.print(_table(team, members))
