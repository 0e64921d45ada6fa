"""A model call as the OpenTelemetry GenAI semantic conventions describe it.

Every model call of a worker (a queued task, a voter's prompt, a job subtask) passes through
``WorkerAgent._generate``, which calls ``traced_generate``: one ``CLIENT`` span per call,
named ``"{operation} {model}"``, with ``gen_ai.*`` request and usage attributes, a child of
whatever span the agent is working in. With tracing off it is the bare backend call (streamed
when the task streams: see ``_chunks``).
"""

from __future__ import annotations

from lmteams import tracing
from lmteams.agents._chunks import generate_to_sink
from lmteams.hardware import Backend, Completion, GenerateRequest

__all__ = ("traced_generate", "provider_of")

_PROVIDERS = {
    "LlamaBackend": "llama.cpp",
    "SharedBackend": "llama.cpp",
    "OpenAIBackend": "openai",
    "SimulatedBackend": "lmteams.sim",
    "ProtocolBackend": "nats.agents",
}


def provider_of(backend: Backend) -> str:
    """``gen_ai.provider.name``: who serves the model (a backend unknown here: its class)."""
    name = type(backend).__name__
    return _PROVIDERS.get(name) or name.removesuffix("Backend").lower() or "lmteams"


async def traced_generate(backend: Backend, request: GenerateRequest, agent: str) -> Completion:
    """``backend.generate(request)`` inside a GenAI span when tracing is on."""
    if not tracing.enabled():
        return await generate_to_sink(backend, request)
    operation = "chat" if request.chat else "text_completion"
    provider = provider_of(backend)
    attributes: dict[str, tracing.AttributeValue] = {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": provider,
        "gen_ai.system": provider,  # the name before semantic conventions 1.37, still read
        "gen_ai.request.model": backend.model,
        "gen_ai.request.max_tokens": request.max_tokens,
        "gen_ai.request.temperature": request.temperature,
        "gen_ai.request.top_p": request.top_p,
        "lmteams.agent": agent,
        "lmteams.device": backend.device,
    }
    if request.seed is not None:
        attributes["gen_ai.request.seed"] = request.seed
    with tracing.span(f"{operation} {backend.model}", kind="client", attributes=attributes) as sp:
        completion = await generate_to_sink(backend, request)
        sp.set(
            {
                "gen_ai.response.model": completion.model,
                "gen_ai.response.finish_reasons": (completion.finish_reason,),
                "gen_ai.usage.input_tokens": completion.tokens_in,
                "gen_ai.usage.output_tokens": completion.tokens_out,
            }
        )
    return completion
