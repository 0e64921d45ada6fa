"""One backoff policy for every retry in lmteams: reconnects, JetStream calls, restarts.

Each delay is jittered (by default uniformly between zero and its exponential ceiling),
because clients that fail together (a server restarts, a leader is re-elected, one bad
input crashes every agent) otherwise retry together, in lock-step, and fail together again.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
import msgspec
import structlog

from lmteams.errors import BusError, ConfigError

__all__ = ("Backoff", "BackoffCounter", "retrying")

log = structlog.get_logger(__name__)
T = TypeVar("T")


class Backoff(msgspec.Struct, frozen=True, kw_only=True):
    """Delays that grow by ``factor`` from ``initial_s`` up to ``max_s``.

    ``jitter`` is the fraction of each delay drawn at random: 1 (full jitter) waits
    uniformly between 0 and the ceiling, 0 waits exactly the ceiling.
    """

    initial_s: float = 0.1
    max_s: float = 5.0
    factor: float = 2.0
    jitter: float = 1.0

    def __post_init__(self) -> None:
        # the two times come from users' configs and are only clamped (the cap wins, never
        # below 0): a restart loop must not die of its settings; these two are the code's own
        if self.factor < 1 or not 0 <= self.jitter <= 1:
            raise ConfigError(f"backoff needs factor >= 1 and 0 <= jitter <= 1, not {self}")

    def ceiling(self, attempt: int) -> float:
        """The longest wait before retry number ``attempt`` (counted from 0)."""
        try:
            grown = self.initial_s * self.factor ** max(0, attempt)
        except OverflowError:  # a very long run of failures: long since at the cap
            grown = self.max_s
        return max(0.0, min(self.max_s, grown))

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        ceiling = self.ceiling(attempt)
        return ceiling * (1 - self.jitter * (rng or random).random())

    def counter(self, rng: random.Random | None = None) -> BackoffCounter:
        return BackoffCounter(self, rng)


class BackoffCounter:
    """A policy plus the failures seen so far, for loops that reset once things recover."""

    def __init__(self, policy: Backoff, rng: random.Random | None = None) -> None:
        self.policy = policy
        self.attempt = 0
        self._rng = rng

    def next_delay(self) -> float:
        delay = self.policy.delay(self.attempt, self._rng)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0


async def retrying(
    what: str,
    call: Callable[[], Awaitable[T]],
    *,
    retry_on: tuple[type[Exception], ...],
    timeout: float,
    backoff: Backoff,
    hint: str = "",
) -> T:
    """Await ``call`` until it succeeds, retrying ``retry_on`` errors for ``timeout`` seconds.

    Only for calls that are safe to repeat; any other error propagates at once. After the
    deadline the caller gets a BusError naming ``what`` (and ``hint``, the likely cause).

    ``call`` must bound each try itself (a request timeout): the first try runs outside the
    deadline's cancel scope, so the common case, a call that succeeds at once, pays for no
    scope and no counter (this sits on every stored result and every duplicate check).
    """
    deadline = anyio.current_time() + timeout
    try:
        return await call()
    except retry_on as err:
        failed = err
    counter = backoff.counter()
    with anyio.move_on_at(deadline):
        while True:
            delay = counter.next_delay()
            log.debug("bus.retry", what=what, error=type(failed).__name__, in_s=round(delay, 3))
            await anyio.sleep(delay)
            try:
                return await call()
            except retry_on as err:
                failed = err
    cause = f" ({hint})" if hint else ""
    raise BusError(f"{what} did not succeed within {timeout:g}s{cause}")
