"""Infection-style dissemination: which updates ride on the next protocol message.

Each update is piggybacked a bounded number of times (λ·log N) and the least-sent go first,
so a fresh update overtakes old news and a burst of changes costs bytes, never messages.
A newer update about a member replaces the queued one: only the latest belief is worth sending.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection

from lmteams.gossip._messages import Update

__all__ = ("BroadcastQueue",)


class BroadcastQueue:
    """Updates waiting to be piggybacked, keyed by member, with their transmit counts."""

    __slots__ = ("_items", "_seq")

    def __init__(self) -> None:
        self._items: dict[str, tuple[Update, int, int]] = {}  # member -> update, sent, -seq
        self._seq = 0

    def __len__(self) -> int:
        return len(self._items)

    def push(self, update: Update) -> None:
        """Queue ``update`` with a fresh count, replacing older news about the same member."""
        self._seq += 1
        self._items[update.member] = (update, 0, -self._seq)

    def take(self, limit: int, max_transmits: int, *, skip: Collection[str] = ()) -> list[Update]:
        """Up to ``limit`` updates, least-transmitted first, newest first among equals;
        retire those sent enough times.

        ``skip`` leaves out members already placed in the message (the buddy update, a
        fresh refutation); their queued updates keep their counts.
        """
        if limit <= 0 or not self._items:
            return []
        items = self._items
        chosen = heapq.nsmallest(
            limit, (key for key in items if key not in skip), key=lambda key: items[key][1:]
        )
        out: list[Update] = []
        for key in chosen:
            update, sent, order = items[key]
            out.append(update)
            if sent + 1 >= max_transmits:
                del items[key]
            else:
                items[key] = (update, sent + 1, order)
        return out
