"""The caller's side of a streamed task: its chunks as they come, then its one result.

``async with team.stream("...") as answer: async for chunk in answer: ...``, then
``answer.result``. The chunk subscription and the result's are both open before the task is
published, so nothing the agent sends can slip past. nats-py runs each subscription in its
own task, so a result may be handed over before the last chunks that preceded it on the
wire: the iterator ends once it has both the result and the last chunk of the try that made
it (or, that chunk lost, ``_LAST_CHUNK_GRACE_S`` after the result).
"""

from __future__ import annotations

import contextlib
from types import TracebackType
from typing import TYPE_CHECKING, Final, Self

import anyio
import anyio.abc

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
        self._send, self._items = anyio.create_memory_object_stream[Chunk | Result | Exception](
            _BUFFER
        )
        self._lasts: set[tuple[str, int]] = set()
        self.result: Result | None = None
        """The task's one result, once the iterator has ended."""
        self.dropped = 0
        """Chunks lost because the reader fell more than ``_BUFFER`` behind."""

    async def __aenter__(self) -> Self:
        stack, client = self._stack, self._client
        await stack.__aenter__()
        try:
            stack.push_async_callback(self._items.aclose)
            stack.push_async_callback(self._send.aclose)
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
        try:
            self._send.send_nowait(inc.body)
        except anyio.WouldBlock:
            self.dropped += 1
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):  # the reader has left
            pass

    async def _wait_result(self, wait: Callable[[float], Awaitable[Result]]) -> None:
        try:
            item: Result | Exception = await wait(self._timeout)
        except RequestTimeoutError as exc:
            item = exc
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            await self._send.send(item)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Chunk:
        pending = self.result
        while not (pending is not None and self._complete(pending)):
            limit = _LAST_CHUNK_GRACE_S if pending is not None else self._timeout + 1.0
            with anyio.move_on_after(limit):
                item = await self._items.receive()
                if isinstance(item, Exception):
                    raise item
                if isinstance(item, Result):
                    self.result = pending = item
                    continue
                if item.last:
                    self._lasts.add((item.agent, item.delivery))
                if item.text:
                    return item
                continue
            if pending is None:  # the waiter always sends within the timeout: defensive
                raise RequestTimeoutError(f"no result for task {self.task.id}")
            break  # the result is here and its last chunk was lost: end without it
        raise StopAsyncIteration

    def _complete(self, result: Result) -> bool:
        """Whether the try that made ``result`` has nothing more to stream."""
        streamed = result.ok and result.strategy == "single"
        return not streamed or (result.agent, result.deliveries) in self._lasts
