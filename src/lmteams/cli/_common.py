"""What every ``lmteams`` verb shares: consoles, the --json flag, errors, logging set-up."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import anyio
import typer
from rich.console import Console
from rich.markup import escape

from lmteams.errors import LmteamsError
from lmteams.logging import configure

__all__ = ("out", "err", "JsonFlag", "NatsOption", "TeamOption", "fail", "run_async", "setup_logs")

T = TypeVar("T")

out = Console()
err = Console(stderr=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
NatsOption = Annotated[
    str | None,
    typer.Option(
        "--nats",
        help="NATS URL(s), comma-separated. Default: $LMTEAMS_NATS_URL, else the bus of a "
        "running `lmteams up` for the team.",
    ),
]
TeamOption = Annotated[
    str, typer.Option("--team", help="Team name: one subject tree lmt.<team>.… on the bus.")
]


def fail(exc: LmteamsError, code: int = 1) -> typer.Exit:
    """Print an lmteams error as one readable line and exit non-zero (no traceback)."""
    err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)  # no [markup] eaten
    return typer.Exit(code=code)


def setup_logs(*, json: bool = False, default_level: str = "warning") -> None:
    """Logs go to stderr (stdout is for results); ``LMTEAMS_LOG_LEVEL`` overrides the level."""
    configure(json=json, level=os.environ.get("LMTEAMS_LOG_LEVEL", default_level))


def run_async(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run a coroutine function; lmteams errors become a clean exit, Ctrl-C exits 130."""
    try:
        return anyio.run(fn, *args)
    except LmteamsError as exc:
        raise fail(exc) from None
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(code=130) from None
