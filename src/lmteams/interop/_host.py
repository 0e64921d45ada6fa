"""Every lmteams worker as a Synadia Agent Protocol agent: ``protocol_service()``.

The protocol (0.3) is how the NATS ecosystem finds and prompts agents: a NATS micro service
named ``agents`` per agent, whose ``prompt`` endpoint streams typed JSON chunks, whose
``status`` endpoint answers a heartbeat-shaped payload, and which beats on ``agents.hb.…``.
Any protocol caller (the ``synadia-ai-agents`` SDK, ``nats micro ls``, a Claude Code plugin)
then finds a team's agents and prompts them, and nothing about lmteams needs to be known.

The host SDK (``synadia-ai-agent-service``) does the protocol, on the agent's own bus
connection: subjects, the leading ack and keep-alives, the terminator, §9 error frames for
malformed, oversized or refused requests, sender classification and heartbeats. It runs on
asyncio, which is the loop anyio runs lmteams on, and it sits off the task path (its own
subscriptions), so queued tasks and coordinators' prompts pay nothing for it.

A protocol prompt is a direct ``Prompt`` to the agent, answered the way a coordinator's is
(same validation, context fit and backend call); the ``lmteams`` field of the envelope (an
extension field, §5.6) may carry the generation options. The answer leaves as the chunks an
:data:`AnswerSource` yields: the whole answer in one chunk today; a backend that streams
tokens plugs in there, and the protocol's side does not change.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING

import anyio
import msgspec
from synadia_ai.agent_service import AgentService, PromptStream, RequestRejectedError
from synadia_ai.agents import AgentSubject, Envelope, ProtocolError

from lmteams.agents import Coalescing, Prompt, WorkerAgent, WorkerService, streaming_to
from lmteams.bus import PROTOCOL_AGENT, new_id
from lmteams.errors import AgentError, BackendError, BackendUnavailableError

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient

__all__ = (
    "AGENT_KIND",
    "OPTIONS_FIELD",
    "AnswerSource",
    "PromptOptions",
    "ProtocolServiceConfig",
    "protocol_service",
    "protocol_subject",
    "whole_answer",
)

AGENT_KIND = PROTOCOL_AGENT
"""The ``agent`` token of every lmteams agent's subjects, as ``claude-code`` is Claude Code's:
``agents.prompt.lmteams.<team>.<agent-id>`` (owner = team, session = agent id). The bus owns
it (``Subjects.protocol``), since a secured bus grants each agent its own of these subjects."""

OPTIONS_FIELD = "lmteams"
"""The envelope's extension field with generation options (``PromptOptions``)."""


class PromptOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a caller may set besides the prompt text (the envelope's ``lmteams`` field).

    Decoded strictly: a field of the wrong type is a ``400`` naming it, never a guess.
    """

    system: str | None = None
    max_tokens: int = 128
    temperature: float = 0.0
    seed: int | None = None


class ProtocolServiceConfig(msgspec.Struct, frozen=True, kw_only=True):
    """How an agent serves the protocol; the defaults are the protocol's own."""

    heartbeat_s: int = 30
    """Seconds between heartbeats on ``agents.hb.…`` (the protocol's default)."""
    keepalive_s: float | None = 30.0
    """Seconds between ``ack`` chunks while a prompt runs, so a caller's inactivity timer
    (60 s in the SDKs) does not give up on a model that thinks for long; None: none."""
    max_concurrent: int = 4
    """Protocol prompts served at once; the backend still runs one call at a time, these
    only wait for it (a bounded number, as the agent's mailbox is bounded)."""


AnswerSource = Callable[[WorkerAgent, Prompt], AsyncIterator[str]]
"""The texts of one answer, in order; each becomes one ``response`` chunk."""


class _ResponseChunks(Coalescing):
    """A prompt's pieces, as the protocol's ``response`` chunks."""

    def __init__(self, stream: PromptStream) -> None:
        super().__init__()
        self._stream = stream

    async def _emit(self, text: str, *, last: bool) -> None:
        if text:
            await self._stream.send(text)


async def whole_answer(agent: WorkerAgent, prompt: Prompt) -> AsyncIterator[str]:
    """The answer in one chunk: what a backend that cannot stream tokens gives."""
    answer = await agent.on_prompt(prompt)
    yield answer.text


def protocol_subject(team: str, agent_id: str) -> AgentSubject:
    """The protocol subjects of an lmteams agent (tokens escaped as the SDK escapes them)."""
    return AgentSubject.new(agent=AGENT_KIND, owner=team, session_name=agent_id)


def protocol_service(
    config: ProtocolServiceConfig | None = None, *, answers: AnswerSource | None = None
) -> WorkerService:
    """The worker service that registers an agent as a protocol agent while it serves."""
    settings = config or ProtocolServiceConfig()

    async def serve(agent: WorkerAgent) -> None:
        ctx = agent.context
        nc: NatsClient = ctx.bus.nc
        service = AgentService(
            agent=AGENT_KIND,
            owner=ctx.team,
            session_name=ctx.actor_id,
            nc=nc,
            description=f"lmteams agent {ctx.actor_id} of team {ctx.team}",
            heartbeat_interval_s=settings.heartbeat_s,
            keepalive_interval_s=settings.keepalive_s,
            extra_metadata=_registration(agent),
            heartbeat_extras=functools.partial(_live_facts, agent),
            max_concurrent_prompts=settings.max_concurrent,
        )
        service.on_prompt(functools.partial(_on_prompt, agent, answers))
        await service.start()
        ctx.log.info("protocol.serving", subject=service.subject.prompt)
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5.0):
                await service.stop()

    return serve


def _registration(agent: WorkerAgent) -> dict[str, str]:
    """``$SRV.INFO`` metadata (string-valued, fixed at registration): who and what it is."""
    ctx, backend = agent.context, agent.backend
    return {
        "team": ctx.team,
        "agent_id": ctx.actor_id,
        "model": backend.model if backend else "",
        "device": backend.device if backend else "",
        "tokens_per_s": f"{agent.tokens_per_s:.1f}",
        "prompt_tokens_per_s": f"{agent.prompt_tokens_per_s:.1f}",
    }


def _live_facts(agent: WorkerAgent) -> Mapping[str, object]:
    """What each heartbeat and status reply adds: the agent's facts at that moment."""
    return {
        "lmteams": {
            "team": agent.context.team,
            "agent_id": agent.context.actor_id,
            "tokens_per_s": agent.tokens_per_s,
            "in_flight": agent.in_flight,
            "served": agent.served,
            "serving": "draining" if agent.draining else "serving",
        }
    }


def _prompt_of(envelope: Envelope) -> Prompt:
    """The direct prompt a protocol request asks for; ``ProtocolError`` (a 400) if malformed."""
    raw = envelope.extras.get(OPTIONS_FIELD)
    try:
        options = PromptOptions() if raw is None else msgspec.convert(raw, PromptOptions)
    except msgspec.ValidationError as err:
        raise ProtocolError(f"envelope field {OPTIONS_FIELD!r}: {err}") from None
    return Prompt(
        task_id=new_id(),
        prompt=envelope.prompt,
        system=options.system,
        max_tokens=options.max_tokens,
        temperature=options.temperature,
        seed=options.seed,
    )


async def _on_prompt(
    agent: WorkerAgent, answers: AnswerSource | None, envelope: Envelope, stream: PromptStream
) -> None:
    """Answer one protocol prompt; a refusal is a §9 error whose code says whose fault.

    Without an ``answers`` source the model's own pieces go out as ``response`` chunks as
    they are generated (coalesced as a task's stream is; a backend that cannot stream sends
    its whole text as one)."""
    if agent.draining:
        raise RequestRejectedError(503, f"agent {agent.context.actor_id} is draining")
    prompt = _prompt_of(envelope)
    try:
        if answers is None:
            with streaming_to(_ResponseChunks(stream)):
                await agent.on_prompt(prompt)
        else:
            async for text in answers(agent, prompt):
                await stream.send(text)
    except BackendUnavailableError as err:
        raise RequestRejectedError(503, str(err)) from None
    except BackendError as err:
        raise RequestRejectedError(500, str(err)) from None
    except AgentError as err:  # refused: empty, too long, over the context, out of range
        raise RequestRejectedError(400, str(err)) from None
