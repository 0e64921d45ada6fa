"""Suspicion timers: one per accusation, restarted by a newer one, stopped while deaf."""

from __future__ import annotations

import pytest

from lmteams.errors import ConfigError
from lmteams.gossip import SwimConfig
from lmteams.gossip._suspicion import Suspicions


def test_a_timer_expires_once_after_the_timeout() -> None:
    timers = Suspicions()
    timers.start("a", 0, now=1.0)
    assert "a" in timers
    assert timers.expired(4.9, timeout=4.0) == []
    assert timers.expired(5.0, timeout=4.0) == [("a", 0)]
    assert timers.expired(9.0, timeout=4.0) == []
    assert "a" not in timers


def test_the_same_accusation_keeps_its_start() -> None:
    timers = Suspicions()
    timers.start("a", 1, now=1.0)
    timers.start("a", 1, now=4.0)  # heard again from another accuser
    assert timers.expired(5.0, timeout=4.0) == [("a", 1)]


def test_an_accusation_at_a_newer_incarnation_starts_afresh() -> None:
    # the member refuted the first one: its second refutation gets a whole timer
    timers = Suspicions()
    timers.start("a", 1, now=1.0)
    timers.start("a", 2, now=4.0)
    assert timers.expired(7.0, timeout=4.0) == []
    assert timers.expired(8.0, timeout=4.0) == [("a", 2)]


def test_the_timeout_is_the_one_at_expiry() -> None:
    # a newcomer starts timers while its table is a few rows long; the group it then
    # knows, not the group it knew at the merge, sets the timeout
    config = SwimConfig(period_s=0.1)
    timers = Suspicions()
    timers.start("a", 0, now=0.0)
    assert timers.expired(config.dead_timeout(3), timeout=config.dead_timeout(256)) == []
    assert timers.expired(config.dead_timeout(256), timeout=config.dead_timeout(256)) == [("a", 0)]


def test_time_spent_deaf_does_not_count() -> None:
    timers = Suspicions()
    timers.start("a", 0, now=1.0)
    timers.start("b", 0, now=2.0)
    timers.defer(3.0)  # the owner was stopped for 3 s and heard nothing
    timers.defer(-1.0)  # an early tick gives no time back
    assert timers.expired(7.9, timeout=4.0) == []
    assert timers.expired(8.0, timeout=4.0) == [("a", 0)]
    timers.clear("b")
    assert len(timers) == 0


def test_death_waits_for_the_timeout_and_the_refutation() -> None:
    config = SwimConfig(period_s=0.1, suspicion_mult=4.0)
    assert config.suspicion_timeout(8) == pytest.approx(0.4)
    assert config.refute_allowance(8) == pytest.approx(0.4)  # ceil(log2 9) periods
    assert config.dead_timeout(8) == pytest.approx(0.8)
    assert SwimConfig(refute_mult=0).dead_timeout(100) == SwimConfig().suspicion_timeout(100)
    with pytest.raises(ConfigError):
        SwimConfig(refute_fanout=-1)
