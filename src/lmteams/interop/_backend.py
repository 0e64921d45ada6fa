"""A protocol agent as a model: ``ProtocolBackend`` and ``open_protocol_backend``.

A :class:`~lmteams.hardware.Backend` whose every ``generate`` is a prompt to an agent found
by the caller SDK (``synadia-ai-agents``) on the same bus, its streamed ``response`` chunks
joined into the completion. A worker agent with this backend is a team member like any
other: it answers queued tasks, coordinators' prompts (votes, debates, quorums) and job
subtasks, with nothing special anywhere else.

What the protocol does not say is measured or estimated, and the ``Completion`` tells which
way: ``prompt_s`` is the time to the first ``response`` chunk (the agent's thinking, ack and
keep-alives apart), ``generation_s`` the rest; token counts are estimated from the texts
(:func:`~lmteams.hardware.estimate_tokens`), since chunks carry none. ``max_tokens`` and
``temperature`` travel in the envelope's ``lmteams`` field, which another lmteams agent
honours and any other agent ignores (§5.6); a system prompt is folded into the text for
those others, which take no system prompt.

Failures are split by what another try can do, as for the OpenAI backend: an agent that
stops answering (no chunk within ``stall_s``, or nothing by ``max_wait_s``) or says it is
unavailable (503, 504) raises :class:`~lmteams.errors.BackendUnavailableError`, and the task
is handed back for a later try or another member; any other refusal raises
:class:`~lmteams.errors.BackendError`. The protocol has no cancel: a cancelled call stops
listening, the remote agent may finish its answer unheard.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Final, cast

import msgspec
from synadia_ai.agents import (
    Agent,
    Agents,
    AgentSubject,
    DiscoverFilter,
    Envelope,
    InvalidSubjectToken,
    NatsAgentError,
    ProtocolError,
    Query,
    ResponseChunk,
    StreamMaxWaitExceededError,
    StreamMessage,
    StreamStalledError,
)
from synadia_ai.agents.discovery import matches_filter

from lmteams.bus import Bus
from lmteams.errors import BackendError, BackendUnavailableError, ConfigError
from lmteams.hardware import Completion, GenerateRequest, Timings, estimate_tokens
from lmteams.interop._host import AGENT_KIND, OPTIONS_FIELD, PromptOptions

__all__ = (
    "ProtocolTarget",
    "ProtocolBackendConfig",
    "ProtocolBackend",
    "find_protocol_agent",
    "open_protocol_backend",
)

_UNAVAILABLE: Final = frozenset(("503", "504"))
_SERVICE_ERROR: Final = re.compile(r"service error (\d{3})")
_NO_ONE_TO_ASK: Final = (
    "No one can answer questions here: this prompt came from an lmteams team. "
    "Answer with what you have."
)


class ProtocolTarget(msgspec.Struct, frozen=True, kw_only=True):
    """Which protocol agent: its names, as registered or as its subject spells them
    (``agents.prompt.<agent>.<owner>.<session>``, where the SDK escapes a name it cannot carry).

    ``owner`` and ``session`` may be left out when one agent of that kind is on the bus.
    """

    agent: str
    owner: str | None = None
    session: str | None = None


class ProtocolBackendConfig(msgspec.Struct, frozen=True, kw_only=True):
    stall_s: float = 60.0
    """Longest silence within one answer (the SDKs' default; agents send keep-alives)."""
    max_wait_s: float = 600.0
    """Longest whole answer."""
    discover_s: float = 2.0
    """How long discovery waits for agents to answer ``$SRV.INFO``."""


class ProtocolBackend:
    """One remote protocol agent as a :class:`~lmteams.hardware.Backend`."""

    def __init__(self, agent: Agent, config: ProtocolBackendConfig | None = None) -> None:
        self.agent = agent
        self.config = config or ProtocolBackendConfig()

    @property
    def device(self) -> str:
        """``protocol:<agent>.<owner>.<session>``: where answers come from, as for a device."""
        a = self.agent
        return f"protocol:{a.agent}.{a.owner}.{a.session_name}"

    @property
    def model(self) -> str:
        """The model it registered (an lmteams agent does), else its kind (``claude-code``)."""
        return self.agent.metadata.get("model") or self.agent.agent

    def _envelope(self, request: GenerateRequest) -> Envelope:
        options = PromptOptions(
            system=request.system,
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            seed=request.seed,
        )
        text = request.prompt
        if request.system and self.agent.agent != AGENT_KIND:
            text = f"{request.system}\n\n{request.prompt}"
        return Envelope(prompt=text, **{OPTIONS_FIELD: msgspec.to_builtins(options)})

    async def generate(self, request: GenerateRequest) -> Completion:
        envelope = self._envelope(request)
        texts: list[str] = []
        started = time.perf_counter()
        first: float | None = None
        try:
            # declared an iterator, made by an async generator: closed on any exit
            stream = cast(
                "AsyncGenerator[StreamMessage, None]",
                self.agent.prompt(
                    envelope, timeout=self.config.stall_s, max_wait_s=self.config.max_wait_s
                ),
            )
            async with contextlib.aclosing(stream) as chunks:
                async for chunk in chunks:
                    if isinstance(chunk, ResponseChunk):
                        first = time.perf_counter() if first is None else first
                        texts.append(chunk.text)
                    elif isinstance(chunk, Query):
                        await chunk.reply(_NO_ONE_TO_ASK)
        except (StreamStalledError, StreamMaxWaitExceededError) as err:
            raise BackendUnavailableError(
                f"protocol agent {self.agent.prompt_subject} stopped answering: {err}"
            ) from None
        except ProtocolError as err:
            code = _SERVICE_ERROR.match(str(err))
            gone = code[1] in _UNAVAILABLE if code else not await self._reachable()
            cls = BackendUnavailableError if gone else BackendError
            raise cls(f"protocol agent {self.agent.prompt_subject} refused: {err}") from None
        except NatsAgentError as err:  # refused before sending: too large, identity required
            raise BackendError(f"protocol agent {self.agent.prompt_subject}: {err}") from None
        done = time.perf_counter()
        first = done if first is None else first
        text = "".join(texts)
        return Completion(
            text=text,
            tokens_in=estimate_tokens(envelope.prompt) + estimate_tokens(request.system or ""),
            tokens_out=estimate_tokens(text),
            timings=Timings(prompt_s=first - started, generation_s=done - first),
            finish_reason="stop",
            device=self.device,
            model=self.model,
        )

    async def _reachable(self) -> bool:
        """Whether the agent still answers ``status``, asked after a reply made no sense.

        A stopped agent's subject has no subscriber, and the server then answers the prompt
        with a "no responders" status, which the caller SDK reads as a malformed chunk: the
        fault is not the prompt's, and another try (or member) may well succeed.
        """
        try:
            await self.agent.status(timeout_s=min(2.0, self.config.stall_s))
        except Exception:  # no responders, a timeout, a closed connection: all "not there"
            return False
        return True

    async def aclose(self) -> None:
        """Nothing to free: the caller SDK client belongs to ``open_protocol_backend``."""


def _tokens_match(agent: Agent, target: ProtocolTarget) -> bool:
    """Whether ``target`` names ``agent``'s subject tokens, as written or as the SDK escapes
    them: a name outside the token alphabet (capitals, spaces) is escaped in the subject and
    in what discovery reports, while a user knows the name (or copies the subject)."""
    tokens = agent.prompt_subject.split(".")[2:5]  # agents.prompt.<agent>.<owner>.<session>
    written = (target.agent, target.owner, target.session)
    spellings = [written]
    try:
        escaped = AgentSubject.new(target.agent, target.owner or "-", target.session or "-")
    except InvalidSubjectToken:
        pass
    else:
        spellings.append(
            (
                escaped.agent,
                None if target.owner is None else escaped.owner,
                None if target.session is None else escaped.session_name,
            )
        )
    return len(tokens) == len(written) and any(
        all(w is None or w == t for w, t in zip(wanted, tokens, strict=True))
        for wanted in spellings
    )


async def find_protocol_agent(
    agents: Agents, target: ProtocolTarget, *, discover_s: float = 2.0
) -> Agent:
    """The one discovered agent ``target`` names; ``ConfigError`` naming what is there else."""
    wanted = DiscoverFilter(agent=target.agent, owner=target.owner, session_name=target.session)
    found = await agents.discover(max_wait=discover_s)
    matches = [a for a in found if matches_filter(a.info, wanted) or _tokens_match(a, target)]
    if len(matches) == 1:
        return matches[0]
    seen = ", ".join(sorted(a.prompt_subject for a in found)) or "none"
    what = "no protocol agent" if not matches else f"{len(matches)} protocol agents"
    raise ConfigError(
        f"{what} on this bus match agent={target.agent!r} owner={target.owner!r} "
        f"session={target.session!r} (agents found: {seen}): name owner and session "
        "as in its subject agents.prompt.<agent>.<owner>.<session>"
    )


@contextlib.asynccontextmanager
async def open_protocol_backend(
    bus: Bus, target: ProtocolTarget, config: ProtocolBackendConfig | None = None
) -> AsyncIterator[ProtocolBackend]:
    """Find ``target`` on ``bus`` and answer with it for the duration of the block."""
    settings = config or ProtocolBackendConfig()
    agents = Agents(nc=bus.nc, stream_inactivity_timeout=settings.stall_s)
    try:
        agent = await find_protocol_agent(agents, target, discover_s=settings.discover_s)
        yield ProtocolBackend(agent, settings)
    finally:
        await agents.close()
