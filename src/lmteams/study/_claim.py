"""How a simulated agent answers the job engine's claim prompt (``choose = "model"``).

A decentralized agent that chooses with its model is shown the job board (its name, what is
done, the ready subtasks best first) and names the one it will take; the engine then claims
that subtask by compare-and-set, and a stale or colliding choice is a real lost claim. A
simulated model has no reasoning, so its answer is drawn here, with a settable quality:

- a *good* answer spreads the team by the agent's own name: agent ``agent-k`` names the k-th
  ready subtask (wrapping), what a model that read the board and its name sensibly would do;
- a *bad* one (with probability ``error``) names the first subtask listed, as a weak model
  echoing the board does: every bad chooser reaching for the same subtask makes real
  conflicts, each lost claim a compare-and-set refused by the bucket.

Only the answer's text is decided here; its latency and tokens are the backend's, so the
engine meters this call as coordination like any model's.
"""

from __future__ import annotations

import random
import re
import zlib
from typing import NamedTuple

__all__ = ("ClaimPrompt", "answer_claim", "parse_claim_prompt")

_AGENT = re.compile(r"^You are agent (\S+) in a team working on ", re.MULTILINE)
_READY = "Ready subtasks (id: title):\n"
_ASK = "Answer with the id of the one subtask you will take"


class ClaimPrompt(NamedTuple):
    """What a claim prompt shows: who asks, and the ready subtask ids, best first."""

    agent: str
    ready: tuple[str, ...]


def parse_claim_prompt(prompt: str) -> ClaimPrompt | None:
    """The board a claim prompt shows, or None for any other prompt (work is answered as
    work: a subtask's own text never carries all three markers)."""
    agent = _AGENT.search(prompt)
    start, end = prompt.find(_READY), prompt.find(_ASK)
    if agent is None or start < 0 or end < start:
        return None
    lines = prompt[start + len(_READY) : end].splitlines()
    ready = tuple(line.split(":", 1)[0].strip() for line in lines if ":" in line)
    return ClaimPrompt(agent.group(1), ready) if ready else None


def _position(agent: str) -> int:
    """The agent's place in its team as its name suggests: ``agent-3`` -> 3; a name with no
    trailing number gets a stable hash, so its choices still differ from its peers'."""
    digits = re.search(r"(\d+)$", agent)
    return int(digits.group(1)) if digits else zlib.crc32(agent.encode())


def answer_claim(prompt: str, rng: random.Random, error: float) -> str | None:
    """A simulated model's reply to a claim prompt, or None when ``prompt`` is not one."""
    board = parse_claim_prompt(prompt)
    if board is None:
        return None
    if rng.random() < error:
        return board.ready[0]
    return board.ready[_position(board.agent) % len(board.ready)]
