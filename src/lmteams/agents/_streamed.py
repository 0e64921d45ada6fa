"""The caller's side of a streamed task: its chunks as they come, then its one result.

``async with team.stream("...") as answer: async for chunk in answer: ...``, then
``answer.result``. The chunk subscription and the result's are both open before the task is
published, so nothing the agent sends can slip past. nats-py runs each subscription in its
own task, so a result may be handed over before the last chunks that preceded it on the
wire: the iterator ends once it has both the result and the last chunk of the try that made
it (or, that chunk lost, ``_LAST_CHUNK_GRACE_S`` after the result).

Chunks wait in a deque and the reader sleeps on one event until something arrives: no timer
and no cancel scope per chunk, since the loop's work per chunk is taken from a decoding
thread beside it (the GIL, a core) and so costs the streamed answer tokens/s. The waits are
bounded all the same: the result's waiter wakes the reader with the result, its timeout's
error, or the end of the grace.
"""

from __future__ import annotations

import contextlib
from collections import deque
from types import TracebackType
from typing import TYPE_CHECKING, Final, Self

import anyio

from lmteams.agents._messages import Chunk, Result, Task
from lmteams.bus import Codec, Incoming
from lmteams.errors import RequestTimeoutError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from lmteams.agents._client import TeamClient

__all__ = ("StreamedTask",)

_CHUNKS: Codec[Chunk] = Codec(Chunk)
_BUFFER: Final = 1024
"""Chunks kept for a reader that falls behind; beyond that they are dropped (counted)."""
_LAST_CHUNK_GRACE_S: Final = 1.0


class StreamedTask:
    """One published task's chunks (every try's, see :class:`Chunk`), then ``result``."""

    def __init__(self, client: TeamClient, task: Task, *, timeout: float) -> None:
        self._client = client
        self.task = task
        self._timeout = timeout
        self._stack = contextlib.AsyncExitStack()
        self._items: deque[Chunk | Result | Exception] = deque()
        """What came, in the order it came: chunks, then the result (or its timeout)."""
        self._arrived = anyio.Event()
        self._grace_over = False
        self._lasts: set[tuple[str, int]] = set()
        self.result: Result | None = None
        """The task's one result, once the iterator has ended."""
        self.dropped = 0
        """Chunks lost because the reader fell more than ``_BUFFER`` behind."""

    async def __aenter__(self) -> Self:
        stack, client = self._stack, self._client
        await stack.__aenter__()
        try:
            sub = await client.bus.subscribe(
                client.subjects.stream(self.task.id), self._on_chunk, codec=_CHUNKS
            )
            stack.push_async_callback(sub.unsubscribe)
            wait = await stack.enter_async_context(client._awaiting(self.task.id))
            group = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(group.cancel_scope.cancel)  # first out: the result waiter stops
            await client.publish(self.task)
            group.start_soon(self._wait_result, wait)
        except BaseException:
            await stack.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.__aexit__(exc_type, exc, tb)

    async def _on_chunk(self, inc: Incoming[Chunk]) -> None:
        if len(self._items) >= _BUFFER:
            self.dropped += 1
            return
        self._put(inc.body)

    def _put(self, item: Chunk | Result | Exception) -> None:
        self._items.append(item)
        self._arrived.set()

    async def _wait_result(self, wait: Callable[[float], Awaitable[Result]]) -> None:
        """The result (or its timeout's error) for the reader; then, should the last chunk
        not follow, the end of the grace. Any other error ends the block, reader and all."""
        try:
            result = await wait(self._timeout)
        except RequestTimeoutError as exc:
            self._put(exc)
            return
        self._put(result)
        await anyio.sleep(_LAST_CHUNK_GRACE_S)
        self._grace_over = True
        self._arrived.set()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Chunk:
        while True:
            if self._arrived.is_set():  # a wake-up from now on is for what is not yet read
                self._arrived = anyio.Event()
            while self._items and not self._ended():
                item = self._items.popleft()
                if isinstance(item, Exception):
                    raise item
                if isinstance(item, Result):
                    self.result = item
                    continue
                if item.last:
                    self._lasts.add((item.agent, item.delivery))
                if item.text:
                    return item
            if self._ended() or (self.result is not None and self._grace_over):
                raise StopAsyncIteration
            await self._arrived.wait()  # bounded: the waiter wakes it (see _wait_result)

    def _ended(self) -> bool:
        """Whether the try that made the result has nothing more to stream."""
        result = self.result
        if result is None:
            return False
        streamed = result.ok and result.strategy == "single"
        return not streamed or (result.agent, result.deliveries) in self._lasts
