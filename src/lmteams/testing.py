"""Helpers for testing code built on lmteams: capture structlog events, wait for conditions.

Modelled on structlog's own ``testing`` module so tests assert on events, not on text, and
wait for what they expect to happen rather than sleeping for as long as it usually takes.
"""

from __future__ import annotations

import inspect
import signal
import subprocess
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import anyio
from structlog.testing import capture_logs

__all__ = ("capture_logs", "wait_until", "stop_processes")


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
