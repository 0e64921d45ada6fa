"""``open_backend``: the one way to get a :class:`Backend`, real or simulated; prompt fits.

A prompt that does not fit the model's context can only fail, and on the way it occupies an
agent (a simulated one for minutes, a real one for a whole prompt evaluation). ``prompt_fit``
counts it with the model's own tokenizer first, so the caller refuses it up front.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Protocol, cast, runtime_checkable

import anyio
import msgspec

from lmteams.errors import ConfigError
from lmteams.hardware._llama import LlamaBackend
from lmteams.hardware._openai import OpenAIBackend
from lmteams.hardware._shared import SharedBackend, open_shared
from lmteams.hardware._sim import SimulatedBackend, estimate_tokens
from lmteams.hardware._types import BACKEND_KINDS, Backend, BackendConfig, GenerateRequest

__all__ = ("open_backend", "TokenCounter", "PromptFit", "prompt_fit")


@runtime_checkable
class TokenCounter(Protocol):
    """A backend that can tell, before generating, how much of its context a request takes.

    Both built-in backends are token counters; a custom :class:`Backend` need not be one
    (``prompt_fit`` then estimates, and lets the backend itself be the judge).
    """

    @property
    def n_ctx(self) -> int:
        """Tokens of context: prompt plus generated tokens must stay below this."""
        ...

    async def count_tokens(self, request: GenerateRequest) -> int:
        """Prompt tokens of ``request`` as it would be evaluated (chat template included)."""
        ...


class PromptFit(msgspec.Struct, frozen=True, kw_only=True):
    """Whether a request fits its backend's context, and what it may generate if it does.

    A prompt fits when at least one token is left for the answer; ``max_tokens`` is then
    clamped to what is left, as the backends themselves clamp it.
    """

    prompt_tokens: int
    n_ctx: int | None
    """None when the backend cannot say (``prompt_tokens`` is then an estimate)."""
    max_tokens: int

    @property
    def fits(self) -> bool:
        return self.n_ctx is None or self.prompt_tokens < self.n_ctx

    @property
    def problem(self) -> str:
        """Why it does not fit, naming the limit; "" when it fits."""
        if self.fits:
            return ""
        return (
            f"the prompt is {self.prompt_tokens} tokens but the model's context is "
            f"{self.n_ctx} tokens (n_ctx, prompt and answer together): shorten the prompt, "
            "or run agents with a larger n_ctx"
        )


async def prompt_fit(backend: Backend, request: GenerateRequest) -> PromptFit:
    """Count ``request`` against ``backend``'s context without generating anything."""
    # what a runtime-checkable isinstance asks, without its cost on every queued task
    if hasattr(backend, "count_tokens") and hasattr(backend, "n_ctx"):
        counter = cast("TokenCounter", backend)
        tokens, n_ctx = await counter.count_tokens(request), counter.n_ctx
        room = max(0, n_ctx - tokens)
        return PromptFit(
            prompt_tokens=tokens, n_ctx=n_ctx, max_tokens=min(request.max_tokens, room)
        )
    estimate = estimate_tokens(request.prompt) + estimate_tokens(request.system or "")
    return PromptFit(prompt_tokens=estimate, n_ctx=None, max_tokens=request.max_tokens)


@contextlib.asynccontextmanager
async def open_backend(config: BackendConfig) -> AsyncIterator[Backend]:
    """Load the configured model on the configured device; free it on exit.

    ``kind="sim"`` gives a :class:`SimulatedBackend` of class ``config.sim_device``; every other
    kind loads a GGUF with llama.cpp (``auto`` picks the best device this build can use),
    except ``openai``: a client of the OpenAI-compatible server at ``config.base_url``.
    With ``config.share`` a llama.cpp kind attaches to the process's shared host instead.
    """
    kind = config.kind.lower()
    backend: LlamaBackend | SimulatedBackend | OpenAIBackend | SharedBackend
    if kind == "sim":
        backend = SimulatedBackend(
            config.sim_device,
            model=config.model,
            seed=config.seed,
            time_scale=config.time_scale,
            n_ctx=config.n_ctx,
        )
        await backend.load()
    elif kind == "openai":
        backend = await OpenAIBackend.open(config)
    elif kind in BACKEND_KINDS and config.share:
        backend = await open_shared(config)
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
