"""Agents' views on a process-wide shared host: one model per configuration, refcounted.

``open_backend(BackendConfig(share=True, ...))`` returns a :class:`SharedBackend`. The
first one opened for a configuration loads the model into a :class:`SharedModelHost`; later
ones attach to it (the host grows its slots with them, up to ``share_slots``), and the last
one closed frees it. So N agents built from one config in one process hold the weights once
and are decoded together, without knowing about each other. Each view keeps its own seed.

Hosts are keyed by what changes the loaded model or its context: the model file, device
kind, GPU layers, threads, per-slot context, extra buffers and slots; the seed is not (it is
per request). A host serves callers on any event loop: each request carries its own loop's
token, and the host wakes it there.
"""

from __future__ import annotations

from typing import Final

import anyio

from lmteams.errors import BackendError
from lmteams.hardware._detect import physical_cores
from lmteams.hardware._host import SharedModelHost, SharedStatistics
from lmteams.hardware._llama import with_load_time
from lmteams.hardware._models import resolve_model
from lmteams.hardware._streaming import PolledStream, TextSoFar
from lmteams.hardware._types import BackendConfig, Completion, GenerateRequest

__all__ = ("SharedBackend", "open_shared", "shared_hosts")

_LOAD_WAIT_S: Final = 600.0
"""How long a second opener waits for the first one's load (a model pull can be slow)."""

_HostKey = tuple[str, str, int, int, int, bool | None, int]
_HOSTS: dict[_HostKey, SharedModelHost] = {}
_OPENING: dict[_HostKey, anyio.Event] = {}


class SharedBackend:
    """One agent's backend on a shared host: its own seed and closing, the host's model."""

    def __init__(self, host: SharedModelHost, key: _HostKey, *, seed: int, load_s: float) -> None:
        self._host = host
        self._key = key
        self._seed = seed
        self._pending_load_s = load_s
        self._closed = False

    @property
    def device(self) -> str:
        return self._host.device

    @property
    def model(self) -> str:
        return self._host.model

    @property
    def n_ctx(self) -> int:
        """Context of this agent's slot (a :class:`~lmteams.hardware.TokenCounter`)."""
        return self._host.n_ctx

    @property
    def host(self) -> SharedModelHost:
        """The host this view shares with the others attached to it."""
        return self._host

    def statistics(self) -> SharedStatistics:
        """The host's counters: all the views attached to it together."""
        return self._host.statistics()

    async def count_tokens(self, request: GenerateRequest) -> int:
        return await self._host.count_tokens(request)

    async def generate(self, request: GenerateRequest) -> Completion:
        """Decoded in the host's batches; cancelling frees the slot at the next step."""
        return await self._generate(request, None)

    def stream(self, request: GenerateRequest) -> PolledStream:
        """The answer in pieces as the host decodes it (see ``AnswerStream``)."""
        return PolledStream(lambda so_far: self._generate(request, so_far), request.stop)

    async def _generate(self, request: GenerateRequest, so_far: TextSoFar | None) -> Completion:
        if self._closed:
            raise BackendError(f"backend for {self.model} on {self.device} is closed")
        seed = request.seed if request.seed is not None else self._seed
        completion = await self._host.generate(request, seed=seed, so_far=so_far)
        load_s, self._pending_load_s = self._pending_load_s, 0.0
        return with_load_time(completion, load_s)

    async def aclose(self) -> None:
        """Detach; the last view to close frees the model."""
        if self._closed:
            return
        self._closed = True
        if self._host.detach() == 0:
            if _HOSTS.get(self._key) is self._host:
                del _HOSTS[self._key]
            await self._host.aclose()


async def open_shared(config: BackendConfig) -> SharedBackend:
    """Attach to this configuration's host, loading it if this is the first view."""
    key = await _key(config)
    while (host := _HOSTS.get(key)) is None and (opening := _OPENING.get(key)) is not None:
        with anyio.fail_after(_LOAD_WAIT_S):
            await opening.wait()  # then look again: the load may have failed
    if host is not None:
        host.attach()
        return SharedBackend(host, key, seed=config.seed, load_s=0.0)
    loaded = _OPENING[key] = anyio.Event()
    try:
        host = await SharedModelHost.open(config)
        _HOSTS[key] = host
    finally:
        del _OPENING[key]
        loaded.set()
    host.attach()
    return SharedBackend(host, key, seed=config.seed, load_s=host.load_s)


def shared_hosts() -> tuple[SharedModelHost, ...]:
    """The hosts loaded in this process now (for statistics, and to see that sharing works)."""
    return tuple(_HOSTS.values())


async def _key(config: BackendConfig) -> _HostKey:
    model = await anyio.to_thread.run_sync(lambda: resolve_model(config.model))
    return (
        str(model.path),
        config.kind.lower(),
        config.n_gpu_layers,
        config.n_threads or physical_cores(),
        config.n_ctx,
        config.extra_buffers,
        config.share_slots,
    )
