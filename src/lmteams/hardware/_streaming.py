"""One streaming contract for every backend: text pieces as they come, then the completion.

``async with backend.stream(request) as pieces: async for piece in pieces: ...`` and then
``pieces.completion``; :class:`~lmteams.hardware.CompletionStream` (OpenAI) has this shape,
and the llama.cpp and simulated backends give it with :class:`PolledStream`.

Those decode in a worker thread, which must never wait for the event loop per token: the
decode would then go at the loop's pace. So the thread only leaves the text so far in a
:class:`TextSoFar`, at most once per ``STREAM_INTERVAL_S`` (one detokenize and a reference
assignment), and wakes the reader with one ``call_soon_threadsafe``, which does not wait.
Coalescing comes with the bridge, and a fast model pays one detokenize and one wake-up per
interval, not one per token. The reader sleeps until woken rather than polling on a timer:
a timer that fires is an anyio cancellation, several loop turns each time, and what the loop
does while a stream runs is paid by the decoding thread beside it (the GIL, a core).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Final, Protocol, Self, runtime_checkable

import anyio
import structlog

from lmteams.hardware._types import Backend, Completion, GenerateRequest

__all__ = ("STREAM_INTERVAL_S", "AnswerStream", "StreamingBackend", "TextSoFar", "PolledStream")

log = structlog.get_logger(__name__)

STREAM_INTERVAL_S: Final = 0.1
"""Most often a decoding thread publishes its text so far, and a reader is woken for it."""


class AnswerStream(Protocol):
    """One streamed answer: an async context manager, and inside it an iterator of pieces.

    The pieces joined are ``completion.text`` once the iterator has run out. Leaving the
    block early (``break``, cancellation) stops generation.
    """

    completion: Completion | None

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def __aiter__(self) -> Self: ...

    async def __anext__(self) -> str: ...


@runtime_checkable
class StreamingBackend(Backend, Protocol):
    """A backend that can also hand its answer out piece by piece."""

    def stream(self, request: GenerateRequest) -> AnswerStream: ...


class TextSoFar:
    """The answer's text so far: written by whoever decodes (any thread), read by a reader.

    The tail that could still become a stop string is held back, so what was shown is
    always a start of the final text (a stop string is cut from it).
    """

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.text = ""
        self._hold = max((len(s) for s in stops), default=1) - 1
        self._next_at = 0.0
        self.on_show: Callable[[], None] | None = None
        """Called (in the showing thread) when the text has grown: how a reader is woken."""

    def due(self) -> bool:
        """Whether to show the text now: true at most once per ``STREAM_INTERVAL_S``."""
        now = time.perf_counter()
        if now < self._next_at:
            return False
        self._next_at = now + STREAM_INTERVAL_S
        return True

    def show(self, text: str) -> None:
        shown = text[: max(0, len(text) - self._hold)] if self._hold else text
        grown = len(shown) != len(self.text)
        self.text = shown
        if grown and self.on_show is not None:
            self.on_show()


class PolledStream:
    """:class:`AnswerStream` over ``produce(so_far)``, a backend's generate that fills it
    (and, through ``TextSoFar.on_show``, wakes the reader each time it does)."""

    def __init__(
        self, produce: Callable[[TextSoFar], Awaitable[Completion]], stops: tuple[str, ...]
    ) -> None:
        self._produce = produce
        self._so_far = TextSoFar(stops)
        self._sent = ""
        self._done = False
        self._shown = anyio.Event()
        self._error: Exception | None = None
        self._group = anyio.create_task_group()
        self.completion: Completion | None = None
        """The whole answer once generation has finished (None if the block was left)."""

    async def __aenter__(self) -> Self:
        loop = asyncio.get_running_loop()  # nats-py runs on asyncio, so every lmteams loop is

        def wake() -> None:  # in the decoding thread: schedules, never waits
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody reads
                loop.call_soon_threadsafe(self._wake)

        self._so_far.on_show = wake
        await self._group.__aenter__()
        self._group.start_soon(self._run)
        return self

    def _wake(self) -> None:
        self._shown.set()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._group.cancel_scope.cancel()  # left early: stop generating at the next token
        await self._group.__aexit__(None, None, None)  # _run never raises

    async def _run(self) -> None:
        try:
            self.completion = await self._produce(self._so_far)
        except Exception as exc:  # raised to the reader, outside the task group, unwrapped
            self._error = exc
        finally:
            self._done = True
            self._shown.set()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> str:
        while True:
            if self._shown.is_set():  # a wake-up from now on is for text not yet read
                self._shown = anyio.Event()
            done = self._done
            if done and self._error is not None:
                raise self._error
            text = self.completion.text if done and self.completion else self._so_far.text
            if not text.startswith(self._sent):  # never expected: detokenizing is prefix-stable
                log.warning("stream.diverged", sent=len(self._sent), text=len(text))
                text = self._sent
            piece = text[len(self._sent) :]
            if piece:
                self._sent = text
                return piece
            if done:
                raise StopAsyncIteration
            await self._shown.wait()  # bounded: the producer's end wakes it too (_run)
