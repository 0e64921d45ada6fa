"""``open_backend``: the one way to get a :class:`Backend`, real or simulated."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio

from lmteams.errors import ConfigError
from lmteams.hardware._llama import LlamaBackend
from lmteams.hardware._sim import SimulatedBackend
from lmteams.hardware._types import BACKEND_KINDS, Backend, BackendConfig

__all__ = ("open_backend",)


@contextlib.asynccontextmanager
async def open_backend(config: BackendConfig) -> AsyncIterator[Backend]:
    """Load the configured model on the configured device; free it on exit.

    ``kind="sim"`` gives a :class:`SimulatedBackend` of class ``config.sim_device``; every other
    kind loads a GGUF with llama.cpp (``auto`` picks the best device this build can use).
    """
    kind = config.kind.lower()
    backend: LlamaBackend | SimulatedBackend
    if kind == "sim":
        backend = SimulatedBackend(
            config.sim_device, model=config.model, seed=config.seed, time_scale=config.time_scale
        )
        await backend.load()
    elif kind in BACKEND_KINDS:
        backend = await LlamaBackend.open(config)
    else:
        raise ConfigError(
            f"unknown backend kind {config.kind!r}: use one of {', '.join(BACKEND_KINDS)}"
        )
    try:
        yield backend
    finally:
        with anyio.CancelScope(shield=True):
            await backend.aclose()
