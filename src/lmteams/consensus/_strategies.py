"""The consensus strategies an agent daemon registers: ``load_strategies()`` calls this."""

from __future__ import annotations

from lmteams.agents import Strategy
from lmteams.consensus._debate import DebateStrategy
from lmteams.consensus._quorum import QuorumStrategy
from lmteams.consensus._vote import VoteStrategy

__all__ = ("strategies",)


def strategies() -> tuple[Strategy, ...]:
    """Fresh instances of vote, weighted, debate and quorum, with their default settings."""
    return (VoteStrategy(), VoteStrategy(weighted=True), DebateStrategy(), QuorumStrategy())
