"""Counting votes: plurality with weights and a deterministic tie-break."""

from __future__ import annotations

import math
from collections.abc import Iterable

import msgspec

__all__ = ("Tally", "plurality", "majority_probability")


class Tally(msgspec.Struct, frozen=True, kw_only=True):
    counts: dict[str, float]
    winner: str  # "" when nobody gave a readable answer
    support: float  # weight behind the winner
    total: float  # weight of all readable votes
    tied: bool  # the winner was picked by the tie-break


def plurality(ballots: Iterable[tuple[str, float]]) -> Tally:
    """Most weight wins; among equals the smallest answer (as text) wins, so every agent
    that counts the same ballots reaches the same decision. Empty answers abstain."""
    counts: dict[str, float] = {}
    for answer, weight in ballots:
        if answer:
            counts[answer] = counts.get(answer, 0.0) + weight
    if not counts:
        return Tally(counts={}, winner="", support=0.0, total=0.0, tied=False)
    best = max(counts.values())
    leaders = sorted(a for a, w in counts.items() if math.isclose(w, best))
    return Tally(
        counts=counts,
        winner=leaders[0],
        support=best,
        total=sum(counts.values()),
        tied=len(leaders) > 1,
    )


def majority_probability(p: float, n: int) -> float:
    """P(a strict majority of n independent voters is right) when each is right with p.

    The Condorcet jury curve: above p = 0.5 more voters help, below it they hurt. Ties (even
    n) count as half right, which is what a fair coin tie-break gives.
    """
    total = 0.0
    for k in range(n + 1):
        mass = math.comb(n, k) * p**k * (1 - p) ** (n - k)
        if 2 * k > n:
            total += mass
        elif 2 * k == n:
            total += mass / 2
    return total
