"""Child processes that cannot outlive lmteams: spawn with PDEATHSIG, stop politely then firmly.

Used for the embedded nats-server and for agent processes: a supervisor killed with -9 must
not leave a team of orphans holding ports and models.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import signal
from collections.abc import Sequence
from typing import IO, Any

import anyio

__all__ = ("spawn", "terminate")

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


async def spawn(
    argv: Sequence[str],
    *,
    stdout: IO[Any] | int | None = asyncio.subprocess.DEVNULL,
    stderr: IO[Any] | int | None = asyncio.subprocess.DEVNULL,
    env: dict[str, str] | None = None,
) -> asyncio.subprocess.Process:
    """Start a child that the kernel kills if this process dies (Linux; elsewhere best effort)."""
    return await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        env=env,
        preexec_fn=_die_with_parent,
    )


async def terminate(proc: asyncio.subprocess.Process, *, timeout: float) -> int:
    """SIGTERM (after SIGCONT, in case it is paused), SIGKILL after ``timeout``; always reaps.

    Shielded: a cancelled caller (Ctrl-C, a failing test) must still reap the child.
    """
    with anyio.CancelScope(shield=True):
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
            with anyio.move_on_after(timeout):
                await proc.wait()
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
    assert proc.returncode is not None
    return proc.returncode
