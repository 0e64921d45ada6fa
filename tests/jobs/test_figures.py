"""build_result on hand-built views: the arithmetic of a job's figures, checked exactly."""

from __future__ import annotations

import msgspec
import pytest

from lmteams.jobs._board import JobView
from lmteams.jobs._figures import build_result
from lmteams.jobs._graph import Subtask, TaskGraph
from lmteams.jobs._messages import (
    AgentTally,
    JobOptions,
    JobRecord,
    JobSpec,
    JobStatus,
    SubtaskState,
    SubtaskStatus,
)

ADMITTED = 100.0


def _diamond(**graph: str) -> TaskGraph:
    """a -> (b, c) -> d, where c is the heaviest by *estimated* tokens (b is by measured time)."""
    return TaskGraph(
        name="diamond",
        subtasks=(
            Subtask(id="a", title="A"),
            Subtask(id="b", title="B", deps=("a",), work_tokens=10),
            Subtask(id="c", title="C", deps=("a",), work_tokens=5000),
            Subtask(id="d", title="D", deps=("b", "c")),
        ),
        **graph,
    )


def _done(
    index: int, task_id: str, agent: str, start: float, end: float, *, attempt: int = 1
) -> SubtaskState:
    return SubtaskState(
        index=index,
        id=task_id,
        status=SubtaskStatus.DONE,
        agent=agent,
        holder=agent,
        output=f"out-{task_id}",
        prompt=f"prompt-{task_id}",
        tokens_in=10 * (index + 1),
        tokens_out=100 * (index + 1),
        started_at=start,
        ended_at=end,
        attempt=attempt,
        releases=attempt - 1,
    )


def _view(
    graph: TaskGraph,
    states: list[SubtaskState],
    *,
    options: JobOptions | None = None,
    participants: tuple[str, ...] = ("w1", "w2"),
    tallies: tuple[AgentTally, ...] = (),
    status: JobStatus = JobStatus.DONE,
    error: str = "",
) -> JobView:
    spec = JobSpec(id="job-1", graph=graph, options=options or JobOptions())
    record = JobRecord(
        spec=spec,
        status=status,
        admitted_at=ADMITTED,
        ended_at=ADMITTED + 20,
        participants=participants,
        round=4,
        error=error,
    )
    return JobView(
        record=record,
        record_rev=7,
        states=states,
        revisions=list(range(1, len(states) + 1)),
        tallies={t.agent: t for t in tallies},
    )


# a: 101-103 (2 s), b: 103-108 (5 s), c: 103-106 (3 s), d: 109-110 (1 s), admitted at 100
DIAMOND_STATES = [
    _done(0, "a", "w1", 101.0, 103.0),
    _done(1, "b", "w1", 103.0, 108.0, attempt=2),
    _done(2, "c", "w2", 103.0, 106.0),
    _done(3, "d", "w2", 109.0, 110.0, attempt=3),
]
TALLIES = (
    AgentTally(
        agent="w1",
        attempts=3,
        commits=2,
        claims=2,
        conflicts=1,
        busy_s=7.0,
        tokens_in=30,
        tokens_out=300,
        coordination_tokens_in=5,
        coordination_tokens_out=6,
    ),
    AgentTally(
        agent="w2",
        attempts=4,
        commits=2,
        claims=3,
        conflicts=2,
        fenced=1,
        released=1,
        backups=2,
        backups_lost=1,
        busy_s=6.5,
        wasted_s=2.5,
        backup_s=1.5,
        tokens_in=70,
        tokens_out=700,
        coordination_tokens_in=50,
        coordination_tokens_out=60,
    ),
)


def test_diamond_figures_are_exact() -> None:
    result = build_result(_view(_diamond(), DIAMOND_STATES, tallies=TALLIES), bus_messages=42)
    f = result.figures
    assert f is not None
    assert f.agents == 2  # options.agents = 0: the participants
    assert f.makespan_s == pytest.approx(10.0)  # admission (100) to the last commit (110)
    assert f.work_s == pytest.approx(11.0)
    # measured chain a-b-d (2 + 5 + 1), not a-c-d, which the token estimates call heaviest
    assert f.span_s == pytest.approx(8.0)
    assert f.speedup == pytest.approx(1.1)
    assert f.parallel_fraction == pytest.approx(0.25)  # (4 - 3) / 4
    assert f.amdahl_bound == pytest.approx(1 / (0.75 + 0.25 / 2))
    assert f.work_span_bound == pytest.approx(11 / 8)  # below n = 2
    assert f.bound_fraction == pytest.approx(1.1 / (11 / 8))
    assert (f.tokens_in, f.tokens_out) == (100, 1000)
    assert (f.coordination_tokens_in, f.coordination_tokens_out) == (55, 66)
    assert (f.claims, f.conflicts, f.releases, f.fenced) == (5, 3, 1, 1)
    assert (f.backups, f.backups_lost, f.backup_extra_s) == (2, 1, 1.5)
    assert f.redeliveries == 3  # b's second attempt, d's second and third
    assert (f.rounds, f.bus_messages) == (4, 42)
    assert f.busy_s == {"w1": 7.0, "w2": 6.5}
    assert f.idle_s == pytest.approx({"w1": 3.0, "w2": 3.5})


def test_result_carries_the_sinks_outputs_and_every_subtask() -> None:
    result = build_result(_view(_diamond(), DIAMOND_STATES))
    assert (result.job_id, result.status, result.graph) == ("job-1", JobStatus.DONE, "diamond")
    assert (result.architecture, result.scheduling) == ("centralized", "async")
    assert result.outputs == {"d": "out-d"}
    assert [s.id for s in result.subtasks] == ["a", "b", "c", "d"]
    b = result.subtasks[1]
    assert (b.agent, b.prompt, b.output, b.attempts, b.releases) == (
        "w1",
        "prompt-b",
        "out-b",
        2,
        1,
    )
    assert (b.tokens_in, b.tokens_out, b.started_at, b.ended_at) == (20, 200, 103.0, 108.0)
    assert (result.admitted_at, result.ended_at) == (ADMITTED, ADMITTED + 20)


def test_final_names_the_one_output() -> None:
    result = build_result(_view(_diamond(final="b"), DIAMOND_STATES))
    assert result.outputs == {"b": "out-b"}


def test_every_sink_is_an_output_without_final() -> None:
    fork = TaskGraph(
        name="fork",
        subtasks=(
            Subtask(id="root", title="R"),
            Subtask(id="left", title="L", deps=("root",)),
            Subtask(id="right", title="R", deps=("root",)),
        ),
    )
    states = [
        _done(0, "root", "w1", 100.0, 101.0),
        _done(1, "left", "w1", 101.0, 102.0),
        _done(2, "right", "w2", 101.0, 104.0),
    ]
    result = build_result(_view(fork, states, options=JobOptions(agents=5)))
    assert result.outputs == {"left": "out-left", "right": "out-right"}
    f = result.figures
    assert f is not None
    assert f.agents == 5  # the option wins over the participants
    assert f.span_s == pytest.approx(4.0)
    assert f.work_span_bound == pytest.approx(5.0 / 4.0)
    # a participant that wrote no tally was idle the whole job
    assert f.busy_s == {"w1": 0.0, "w2": 0.0}
    assert f.idle_s == pytest.approx({"w1": 4.0, "w2": 4.0})


def test_a_job_that_committed_nothing_has_zero_figures() -> None:
    states = [
        SubtaskState(index=0, id="a", status=SubtaskStatus.FAILED, attempt=3, error="boom"),
        SubtaskState(index=1, id="b"),
        SubtaskState(index=2, id="c"),
        SubtaskState(index=3, id="d"),
    ]
    view = _view(
        _diamond(),
        states,
        participants=(),
        status=JobStatus.FAILED,
        error="subtask a failed",
        options=JobOptions(architecture="decentralized", scheduling="rounds"),
    )
    result = build_result(view)
    assert (result.status, result.error, result.outputs) == (
        JobStatus.FAILED,
        "subtask a failed",
        {},
    )
    assert (result.architecture, result.scheduling) == ("decentralized", "rounds")
    assert result.subtasks[0].status is SubtaskStatus.FAILED
    assert result.subtasks[0].error == "boom"
    f = result.figures
    assert f is not None
    assert f.agents == 1  # nobody listed: still at least one
    assert (f.makespan_s, f.work_s, f.span_s, f.speedup) == (0.0, 0.0, 0.0, 0.0)
    assert (f.work_span_bound, f.bound_fraction) == (0.0, 0.0)
    assert f.amdahl_bound == pytest.approx(1.0)  # n = 1
    assert f.redeliveries == 2


def test_a_subtask_a_backup_won_lasts_from_its_first_claim() -> None:
    """The backup's own (short) draw is not the subtask's duration: the job waited on the
    first copy from its claim, so the bound is one a schedule of these durations can meet."""
    chain = TaskGraph(
        name="chain",
        subtasks=(Subtask(id="a", title="A"), Subtask(id="b", title="B", deps=("a",))),
    )
    backed_up = msgspec.structs.replace(
        _done(1, "b", "w2", 108.0, 110.0), holder="w1", claimed_at=102.0, backups=("w2",)
    )
    # the first copy's holder committed after all: its own start counts, not the claim
    held = msgspec.structs.replace(
        _done(0, "a", "w1", 100.5, 102.0), claimed_at=100.2, backups=("w2",)
    )
    f = build_result(_view(chain, [held, backed_up])).figures
    assert f is not None
    assert f.work_s == pytest.approx(1.5 + 8.0)
    assert f.span_s == pytest.approx(9.5)
    assert f.makespan_s == pytest.approx(10.0)
    assert f.bound_fraction == pytest.approx((9.5 / 10.0) / 1.0)


def test_measured_span_weighs_each_subtask_by_its_duration() -> None:
    graph = _diamond()
    assert graph.measured_span({"a": 2.0, "b": 5.0, "c": 3.0, "d": 1.0}) == pytest.approx(8.0)
    assert graph.measured_span({"a": 2.0, "c": 30.0}) == pytest.approx(32.0)  # absent: 0
