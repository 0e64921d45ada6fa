"""The backend contract that agents program against, whatever runs the model.

Agents, the study harness and the CLI only ever see these types, so a simulated device and a
real llama.cpp device are interchangeable: studies can run hundreds of simulated agents through
exactly the code path a real team uses.
"""

from __future__ import annotations

from typing import Final, Literal, Protocol, runtime_checkable

import msgspec

__all__ = (
    "BACKEND_KINDS",
    "FinishReason",
    "GenerateRequest",
    "Timings",
    "Completion",
    "Backend",
    "BackendConfig",
)

BACKEND_KINDS: Final = ("auto", "cpu", "cuda", "metal", "vulkan", "sim", "openai")
"""Accepted values of :attr:`BackendConfig.kind`."""

FinishReason = Literal["stop", "length", "cancelled"]


class GenerateRequest(msgspec.Struct, frozen=True, kw_only=True):
    """One prompt for one model; defaults favour reproducible, short answers."""

    prompt: str
    system: str | None = None
    max_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 0.95
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: bool = False
    """When true, :attr:`Completion.logprobs` holds one logprob per generated token."""
    chat: bool = True
    """Apply the GGUF's chat template; false asks for a raw completion of ``prompt``."""


class Timings(msgspec.Struct, frozen=True, kw_only=True):
    """Where the seconds went, so placement and studies can reason about devices.

    ``load_s`` is non-zero only on a backend's first completion, so summing timings over a
    run counts the model load once.
    """

    load_s: float = 0.0
    prompt_s: float = 0.0
    generation_s: float = 0.0


class Completion(msgspec.Struct, frozen=True, kw_only=True):
    """A model's answer plus the accounting that placement and voting need."""

    text: str
    tokens_in: int
    tokens_out: int
    timings: Timings
    finish_reason: str
    """``"stop"`` (end of turn or a stop string), ``"length"`` or ``"cancelled"``."""
    device: str
    """Where it ran: ``"cpu"``, ``"cuda:0"``, ``"sim:rpi5-cpu"``..."""
    model: str
    """Catalogue name, or the file stem for a local ``.gguf``."""
    logprobs: tuple[float, ...] | None = None


@runtime_checkable
class Backend(Protocol):
    """One loaded model on one device; calls are serialised on it.

    ``generate`` runs off the event loop, so heartbeats keep flowing while a model thinks;
    cancelling the awaiting task stops generation at the next token.
    """

    @property
    def device(self) -> str: ...

    @property
    def model(self) -> str: ...

    async def generate(self, request: GenerateRequest) -> Completion: ...

    async def aclose(self) -> None: ...


class BackendConfig(msgspec.Struct, frozen=True, kw_only=True):
    """How to open a backend; travels in agent configs, hence a Struct."""

    kind: str = "auto"
    """``auto`` | ``cpu`` | ``cuda`` | ``metal`` | ``vulkan`` | ``sim`` | ``openai``."""
    model: str = "smollm2-135m"
    """A catalogue name (``lmteams model list``) or a path to a ``.gguf`` file; for
    ``openai``, the model name the server knows (its ``/v1/models`` ids)."""
    n_threads: int | None = None
    """CPU threads; ``None`` means one per physical core."""
    n_ctx: int = 2048
    n_gpu_layers: int = -1
    """``-1`` offloads every layer when the device can, ``0`` none, ``k`` the first k."""
    seed: int = 0
    sim_device: str = "cpu-x86"
    """Device class for ``kind == "sim"``; see ``DEVICE_CLASSES``."""
    time_scale: float = 1.0
    """Simulated backends sleep for modelled time times this (studies use e.g. 0.001)."""
    extra_buffers: bool | None = None
    """llama.cpp's extra weight buffers (AMX tiles, repacked layouts); ``None`` decides by CPU.

    ``None`` turns them off on CPUs that report AMX: llama.cpp's AMX path hangs on batched
    prompt evaluation on such (virtualised) machines, while one token at a time still runs.
    """
    share: bool = False
    """Attach to the process's one shared host for this model instead of loading a copy.

    N agents of one process then hold the weights once and are decoded together, one
    multi-sequence batch per token step (see ``SharedModelHost``); each keeps its own seed.
    """
    share_slots: int = 8
    """Most sequences a shared host decodes at once (its slots grow with the agents attached,
    up to this); further requests wait their turn. Each slot has its own ``n_ctx``."""
    base_url: str | None = None
    """For ``kind == "openai"``: the server, ``http://host:port`` (``/v1`` is then added) or
    a full base such as ``https://api.example.com/v1``."""
    api_key_env: str = "OPENAI_API_KEY"
    """For ``openai``: the NAME of the environment variable holding the key, so a config (which
    travels and is logged) never holds the key itself. Unset: local servers need none."""
    request_timeout_s: float = 60.0
    """For ``openai``: the longest silence from the server (connecting, the first token, each
    later one) before the call fails as unavailable."""
