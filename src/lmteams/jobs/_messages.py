"""The jobs wire contract: what a job is on the bus, the state of each subtask, the result.

Everything here crosses the bus or lives in the team's ``jobs`` KV bucket, so it is a frozen,
tagged msgspec Struct whose new fields get defaults (msgspec's schema evolution rules). A plain
NATS client submits a :class:`SubmitJob` (JSON is fine) on ``lmt.<team>.jobs.request`` and
reads the :class:`JobResult` on ``lmt.<team>.jobs.result.<job-id>``.

KV layout, per job ``J`` (bucket ``lmt_<team>_jobs``):

- ``J.job``: the :class:`JobRecord` (spec, status, round, counters of the coordinator);
- ``J.s.<i>``: the :class:`SubtaskState` of subtask number ``i`` (its position in the graph:
  subtask ids are the user's words, KV keys are not);
- ``J.a.<agent>``: the :class:`AgentTally` one agent (or coordinator) keeps of its own work,
  written by that agent alone, so counting never contends.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import msgspec

from lmteams.jobs._graph import TaskGraph
from lmteams.jobs._options import Architecture, Choice, JobOptions, Placement, Scheduling

__all__ = (
    "Architecture",
    "Placement",
    "Scheduling",
    "Choice",
    "JobOptions",
    "JobSpec",
    "SubmitJob",
    "CancelJob",
    "JobRequest",
    "JobStatus",
    "JobRecord",
    "SubtaskStatus",
    "SubtaskState",
    "AgentTally",
    "Assign",
    "Withdraw",
    "Working",
    "Report",
    "SubtaskRecord",
    "JobFigures",
    "JobResult",
)


class JobSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A job as submitted: an id, the graph, and how to run it."""

    id: str
    graph: TaskGraph
    options: JobOptions = JobOptions()
    submitted_by: str = ""
    trace: str = ""
    """The submitter's W3C ``traceparent`` (tracing on): every subtask attempt joins its trace."""

    def __post_init__(self) -> None:
        # here, not in the submitter's helper: a spec decoded off the bus is checked as well
        if self.options.placement == "preassigned" and any(s.roles for s in self.graph.subtasks):
            raise ValueError(  # msgspec reports it as a validation error naming the struct
                f"graph {self.graph.name} limits subtasks to roles, which pre-assigned "
                "placement cannot honour (it deals subtasks out before the run): use "
                "placement 'greedy'"
            )


class SubmitJob(msgspec.Struct, frozen=True, kw_only=True, tag="submit-job"):
    job: JobSpec


class CancelJob(msgspec.Struct, frozen=True, kw_only=True, tag="cancel-job"):
    job_id: str
    reason: str = ""


JobRequest = SubmitJob | CancelJob


class JobStatus(StrEnum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class JobRecord(msgspec.Struct, frozen=True, kw_only=True, tag="job"):
    """``J.job``: the job's spec and where it stands. Written by admission, then by whoever
    ends it (compare-and-set, so it ends once), and by the coordinator as rounds advance."""

    spec: JobSpec
    status: JobStatus = JobStatus.RUNNING
    admitted_at: float = 0.0  # wall clock, seconds since the epoch
    ended_at: float = 0.0
    participants: tuple[str, ...] = ()
    """Decentralized jobs of ``agents = N``: the N agents taking part, fixed at admission;
    empty: every worker that sees the job (and centralized jobs: the coordinator picks)."""
    round: int = 0
    error: str = ""


class SubtaskStatus(StrEnum):
    PENDING = "pending"  # a dependency is not done
    READY = "ready"
    CLAIMED = "claimed"
    DONE = "done"
    FAILED = "failed"  # after max_attempts tries; the job fails with it


class SubtaskState(msgspec.Struct, frozen=True, kw_only=True, tag="subtask"):
    """``J.s.<i>``: one subtask's state. Every change is a compare-and-set on the KV revision.

    ``claim_rev`` is the KV revision at which the current claim was made: the fencing token.
    Renewals and backups keep it; a completion commits only while the entry is still
    ``claimed`` with that ``claim_rev`` (so a release, then a new claim, fences the old one).
    """

    index: int
    id: str
    status: SubtaskStatus = SubtaskStatus.PENDING
    holder: str = ""
    claim_rev: int = 0
    attempt: int = 0  # claims so far (1 = the first)
    round: int = 0  # the round of the current claim (rounds scheduling)
    renewals: int = 0  # bumped by each lease renewal, so a live claim's revision moves
    backups: tuple[str, ...] = ()  # agents running a backup copy of the current claim
    claimed_at: float = 0.0
    # --- set on commit --------------------------------------------------------------------
    agent: str = ""  # who committed
    output: str = ""
    prompt: str = ""  # as rendered for the committed attempt
    tokens_in: int = 0
    tokens_out: int = 0
    started_at: float = 0.0
    ended_at: float = 0.0
    error: str = ""
    releases: int = 0  # lapsed leases on this subtask
    declines: int = 0  # assignments handed straight back by a busy agent (not failures)


class AgentTally(msgspec.Struct, frozen=True, kw_only=True, tag="tally"):
    """``J.a.<agent>``: what one agent did for a job, written only by that agent."""

    agent: str
    attempts: int = 0  # attempts it started (backups included)
    commits: int = 0
    claims: int = 0  # its own successful claims (decentralized)
    conflicts: int = 0  # claims it lost to another agent
    fenced: int = 0  # completions refused: its claim had lapsed
    released: int = 0  # lapsed leases it released (coordinator or any decentralized agent)
    backups: int = 0  # backup copies it ran
    backups_lost: int = 0  # backup races it lost (its copy was cancelled or refused)
    cancelled: int = 0
    busy_s: float = 0.0  # wall seconds generating, committed or not
    wasted_s: float = 0.0  # of which: attempts that did not commit (withdrawn, refused)
    backup_s: float = 0.0  # of which: backup copies, won or lost (the copy beside the first)
    tokens_in: int = 0
    tokens_out: int = 0
    coordination_tokens_in: int = 0  # model calls that chose a subtask (choose = "model")
    coordination_tokens_out: int = 0
    first_start: float = 0.0
    last_end: float = 0.0


# --- coordinator <-> agent (centralized) -----------------------------------------------------


_Index = Annotated[int, msgspec.Meta(ge=0, le=1_000_000)]
_Revision = Annotated[int, msgspec.Meta(ge=0)]


class Assign(msgspec.Struct, frozen=True, kw_only=True, tag="job-assign"):
    """The coordinator gives an agent a claimed subtask, its prompt rendered."""

    job_id: str
    index: _Index
    claim_rev: _Revision
    prompt: str
    system: str = ""
    max_tokens: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]
    strategy: str = ""
    lease_s: Annotated[float, msgspec.Meta(ge=0.1, le=86_400)]
    backup: bool = False
    trace: str = ""  # the job's traceparent (``JobSpec.trace``)


class Withdraw(msgspec.Struct, frozen=True, kw_only=True, tag="job-withdraw"):
    """Stop working on a subtask: its claim lapsed, a backup won, or the job ended."""

    job_id: str
    index: _Index
    claim_rev: _Revision = 0  # 0: whatever claim
    reason: str = ""


class Working(msgspec.Struct, frozen=True, kw_only=True, tag="job-working"):
    """An agent still works on its claim (a lease renewal, centralized)."""

    job_id: str
    index: _Index
    claim_rev: _Revision
    agent: str


class Report(msgspec.Struct, frozen=True, kw_only=True, tag="job-report"):
    """One finished attempt, published durably so that a new coordinator still gets it."""

    job_id: str
    index: _Index
    claim_rev: _Revision
    agent: str
    ok: bool
    output: str = ""
    prompt: str = ""
    error: str = ""
    tokens_in: int = 0
    tokens_out: int = 0
    started_at: float = 0.0
    ended_at: float = 0.0
    backup: bool = False
    declined: bool = False  # the agent was busy and hands the assignment back unworked


# --- the result ------------------------------------------------------------------------------


class SubtaskRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One subtask as it ended: what it was asked, what it answered, by whom, when."""

    id: str
    status: SubtaskStatus
    agent: str = ""
    prompt: str = ""
    output: str = ""
    error: str = ""
    tokens_in: int = 0
    tokens_out: int = 0
    started_at: float = 0.0
    ended_at: float = 0.0
    attempts: int = 0
    releases: int = 0


class JobFigures(msgspec.Struct, frozen=True, kw_only=True):
    """The job measured as a distributed computation (seconds are wall seconds)."""

    agents: int
    makespan_s: float  # admission to the last commit
    work_s: float  # sum of subtask durations (start, or a backed-up claim, to commit)
    span_s: float  # the measured critical path: heaviest chain of those durations
    speedup: float  # work_s / makespan_s
    parallel_fraction: float  # the paper's p = (N - CP) / N of the graph
    amdahl_bound: float  # 1 / ((1 - p) + p / n)
    work_span_bound: float  # min(n, work_s / span_s)
    bound_fraction: float  # speedup / work_span_bound
    tokens_in: int
    tokens_out: int
    coordination_tokens_in: int
    coordination_tokens_out: int
    bus_messages: int = 0  # server-counted, when the server's monitor is known; else 0
    claims: int = 0
    conflicts: int = 0
    releases: int = 0
    fenced: int = 0
    backups: int = 0
    backups_lost: int = 0
    backup_extra_s: float = 0.0  # wall seconds backup copies ran: the work backups added
    redeliveries: int = 0  # attempts beyond the first, over all subtasks
    rounds: int = 0
    busy_s: dict[str, float] = {}
    idle_s: dict[str, float] = {}


class JobResult(msgspec.Struct, frozen=True, kw_only=True, tag="job-result"):
    """The job's one result, on ``lmt.<team>.jobs.result.<job-id>`` and kept in the stream."""

    job_id: str
    status: JobStatus
    graph: str
    architecture: Architecture
    scheduling: Scheduling
    outputs: dict[str, str] = {}  # sink (or final) subtask id -> output
    subtasks: tuple[SubtaskRecord, ...] = ()
    figures: JobFigures | None = None
    error: str = ""
    admitted_at: float = 0.0
    ended_at: float = 0.0
