"""run_in_thread: a cancelled caller waits for its worker thread to really stop."""

from __future__ import annotations

import threading
import time

import anyio
import pytest

from lmteams.hardware._threads import run_in_thread


async def test_result_and_errors_pass_through() -> None:
    assert await run_in_thread(lambda _stop: 42) == 42

    def boom(_stop: threading.Event) -> int:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):  # unwrapped, not an ExceptionGroup
        await run_in_thread(boom)


async def test_cancellation_sets_stop_and_waits_for_the_thread() -> None:
    started = threading.Event()
    finished = threading.Event()

    def polite(stop: threading.Event) -> str:
        started.set()
        while not stop.wait(0.001):
            pass
        time.sleep(0.05)  # still busy after the stop request: the caller must wait
        finished.set()
        return "stopped"

    with anyio.move_on_after(5) as scope:
        async with anyio.create_task_group() as group:

            async def call() -> None:
                await run_in_thread(polite)

            group.start_soon(call)
            await anyio.to_thread.run_sync(started.wait)
            group.cancel_scope.cancel()
    assert not scope.cancelled_caught
    assert finished.is_set()


async def test_a_result_finished_after_cancellation_is_discarded() -> None:
    discarded: list[str] = []
    gate = threading.Event()

    def stubborn(_stop: threading.Event) -> str:
        gate.wait(5)
        return "loaded model"

    async def call() -> None:
        await run_in_thread(stubborn, discard=discarded.append)

    async with anyio.create_task_group() as group:
        group.start_soon(call)
        await anyio.sleep(0.01)
        group.cancel_scope.cancel()
        gate.set()
    assert discarded == ["loaded model"]
