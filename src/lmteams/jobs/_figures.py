"""A job's result: its outputs, a record per subtask, and the job measured as a computation.

Pure: it reads one :class:`JobView` and nothing else, so whoever ends a job (the
coordinator, the last decentralized committer) publishes the same result from the same
state, and tests check the arithmetic on views built by hand.

A subtask's duration is the time it held the job up: from the start of its committed
attempt to the commit, or, where a backup copy won, from the claim its first copy ran under
(the backup ran beside that copy; without it the subtask would have run on). Every copy
beside the first, won or lost, is work the team added (``backup_extra_s``); a fenced
completion is counted in the tallies: neither is work the job needed. ``work_s`` sums the
durations and ``span_s`` is their heaviest dependency chain. Every duration is covered by
one agent running the subtask's first copy, so no schedule of them on ``n`` agents beats
``min(n, work_s / span_s)``, the work/span bound ``bound_fraction`` compares the speedup
to. Counting a winning backup's own time instead would credit the job with a draw it only
got by backing up, a bound no schedule could reach: backups would then lower the fraction
while they cut the makespan (``benchmarks/job_makespan.py`` reports that reading beside).
"""

from __future__ import annotations

from lmteams.jobs._board import JobView
from lmteams.jobs._messages import (
    JobFigures,
    JobResult,
    SubtaskRecord,
    SubtaskState,
    SubtaskStatus,
)

__all__ = ("build_result",)


def build_result(view: JobView, *, bus_messages: int = 0) -> JobResult:
    """The result of the job ``view`` shows (whatever its status: a failed job has one too).

    ``bus_messages`` is what the server counted for the job, when the caller knows it.
    """
    record = view.record
    graph = record.spec.graph
    options = record.spec.options
    done = {s.id: s for s in view.states if s.status is SubtaskStatus.DONE}
    return JobResult(
        job_id=record.spec.id,
        status=record.status,
        graph=graph.name,
        architecture=options.architecture,
        scheduling=options.scheduling,
        outputs={i: done[i].output for i in graph.result_ids if i in done},
        subtasks=tuple(_subtask_record(s) for s in view.states),
        figures=_figures(view, done, bus_messages),
        error=record.error,
        admitted_at=record.admitted_at,
        ended_at=record.ended_at,
    )


def _subtask_record(s: SubtaskState) -> SubtaskRecord:
    return SubtaskRecord(
        id=s.id,
        status=s.status,
        agent=s.agent,
        prompt=s.prompt,
        output=s.output,
        error=s.error,
        tokens_in=s.tokens_in,
        tokens_out=s.tokens_out,
        started_at=s.started_at,
        ended_at=s.ended_at,
        attempts=s.attempt,
        releases=s.releases,
    )


def _duration(s: SubtaskState) -> float:
    began = s.started_at
    if s.holder and s.agent != s.holder and s.claimed_at:
        began = min(began, s.claimed_at)  # a backup won: the first copy began the subtask
    return max(0.0, s.ended_at - began)


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else 0.0


def _figures(view: JobView, done: dict[str, SubtaskState], bus_messages: int) -> JobFigures:
    record = view.record
    worked = [t.agent for t in view.tallies.values() if t.attempts]
    n = max(1, record.spec.options.agents or len(record.participants) or len(worked))
    last = max((s.ended_at for s in done.values()), default=0.0)
    makespan = max(0.0, last - record.admitted_at) if done else 0.0
    durations = {i: _duration(s) for i, s in done.items()}
    work = sum(durations.values())
    span = record.spec.graph.measured_span(durations)
    speedup = _ratio(work, makespan)
    p = record.spec.graph.parallel_fraction
    work_span_bound = min(float(n), _ratio(work, span))
    tallies = view.tallies.values()
    busy = dict.fromkeys(record.participants, 0.0)
    busy |= {t.agent: t.busy_s for t in tallies}
    return JobFigures(
        agents=n,
        makespan_s=makespan,
        work_s=work,
        span_s=span,
        speedup=speedup,
        parallel_fraction=p,
        amdahl_bound=1.0 / ((1.0 - p) + p / n),
        work_span_bound=work_span_bound,
        bound_fraction=_ratio(speedup, work_span_bound),
        tokens_in=sum(t.tokens_in for t in tallies),
        tokens_out=sum(t.tokens_out for t in tallies),
        coordination_tokens_in=sum(t.coordination_tokens_in for t in tallies),
        coordination_tokens_out=sum(t.coordination_tokens_out for t in tallies),
        bus_messages=bus_messages,
        claims=sum(t.claims for t in tallies),
        conflicts=sum(t.conflicts for t in tallies),
        releases=sum(t.released for t in tallies),
        fenced=sum(t.fenced for t in tallies),
        backups=sum(t.backups for t in tallies),
        backups_lost=sum(t.backups_lost for t in tallies),
        backup_extra_s=sum(t.backup_s for t in tallies),
        redeliveries=sum(max(0, s.attempt - 1) for s in view.states),
        rounds=record.round,
        busy_s=busy,
        idle_s={agent: max(0.0, makespan - b) for agent, b in busy.items()},
    )
