"""How an agent that pulled a task gets other agents to answer it: the strategy hook.

``single`` is built in. Multi-agent strategies (vote, weighted, debate, quorum) live in
``lmteams.consensus``; an agent daemon registers them when it is assembled, by calling
``load_strategies()``, and the agent that pulled a task coordinates it with the registered
strategy. Registration is an explicit call, never a side effect of importing a package: what
an agent can do does not depend on which modules happened to be imported first. Providers
are named as ``"module:function"`` and resolved at the call, so agents never import the layer
above them.
"""

from __future__ import annotations

import importlib
import zlib
from collections.abc import Iterable
from typing import Protocol

import msgspec

from lmteams import tracing
from lmteams.agents._identity import AgentIdentity
from lmteams.agents._membership import Membership
from lmteams.agents._messages import AgentAnswer, Answer, Prompt, Task
from lmteams.agents._ref import ActorRef
from lmteams.bus import Bus, Subjects

__all__ = (
    "Strategy",
    "StrategyContext",
    "Outcome",
    "register_strategy",
    "load_strategies",
    "get_strategy",
    "registered_strategies",
    "agent_seed",
)


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """What a strategy decided, and what it cost."""

    ok: bool
    answer: str = ""
    error: str = ""
    error_kind: str = ""
    answers: tuple[AgentAnswer, ...] = ()
    rounds: int = 1
    messages: int = 0
    tally: dict[str, float] = {}
    flagged: tuple[str, ...] = ()


class StrategyContext:
    """The coordinating agent's view: the bus, the team's membership (who is available, with
    which bound key), its own identity, and how to ask others."""

    def __init__(
        self,
        *,
        bus: Bus,
        subjects: Subjects,
        agent_id: str,
        membership: Membership,
        identity: AgentIdentity,
        ask_timeout_s: float,
    ) -> None:
        self.bus = bus
        self.subjects = subjects
        self.agent_id = agent_id
        self.membership = membership
        self.identity = identity
        self.ask_timeout_s = ask_timeout_s

    async def ask(self, agent: str, prompt: Prompt) -> Answer:
        """One agent's answer to a prompt (this agent included: its mailbox is free)."""
        ref = ActorRef(self.bus, self.subjects, agent)
        attributes: dict[str, tracing.AttributeValue] = {"lmteams.team": self.subjects.team}
        attributes["lmteams.agent"] = self.agent_id
        attributes |= {"lmteams.task": prompt.task_id, "lmteams.round": prompt.round}
        attributes["lmteams.peer"] = agent
        with tracing.span(f"ask {agent}", kind="client", attributes=attributes):
            return await ref.ask(
                prompt, expect=Answer, timeout=self.ask_timeout_s, sender=self.agent_id
            )


class Strategy(Protocol):
    name: str

    async def run(self, ctx: StrategyContext, task: Task) -> Outcome: ...


_REGISTRY: dict[str, Strategy] = {}


def register_strategy(strategy: Strategy) -> None:
    _REGISTRY[strategy.name] = strategy


BUILTIN_STRATEGIES = "lmteams.consensus:strategies"
"""The provider of vote, weighted, debate and quorum: a function returning strategies."""


def load_strategies(*providers: str) -> tuple[str, ...]:
    """Register what each ``"module:function"`` provider returns; the built-ins by default.

    Idempotent (a strategy registered again replaces itself). Returns the names now
    registered, ``single`` included.
    """
    for provider in providers or (BUILTIN_STRATEGIES,):
        module, _, function = provider.partition(":")
        make: object = getattr(importlib.import_module(module), function)
        if not callable(make):
            raise TypeError(f"strategy provider {provider!r} is not a function")
        found: Iterable[Strategy] = make()
        for strategy in found:
            register_strategy(strategy)
    return registered_strategies()


def get_strategy(name: str) -> Strategy | None:
    return _REGISTRY.get(name)


def registered_strategies() -> tuple[str, ...]:
    return ("single", *sorted(_REGISTRY))


def agent_seed(task_id: str, agent: str) -> int:
    """A sampling seed per (task, agent): independent answers, reproducible runs."""
    return zlib.crc32(f"{task_id}/{agent}".encode()) & 0x7FFFFFFF
