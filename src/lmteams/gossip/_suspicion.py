"""Suspicion timers: when a suspect may be declared dead, counted in the observer's own time.

A timer belongs to one accusation, a (member, incarnation) pair. A suspicion at a newer
incarnation is a new accusation (the member was alive, and said so, after the old one) and
starts a fresh timer; keeping the old one would give the member's second refutation only
what was left of the time for its first.

A timer keeps when it started, not when it ends: the timeout is applied when the timers are
checked, for the group as it is then. A member that joins merges the whole table one row at
a time, and a deadline fixed at the merge would be computed for the few rows merged so far
(a group of 3, not of 256): the newcomer would declare a paused member dead in a fraction of
the time everyone else gives it, and its verdict would spread.

Timers run only while their owner is awake. Time it spent stopped or starved (its protocol
tick came late) is added back, because it could not hear refutations meanwhile: without
that, a member resumed from a pause declares dead, before it reads its backlog, every
suspect whose refutation is sitting in that backlog.
"""

from __future__ import annotations

__all__ = ("Suspicions",)


class Suspicions:
    """Open accusations, member -> (incarnation accused, start on the anyio clock)."""

    __slots__ = ("_timers",)

    def __init__(self) -> None:
        self._timers: dict[str, tuple[int, float]] = {}

    def __contains__(self, member: object) -> bool:
        return member in self._timers

    def __len__(self) -> int:
        return len(self._timers)

    def start(self, member: str, incarnation: int, now: float) -> None:
        """Time an accusation; an open timer for the same incarnation keeps running."""
        current = self._timers.get(member)
        if current is None or current[0] != incarnation:
            self._timers[member] = (incarnation, now)

    def clear(self, member: str) -> None:
        self._timers.pop(member, None)

    def defer(self, seconds: float) -> None:
        """Stop every timer for ``seconds`` the owner was deaf (stopped or starved)."""
        if seconds > 0:
            self._timers = {m: (inc, t + seconds) for m, (inc, t) in self._timers.items()}

    def expired(self, now: float, timeout: float) -> list[tuple[str, int]]:
        """Remove and return the accusations older than ``timeout``, as (member, inc)."""
        due = [(m, inc) for m, (inc, t) in self._timers.items() if t + timeout <= now]
        for member, _ in due:
            del self._timers[member]
        return due
