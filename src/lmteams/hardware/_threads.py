"""Run blocking model work in a worker thread without ever abandoning it.

``anyio.to_thread.run_sync(..., abandon_on_cancel=True)`` would return to a cancelled caller
while llama.cpp is still decoding, so the backend's lock would be released with the model busy
and the next call would race it. Here the thread is awaited under a shield and told to stop
through a :class:`threading.Event` the moment the caller is cancelled; the caller's
cancellation is re-raised only after the thread has really returned.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import anyio

__all__ = ("run_in_thread",)

T = TypeVar("T")


async def run_in_thread(
    work: Callable[[threading.Event], T], *, discard: Callable[[T], None] | None = None
) -> T:
    """Run ``work(stop)`` in a worker thread; ``stop`` is set if the caller is cancelled.

    ``work`` should poll ``stop`` and return early. If the caller was cancelled but ``work``
    finished anyway, its result is handed to ``discard`` (e.g. to free a loaded model) before
    the cancellation propagates.
    """
    stop = threading.Event()
    results: list[T] = []
    errors: list[BaseException] = []

    async def runner() -> None:
        try:
            with anyio.CancelScope(shield=True):
                results.append(await anyio.to_thread.run_sync(work, stop))
        except Exception as exc:  # re-raised below, outside the task group, unwrapped
            errors.append(exc)
        finally:
            group.cancel_scope.cancel()

    try:
        async with anyio.create_task_group() as group:
            group.start_soon(runner)
            try:
                await anyio.sleep_forever()
            finally:
                stop.set()
    except BaseException:
        # Only the caller's own cancellation reaches here: runner never raises.
        if results and discard is not None:
            discard(results[0])
        raise
    if errors:
        raise errors[0]
    return results[0]
