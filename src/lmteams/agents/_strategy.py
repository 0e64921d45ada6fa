"""How an agent that pulled a task gets other agents to answer it: the strategy hook.

``single`` is built in. Multi-agent strategies (vote, weighted, debate, quorum) live in
``lmteams.consensus`` and register here when it is imported, so that agents never import the
layer above them; the agent that pulled the task coordinates it with the registered strategy.
"""

from __future__ import annotations

import zlib
from typing import Protocol

import msgspec

from lmteams.agents._identity import AgentIdentity
from lmteams.agents._messages import AgentAnswer, Answer, Prompt, Task
from lmteams.agents._ref import ActorRef
from lmteams.agents._roster import Roster
from lmteams.bus import Bus, Subjects

__all__ = (
    "Strategy",
    "StrategyContext",
    "Outcome",
    "register_strategy",
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
    """The coordinating agent's view: the bus, who is live, its identity, how to ask others."""

    def __init__(
        self,
        *,
        bus: Bus,
        subjects: Subjects,
        agent_id: str,
        roster: Roster,
        identity: AgentIdentity,
        ask_timeout_s: float,
    ) -> None:
        self.bus = bus
        self.subjects = subjects
        self.agent_id = agent_id
        self.roster = roster
        self.identity = identity
        self.ask_timeout_s = ask_timeout_s

    async def ask(self, agent: str, prompt: Prompt) -> Answer:
        """One agent's answer to a prompt (this agent included: its mailbox is free)."""
        ref = ActorRef(self.bus, self.subjects, agent)
        return await ref.ask(
            prompt, expect=Answer, timeout=self.ask_timeout_s, sender=self.agent_id
        )


class Strategy(Protocol):
    name: str

    async def run(self, ctx: StrategyContext, task: Task) -> Outcome: ...


_REGISTRY: dict[str, Strategy] = {}


def register_strategy(strategy: Strategy) -> None:
    _REGISTRY[strategy.name] = strategy


def get_strategy(name: str) -> Strategy | None:
    return _REGISTRY.get(name)


def registered_strategies() -> tuple[str, ...]:
    return ("single", *sorted(_REGISTRY))


def agent_seed(task_id: str, agent: str) -> int:
    """A sampling seed per (task, agent): independent answers, reproducible runs."""
    return zlib.crc32(f"{task_id}/{agent}".encode()) & 0x7FFFFFFF
