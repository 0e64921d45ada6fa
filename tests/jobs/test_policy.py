"""What the schedulers pick and when they look again, on hand-built views."""

from __future__ import annotations

import time

import pytest

from lmteams.jobs._board import JobView
from lmteams.jobs._graph import Subtask, TaskGraph
from lmteams.jobs._messages import JobOptions, JobRecord, JobSpec, SubtaskState, SubtaskStatus
from lmteams.jobs._participant import _staggered
from lmteams.jobs._policy import BACKUP_AFTER, POLL_S, straggler, wake_in

GRAPH = TaskGraph(name="wide", subtasks=tuple(Subtask(id=f"t{i}", title="T") for i in range(4)))


def _view(states: list[SubtaskState], **options: object) -> JobView:
    spec = JobSpec(id="j", graph=GRAPH, options=JobOptions(**options))  # type: ignore[arg-type]
    return JobView(
        record=JobRecord(spec=spec, admitted_at=0.0),
        record_rev=1,
        states=states,
        revisions=[1] * len(states),
        tallies={},
    )


def _states(now: float, *, claimed_ago: tuple[float, float], backups: tuple[str, ...] = ()):
    """Two subtasks done in 1 s each, two claimed ``claimed_ago`` seconds ago."""
    done = [
        SubtaskState(
            index=i, id=f"t{i}", status=SubtaskStatus.DONE, started_at=now - 9, ended_at=now - 8
        )
        for i in range(2)
    ]
    claimed = [
        SubtaskState(
            index=2 + k,
            id=f"t{2 + k}",
            status=SubtaskStatus.CLAIMED,
            holder=f"w{k}",
            claimed_at=now - ago,
            backups=backups if k == 0 else (),
        )
        for k, ago in enumerate(claimed_ago)
    ]
    return done + claimed


def test_the_longest_overdue_claim_without_a_backup_is_the_straggler() -> None:
    now = time.time()
    assert straggler(_view(_states(now, claimed_ago=(0.5, 0.9)))) is None
    assert straggler(_view(_states(now, claimed_ago=(3.0, 2.0)))) == 2
    # one already backed up is not backed up again
    assert straggler(_view(_states(now, claimed_ago=(3.0, 2.0), backups=("w9",)))) == 3


def test_nothing_committed_no_straggler() -> None:
    claimed = SubtaskState(
        index=0, id="t0", status=SubtaskStatus.CLAIMED, holder="w", claimed_at=1.0
    )
    assert straggler(_view([claimed])) is None


def test_a_driver_wakes_when_a_claim_turns_straggler() -> None:
    now = time.time()
    # typical 1 s: a claim turns late after BACKUP_AFTER s; one 1.4 s old is due in ~0.1 s
    view = _view(_states(now, claimed_ago=(BACKUP_AFTER - 0.1, 0.2)), backups=True)
    assert wake_in(view) == pytest.approx(0.1, abs=0.05)
    assert wake_in(view) < POLL_S


@pytest.mark.parametrize("options", [{"backups": False}, {"backups": True, "scheduling": "rounds"}])
def test_without_backups_a_driver_polls(options: dict[str, object]) -> None:
    now = time.time()
    assert wake_in(_view(_states(now, claimed_ago=(1.4, 0.2)), **options)) == POLL_S


def test_an_overdue_claim_nobody_can_back_up_does_not_spin_the_driver() -> None:
    now = time.time()
    view = _view(_states(now, claimed_ago=(5.0, 6.0)), backups=True)
    assert wake_in(view) == POLL_S
    assert wake_in(None) == POLL_S


def test_each_self_organizing_agent_tries_its_own_pick_first() -> None:
    team = ("a", "b", "c")
    ready = [7, 3, 9, 1]
    picks = [_staggered(ready, team, name)[0] for name in team]
    assert picks == [7, 3, 9]  # the team's first three tries are the three best, no race
    assert sorted(_staggered(ready, team, "c")) == sorted(ready)  # nothing dropped
    assert _staggered(ready, team, "stranger") == ready
    assert _staggered([5], team, "c") == [5]
    assert _staggered([4, 2], team, "c") == [4, 2]  # more agents than subtasks: wrap around
