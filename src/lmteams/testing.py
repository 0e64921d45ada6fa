"""Helpers for testing code built on lmteams: capture structlog events, wait for conditions.

Modelled on structlog's own ``testing`` module so tests assert on events, not on text, and
wait for what they expect to happen rather than sleeping for as long as it usually takes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any, TypeVar

import anyio
from structlog.testing import capture_logs

if _TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy

    from lmteams.bus import Bus, EmbeddedServer, TeamSecurity

__all__ = (
    "capture_logs",
    "wait_until",
    "stop_processes",
    "llama_server",
    "draw_examples",
    "Secured",
    "secured_team",
)

_T = TypeVar("_T")


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]],
    *,
    timeout: float = 10.0,
    interval: float = 0.02,
) -> None:
    """Poll ``condition`` (a function, or an async one) until true.

    Raises ``TimeoutError`` after ``timeout`` seconds: the deadline is against hangs, never
    a claim about how fast something is, so make it generous.
    """
    with anyio.fail_after(timeout):
        while True:
            outcome = condition()
            if inspect.isawaitable(outcome):
                outcome = await outcome
            if outcome:
                return
            await anyio.sleep(interval)


def stop_processes(procs: Iterable[subprocess.Popen[Any]], *, timeout: float = 30.0) -> None:
    """SIGTERM every process still running, wait for each, SIGKILL what outlives ``timeout``.

    All are signalled first, so a team drains in parallel; a test's processes never outlive it.
    """
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def llama_server(
    model: str | Path, *, threads: int = 1, n_ctx: int = 2048, timeout: float = 120.0
) -> Iterator[str]:
    """llama-cpp-python's OpenAI-compatible server on a free loopback port; yields its base URL.

    It needs llama-cpp-python's ``server`` extra (the test extra has it), and runs through
    :mod:`lmteams.hardware.llama_server` (extra weight buffers off on AMX CPUs, where the
    plain server crashes on its first decode). Ready once
    ``/v1/models`` answers; a server that exits or stays silent for ``timeout`` fails with
    its log's tail, and it is stopped on exit whatever happened.
    """
    from lmteams.bus import free_port  # noqa: PLC0415 - keep this module light to import

    port = free_port()
    argv = [
        sys.executable, "-m", "lmteams.hardware.llama_server", "--model", str(model),
        "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx),
        "--n_threads", str(threads), "--n_threads_batch", str(threads),
    ]  # fmt: skip
    base_url = f"http://127.0.0.1:{port}/v1"
    with contextlib.ExitStack() as stack:
        log = stack.enter_context(tempfile.TemporaryFile())
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        stack.callback(stop_processes, [proc])
        deadline = time.monotonic() + timeout
        while not _answers(f"{base_url}/models"):
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                tail = log.read()[-2000:].decode("utf-8", "replace")
                raise RuntimeError(f"llama_cpp.server did not become ready: {tail}")
            time.sleep(0.2)  # a readiness poll with a deadline, not a synchronisation
        yield base_url


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


def draw_examples(strategy: SearchStrategy[_T], n: int) -> list[_T]:
    """``n`` examples of a hypothesis strategy, the same on every run.

    For inputs sent to a live server or agent inside one test, where hypothesis cannot drive
    (or shrink) the test itself. hypothesis is a test dependency: imported only when called.
    """
    from hypothesis import HealthCheck, Phase, given, settings  # noqa: PLC0415 - test-only

    out: list[_T] = []

    @settings(
        max_examples=n,
        database=None,
        derandomize=True,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        deadline=None,
    )
    @given(strategy)
    def collect(example: _T) -> None:
        out.append(example)

    collect()
    return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class Secured:
    """A running secured team bus: its server, its users and their credential files."""

    server: EmbeddedServer
    security: TeamSecurity
    files: dict[str, Path]

    def seed(self, name: str) -> str:
        """The path of user ``name``'s nkey seed file."""
        return str(self.files[name])

    def connect(self, name: str) -> contextlib.AbstractAsyncContextManager[Bus]:
        """A bus connection as user ``name``, with that user's permissions."""
        from lmteams.bus import open_bus  # noqa: PLC0415 - keep this module light to import

        return open_bus(self.server.url, name=name, nkey_seed=self.seed(name))


@contextlib.asynccontextmanager
async def secured_team(
    directory: Path, team: str, agents: Sequence[str], *, clients: Sequence[str] = ("client",)
) -> AsyncIterator[Secured]:
    """A nats-server with ``team``'s nkey users and per-role permissions, whose streams,
    consumer and buckets the operator (``admin``) has made: ``lmteams bus up --secure``,
    in-process, so code can be tested under the permissions it will run with."""
    from lmteams.bus import (  # noqa: PLC0415 - keep this module light to import
        ServerConfig,
        Subjects,
        open_bus,
        provision_team,
        run_server,
        team_security,
        write_credentials,
    )

    security = team_security(team, agents, clients=clients)
    files = write_credentials(security, directory)
    async with run_server(ServerConfig(extra=security.server_config())) as server:
        async with open_bus(server.url, name="admin", nkey_seed=str(files["admin"])) as admin:
            await provision_team(admin, Subjects(team))
        yield Secured(server=server, security=security, files=files)
