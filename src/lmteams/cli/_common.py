"""What every ``lmteams`` verb shares: consoles, the --json flag, errors, logging set-up."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Annotated, Any, TypeVar

import anyio
import typer
from rich.console import Console
from rich.markup import escape
from typer._click.exceptions import ClickException  # typer vendors click; not re-exported
from typer.core import TyperGroup

from lmteams.bus import Subjects, validate_token
from lmteams.errors import ConfigError, LmteamsError
from lmteams.hardware import BACKEND_KINDS, DEVICE_CLASSES
from lmteams.logging import configure

__all__ = (
    "out",
    "err",
    "JsonFlag",
    "BaseUrlOption",
    "NatsOption",
    "TeamOption",
    "OneLineErrors",
    "check_backend",
    "loads_model_file",
    "choice",
    "fail",
    "positive",
    "run_async",
    "runs_on",
    "setup_logs",
    "team_subjects",
    "token",
    "until_signalled",
)

T = TypeVar("T")


_PIPED_WIDTH = 1000  # columns for piped output: tables size to their cells, never wrap them


def _console(*, stderr: bool) -> Console:
    """A console that wraps only for people: piped output keeps each line whole, so a URL or a
    command printed for copying is never split in two (rich wraps at 80 columns otherwise)."""
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr)
    # piped: tables get room for their natural width instead of 80 columns of wrapped cells
    return Console(stderr=stderr, soft_wrap=True, width=_PIPED_WIDTH)


out = _console(stderr=False)
err = _console(stderr=True)

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
BaseUrlOption = Annotated[
    str | None,
    typer.Option(
        "--base-url",
        help="For --backend openai: the OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1 "
        "(the key, if any, from $OPENAI_API_KEY); --model is then the server's model name.",
    ),
]


class OneLineErrors(TyperGroup):
    """The root command: a usage error (bad option value, unknown verb, missing option) is one
    ``error:`` line naming the option, exit code 2, instead of a usage block and a framed panel
    that a script cannot grep and a narrow terminal breaks over several lines."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        except typer.Abort:
            err.print("aborted", highlight=False)
            sys.exit(1)
        except ClickException as exc:
            ctx = getattr(exc, "ctx", None)  # usage errors know their command
            hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            err.print(f"[red]error:[/red] {escape(exc.format_message())}{hint}", highlight=False)
            sys.exit(exc.exit_code)
        sys.exit(code if isinstance(code, int) else 0)


def fail(exc: LmteamsError, code: int = 1) -> typer.Exit:
    """Print an lmteams error as one readable line and exit non-zero (no traceback)."""
    err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)  # no [markup] eaten
    return typer.Exit(code=code)


def choice(value: str, choices: Iterable[str], option: str) -> str:
    """``value`` if it is one of ``choices``, else a usage error naming ``option``."""
    known = tuple(choices)
    if value not in known:
        raise typer.BadParameter(
            f"unknown {value!r}: use one of {', '.join(known)}", param_hint=f"'{option}'"
        )
    return value


def positive(value: float | None) -> float | None:
    """An option callback: seconds and rates must be more than 0."""
    if value is not None and value <= 0:
        raise typer.BadParameter(f"must be more than 0, got {value:g}")
    return value


def check_backend(backend: str, sim_device: str, base_url: str | None = None) -> None:
    """Usage errors for a backend or simulated device that does not exist, before any process
    is started (a bad one would otherwise crash-loop every agent)."""
    choice(backend, BACKEND_KINDS, "--backend")
    if backend == "sim":
        choice(sim_device, DEVICE_CLASSES, "--sim-device")
    if backend == "openai" and not base_url:
        raise typer.BadParameter(
            "--backend openai needs --base-url (the OpenAI-compatible server); "
            "`lmteams agent start` and `lmteams hardware profile` take it",
            param_hint="'--backend'",
        )


def loads_model_file(backend: str) -> bool:
    """Whether ``--model`` names a local GGUF (to resolve, pull, fail fast on) for ``backend``:
    a simulated device loads none, an OpenAI-compatible server names its own models."""
    return backend not in ("sim", "openai")


def runs_on(backend: str, model: str, sim_device: str) -> str:
    """What a banner says the agents run: the model, or the simulated device that stands in."""
    if backend == "sim":
        return f"simulated {sim_device} devices (--backend sim: no model is loaded)"
    return f"{model} ({backend})"


def token(value: str, what: str, option: str) -> str:
    """``value`` if it can be one NATS subject token, else a usage error naming ``option``."""
    try:
        return validate_token(value, what)
    except ConfigError as exc:
        raise typer.BadParameter(str(exc), param_hint=f"'{option}'") from None


def team_subjects(team: str) -> Subjects:
    """The team's subject tree, or a usage error naming --team (checked before any connect)."""
    return Subjects(token(team, "team name", "--team"))


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


@contextlib.asynccontextmanager
async def until_signalled() -> AsyncIterator[None]:
    """A block that Ctrl-C or SIGTERM ends cleanly (cancelled, so the verb exits 0): for
    verbs that redraw until told to stop (``status --watch``, ``top``)."""
    async with anyio.create_task_group() as tg:

        async def stop_on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    tg.cancel_scope.cancel()

        tg.start_soon(stop_on_signal)
        yield
        tg.cancel_scope.cancel()
