"""SWIM's knobs, and the ones that scale with the group: suspicion time and retransmissions.

Defaults follow memberlist's LAN profile (1 s period, k = 3), with suspicion at 5·log10 N
periods rather than 4. The suspicion timeout is a promise to slow members: one that is
silent (stopped, starved, paused) for less than it is never declared dead. Keeping that
promise takes more than the timeout itself, because a suspect can only refute once it runs
again and its refutation then has to travel to every accuser: so an observer declares a
suspect dead only after the timeout *plus* a refutation allowance of a few rounds of
gossip (``dead_timeout``). Tests and benchmarks shrink the period, and every other duration
is a fraction or multiple of it, so a fast configuration behaves like the slow one, only
sooner.
"""

from __future__ import annotations

import math

import msgspec

from lmteams.errors import ConfigError

__all__ = ("SwimConfig",)


class SwimConfig(msgspec.Struct, frozen=True, kw_only=True):
    """How one member runs the protocol; every member of a team should use the same values."""

    period_s: float = 1.0
    """One protocol period: each member probes one peer per period."""
    ping_timeout_s: float | None = None
    """Deadline of a direct ping; default 30 % of the period (the rest is for ping-reqs)."""
    indirect_probes: int = 3
    """k: how many members are asked to probe a target that missed its direct ping."""
    suspicion_mult: float = 5.0
    """A member silent for less than suspicion_mult · max(1, log10 N) periods is never
    declared dead (see ``suspicion_timeout``)."""
    refute_mult: float = 1.0
    """A refutation is given refute_mult · ceil(log2(N + 1)) periods to reach the accusers,
    on top of the suspicion timeout (see ``dead_timeout``)."""
    refute_fanout: int = 3
    """How many members a refuting member tells directly, besides its accuser."""
    retransmit_mult: int = 2
    """Each update is piggybacked retransmit_mult · ceil(log2(N + 1)) times."""
    max_piggyback: int = 8
    """Updates per protocol message at most: bytes per message stay bounded."""
    sync_every: int = 10
    """Anti-entropy: a full-state push-pull with a random member every this many periods."""
    reconnect_every: int = 10
    """A push-pull with a random member held dead, every this many periods on average.

    Probes and anti-entropy go to live members only, so two halves of a team that were cut
    apart (a route down) and see each other dead would never talk again once the cut is
    repaired; a dead member that hears of its own death refutes it, and the halves merge.
    Where the member is really gone the request meets no responder at once: cheap."""
    leave_fanout: int = 3
    """How many members a leaving member tells directly before it goes."""

    def __post_init__(self) -> None:
        if self.period_s <= 0:
            raise ConfigError(f"period_s must be > 0, got {self.period_s}")
        if self.ping_timeout_s is not None and not 0 < self.ping_timeout_s < self.period_s:
            raise ConfigError(
                f"ping_timeout_s must be in (0, period_s={self.period_s}), "
                f"got {self.ping_timeout_s}"
            )
        if (
            self.indirect_probes < 0
            or self.max_piggyback < 1
            or min(self.sync_every, self.reconnect_every) < 1
        ):
            raise ConfigError(
                "indirect_probes must be >= 0, max_piggyback, sync_every and reconnect_every "
                f">= 1 (got {self.indirect_probes}, {self.max_piggyback}, {self.sync_every}, "
                f"{self.reconnect_every})"
            )
        if self.suspicion_mult <= 0 or self.retransmit_mult < 1:
            raise ConfigError("suspicion_mult must be > 0 and retransmit_mult >= 1")
        if self.refute_mult < 0 or self.refute_fanout < 0:
            raise ConfigError(
                f"refute_mult and refute_fanout must be >= 0 "
                f"(got {self.refute_mult}, {self.refute_fanout})"
            )

    @property
    def ping_timeout(self) -> float:
        return self.ping_timeout_s if self.ping_timeout_s is not None else 0.3 * self.period_s

    @property
    def indirect_timeout(self) -> float:
        """What is left of the period after the direct ping, less a margin for the next tick."""
        return max(0.9 * self.period_s - self.ping_timeout, 0.1 * self.period_s)

    def suspicion_timeout(self, members: int) -> float:
        """Seconds a member may be silent and still never be declared dead: longer in bigger
        groups, where news travels longer."""
        return self.suspicion_mult * max(1.0, math.log10(max(members, 1))) * self.period_s

    def refute_allowance(self, members: int) -> float:
        """Seconds a refutation gets to travel: a few rounds of gossip, log2 N of them."""
        return self.refute_mult * math.ceil(math.log2(max(members, 1) + 1)) * self.period_s

    def dead_timeout(self, members: int) -> float:
        """Seconds from an observer's suspicion to its declaring death.

        The observer suspects no earlier than the member fell silent; a member silent for
        less than ``suspicion_timeout`` refutes before that timeout has run out, and the
        allowance is for the refutation to arrive.
        """
        return self.suspicion_timeout(members) + self.refute_allowance(members)

    def retransmit_limit(self, members: int) -> int:
        return self.retransmit_mult * max(1, math.ceil(math.log2(max(members, 1) + 1)))
