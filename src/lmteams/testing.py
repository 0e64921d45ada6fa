"""Helpers for testing code built on lmteams: capture structlog events, wait for conditions.

Modelled on structlog's own ``testing`` module so tests assert on events, not on text, and
wait for what they expect to happen rather than sleeping for as long as it usually takes.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable

import anyio
from structlog.testing import capture_logs

__all__ = ("capture_logs", "wait_until")


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
