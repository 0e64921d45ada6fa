"""A streamed task's answer, published as it is generated: coalesced ``chunk`` messages.

The sink travels in a context variable, set by the task path around the model call, rather
than as an argument of ``WorkerAgent._generate``: that method is the hook subclasses override
(tests, studies, the protocol bridge), and an override that calls ``super()._generate`` then
streams without knowing about it. Only the task that set the sink sees it, so a coordinator's
direct prompts (served by other tasks) never stream into it.

Chunks are core NATS messages: a reader that is not subscribed misses them, and a failed
publish drops a chunk rather than fail the task; the durable result is the record. Pieces
are coalesced to at most one chunk per ``CHUNK_INTERVAL_S`` (the first at once), so a fast
model never costs a message per token.
"""

from __future__ import annotations

import abc
import contextlib
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Final, Protocol

from lmteams.agents._messages import Chunk
from lmteams.bus import Bus
from lmteams.errors import BackendError, BusError
from lmteams.hardware import Backend, Completion, GenerateRequest, StreamingBackend

__all__ = (
    "CHUNK_INTERVAL_S",
    "PieceSink",
    "Coalescing",
    "ChunkSink",
    "streaming_to",
    "generate_to_sink",
)

CHUNK_INTERVAL_S: Final = 0.1


class PieceSink(Protocol):
    """Where a model call's pieces go as they are generated."""

    async def add(self, piece: str) -> None: ...

    async def close(self) -> None: ...


_SINK: ContextVar[PieceSink | None] = ContextVar("lmteams_chunk_sink", default=None)


class Coalescing(abc.ABC):
    """A sink that passes its pieces on at most once per ``CHUNK_INTERVAL_S`` (the first at
    once), joined: what it passes them to is ``_emit``."""

    def __init__(self) -> None:
        self._pending: list[str] = []
        self._next_at = 0.0

    @abc.abstractmethod
    async def _emit(self, text: str, *, last: bool) -> None: ...

    async def add(self, piece: str) -> None:
        """Keep ``piece``; publish what is kept when the interval since the last has passed."""
        self._pending.append(piece)
        if time.perf_counter() >= self._next_at:
            await self._flush(last=False)

    async def close(self) -> None:
        """Publish what is kept as the try's last chunk (empty if nothing is left)."""
        await self._flush(last=True)

    async def _flush(self, *, last: bool) -> None:
        text = "".join(self._pending)
        self._pending.clear()
        self._next_at = time.perf_counter() + CHUNK_INTERVAL_S
        await self._emit(text, last=last)


class ChunkSink(Coalescing):
    """Where one try of one task publishes its chunks."""

    def __init__(self, bus: Bus, subject: str, *, task_id: str, agent: str, delivery: int) -> None:
        super().__init__()
        self._bus = bus
        self._subject = subject
        self._task_id = task_id
        self._agent = agent
        self._delivery = delivery
        self._seq = 0
        self.published = 0

    async def _emit(self, text: str, *, last: bool) -> None:
        chunk = Chunk(
            task_id=self._task_id,
            agent=self._agent,
            delivery=self._delivery,
            seq=self._seq,
            text=text,
            last=last,
        )
        self._seq += 1
        with contextlib.suppress(BusError):
            await self._bus.publish(self._subject, chunk, sender=self._agent)
            self.published += 1


@contextlib.contextmanager
def streaming_to(sink: PieceSink | None) -> Iterator[None]:
    """Model calls made by this task inside the block stream into ``sink`` (None: they don't)."""
    token = _SINK.set(sink)
    try:
        yield
    finally:
        _SINK.reset(token)


async def generate_to_sink(backend: Backend, request: GenerateRequest) -> Completion:
    """``backend.generate(request)``, streamed into this task's sink when it has one.

    A backend that cannot stream still honours the contract: its whole text is one chunk.
    """
    sink = _SINK.get()
    if sink is None:
        return await backend.generate(request)
    if not isinstance(backend, StreamingBackend):
        completion = await backend.generate(request)
        await sink.add(completion.text)
    else:
        async with backend.stream(request) as pieces:
            async for piece in pieces:
                await sink.add(piece)
        if pieces.completion is None:  # a backend that ended its pieces without an answer
            raise BackendError(f"the stream of {backend.model} on {backend.device} gave no answer")
        completion = pieces.completion
    await sink.close()
    return completion
