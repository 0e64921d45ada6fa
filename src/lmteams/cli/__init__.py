"""The ``lmteams`` command: every verb is a thin call into the packages."""

from __future__ import annotations

import typer

from lmteams import __version__
from lmteams.cli._agents import agent_app, down, task_app, up
from lmteams.cli._attach import attach_cmd
from lmteams.cli._bus import bus_app
from lmteams.cli._common import OneLineErrors, setup_logs
from lmteams.cli._demo import demo
from lmteams.cli._hardware import hardware_app, model_app
from lmteams.cli._jobs import job_app
from lmteams.cli._plan import plan_cmd
from lmteams.cli._status import status
from lmteams.cli._study import study_app
from lmteams.cli._top import top

__all__ = ("app", "main")

app = typer.Typer(
    name="lmteams",
    cls=OneLineErrors,
    help=(
        "Run and study teams of language models as distributed systems over NATS.\n\n"
        "Quick start: `lmteams demo` starts a bus and three agents and asks them questions."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("demo")(demo)
app.command("up")(up)
app.command("down")(down)
app.command("status")(status)
app.command("top")(top)
app.command("plan")(plan_cmd)
app.add_typer(bus_app)
agent_app.command("attach")(attach_cmd)  # a protocol agent as a member
app.add_typer(agent_app)
app.add_typer(task_app)
app.add_typer(job_app)
app.add_typer(hardware_app)
app.add_typer(model_app)
app.add_typer(study_app)


def _version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """Run and study teams of language models as distributed systems over NATS."""
    setup_logs()  # stderr, warnings and up; verbs that serve (up, agent) raise the level


def main() -> None:
    app()
