"""Helpers for testing code built on lmteams: capture structlog events, wait for conditions.

Modelled on structlog's own ``testing`` module so tests assert on events, not on text.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
from structlog.testing import capture_logs

__all__ = ("capture_logs", "wait_until")


async def wait_until(
    condition: Callable[[], bool], *, timeout: float = 10.0, interval: float = 0.02
) -> None:
    """Poll ``condition`` until true; raise ``TimeoutError`` after ``timeout`` seconds."""
    with anyio.fail_after(timeout):
        while not condition():  # noqa: ASYNC110 - polling an arbitrary predicate is the point
            await anyio.sleep(interval)
