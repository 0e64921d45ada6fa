"""run_in_thread: a cancelled caller waits for its worker thread to really stop."""

from __future__ import annotations

import threading

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
    stopping = threading.Event()
    release = threading.Event()
    order: list[str] = []

    def polite(stop: threading.Event) -> str:
        started.set()
        stop.wait(60)
        stopping.set()  # told to stop, and still busy: the caller must wait
        release.wait(60)
        order.append("thread finished")
        return "stopped"

    async with anyio.create_task_group() as group:
        call_scope = anyio.CancelScope()

        async def call() -> None:
            with call_scope:
                await run_in_thread(polite)
            order.append("caller returned")

        group.start_soon(call)
        await anyio.to_thread.run_sync(started.wait)
        call_scope.cancel()
        await anyio.to_thread.run_sync(stopping.wait)
        assert order == []  # the cancelled caller is still waiting for its thread
        release.set()
    assert order == ["thread finished", "caller returned"]


async def test_a_result_finished_after_cancellation_is_discarded() -> None:
    discarded: list[str] = []
    started = threading.Event()
    gate = threading.Event()

    def stubborn(_stop: threading.Event) -> str:
        started.set()
        gate.wait(60)  # ignores the stop request, as a model load does
        return "loaded model"

    async def call() -> None:
        await run_in_thread(stubborn, discard=discarded.append)

    async with anyio.create_task_group() as group:
        group.start_soon(call)
        await anyio.to_thread.run_sync(started.wait)
        group.cancel_scope.cancel()
        gate.set()
    assert discarded == ["loaded model"]
