"""The caller's side of jobs: submit a task graph to a team, follow it, get its one result.

``async with lmteams.jobs.connect(url, team="t") as team: result = await team.run_job(graph)``.
A :class:`JobClient` is a :class:`~lmteams.agents.TeamClient` too, so one connection submits
prompts and jobs. Everything a job is gets checked here, before anything is published: a
graph that is not a DAG, a template naming a non-dependency or an option out of range is a
``GraphError`` / ``ConfigError`` on the caller's side, never a job the team has to refuse.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypedDict, Unpack

import msgspec

from lmteams import tracing
from lmteams.agents import ClientAuth, TeamClient, open_team
from lmteams.bus import (
    Codec,
    StreamSettings,
    new_id,
    publish_durable,
    validate_token,
)
from lmteams.errors import ConfigError
from lmteams.jobs._board import JobBoard, JobView, open_board
from lmteams.jobs._figures import build_result
from lmteams.jobs._graph import TaskGraph
from lmteams.jobs._graphio import load_graph
from lmteams.jobs._messages import (
    Architecture,
    CancelJob,
    Choice,
    JobOptions,
    JobRecord,
    JobResult,
    JobSpec,
    JobStatus,
    Placement,
    Scheduling,
    SubmitJob,
)

__all__ = ("JobClient", "JobOverrides", "connect", "new_job")

_UNPUBLISHED_S = 5.0
"""An ended job with no stored result this long after it ended is read from the board."""

_JOB_RESULTS: Codec[JobResult] = Codec(JobResult)
_SPEC_CHECK = msgspec.msgpack.Decoder(JobSpec)


class JobOverrides(TypedDict, total=False):
    """Options a submitter sets over the graph's own ``[job]`` table (see ``JobOptions``)."""

    architecture: Architecture
    scheduling: Scheduling
    agents: int
    backups: bool
    lease_s: float
    choose: Choice
    placement: Placement
    timeout_s: float


GraphSource = TaskGraph | JobSpec | str | Path
"""A job to submit: a graph, a whole spec, or the path of a graph file."""


def new_job(
    job: GraphSource,
    *,
    job_id: str | None = None,
    submitted_by: str = "",
    **overrides: Unpack[JobOverrides],
) -> JobSpec:
    """The one way a submitter makes a job: a fresh id unless given, the graph's options with
    ``overrides`` over them, all of it validated (``GraphError`` / ``ConfigError``)."""
    if isinstance(job, JobSpec):
        graph, base, job_id = job.graph, job.options, job_id or job.id
        submitted_by = submitted_by or job.submitted_by
    else:
        graph = job if isinstance(job, TaskGraph) else load_graph(job)
        base = graph.job
    try:
        options = msgspec.convert({**msgspec.structs.asdict(base), **overrides}, JobOptions)
    except msgspec.ValidationError as err:
        raise ConfigError(f"invalid job option: {err}") from None
    try:
        spec = JobSpec(
            id=validate_token(job_id or f"job-{new_id()}", "job id"),
            graph=graph,
            options=options,
            submitted_by=submitted_by,
        )
    except ValueError as err:  # JobSpec's own checks of options against the graph
        raise ConfigError(f"invalid job: {err}") from None
    # a graph or spec built around its checks (msgspec.structs.replace) is checked as the
    # team will decode it: a cycle or a bad template raises here, not in admission
    try:
        return _SPEC_CHECK.decode(msgspec.msgpack.encode(spec))
    except msgspec.ValidationError as err:
        raise ConfigError(f"invalid job {spec.id}: {err}") from None


class JobClient(TeamClient):
    """Submit tasks and jobs to one team over an open bus, and read the jobs it holds."""

    _board: JobBoard | None = None

    async def board(self) -> JobBoard:
        """The team's jobs bucket, opened on first use."""
        if self._board is None:
            self._board = await open_board(self.bus, self.subjects.team)
        return self._board

    async def submit_job(
        self, job: GraphSource, *, job_id: str | None = None, **overrides: Unpack[JobOverrides]
    ) -> str:
        """Publish a job without waiting; returns its id. A resubmission of an id is
        stored once (the id is the message id) and admitted once (admission is idempotent)."""
        spec = new_job(job, job_id=job_id, submitted_by=self.bus.name, **overrides)
        await self.publish_job(spec)
        return spec.id

    async def publish_job(self, spec: JobSpec) -> None:
        """Put a prepared (``new_job``) spec on the team's job requests, durably."""
        attributes = {"lmteams.team": self.subjects.team, "lmteams.job": spec.id}
        with tracing.span("send lmteams.job", kind="producer", attributes=attributes):
            context = tracing.headers()
            if context is not None:  # the subtasks' attempts join this trace (JobSpec.trace)
                spec = msgspec.structs.replace(spec, trace=context[tracing.TRACEPARENT])
            await publish_durable(
                self.bus, self.subjects.job_requests, SubmitJob(job=spec), msg_id=spec.id
            )

    async def run_job(
        self,
        job: GraphSource,
        *,
        job_id: str | None = None,
        timeout: float = 3600.0,
        **overrides: Unpack[JobOverrides],
    ) -> JobResult:
        """Submit a job and wait for its result (``RequestTimeoutError`` after ``timeout``)."""
        spec = new_job(job, job_id=job_id, submitted_by=self.bus.name, **overrides)
        attributes = {"lmteams.team": self.subjects.team, "lmteams.job": spec.id}
        with tracing.span("lmteams.job run", kind="client", attributes=attributes):
            async with self._awaiting_job(spec.id) as wait:
                await self.publish_job(spec)
                return await wait(timeout)

    async def wait_job(self, job_id: str, *, timeout: float = 3600.0) -> JobResult:
        """Wait for the result of a job submitted earlier (it may already be stored)."""
        async with self._awaiting_job(job_id) as wait:
            return await wait(timeout)

    async def job_result(self, job_id: str) -> JobResult | None:
        """The stored result of a job, or None while it has none."""
        subjects = self.subjects
        return await self._stored(
            subjects.job_results_stream, subjects.job_result(job_id), _JOB_RESULTS
        )

    async def _result_or_board(self, job_id: str) -> JobResult | None:
        """The stored result; failing that, for a job that ended a while ago without one
        (its ender died between ending it and publishing), the result as the board holds it."""
        kept = await self.job_result(job_id)
        if kept is not None:
            return kept
        board = await self.board()
        found = await board.record(job_id)
        if found is None or found[0].status is JobStatus.RUNNING:
            return None
        if time.time() - found[0].ended_at < _UNPUBLISHED_S:
            return None  # its ender is likely publishing it now
        view = await board.view(job_id)
        return build_result(view) if view is not None else None

    async def job(self, job_id: str) -> JobView | None:
        """The job as stored now (record, subtasks, tallies), or None if it was not admitted."""
        return await (await self.board()).view(job_id)

    async def jobs(self) -> list[JobRecord]:
        """Every job the team holds, oldest admission first."""
        return [record for record, _ in await (await self.board()).jobs()]

    async def cancel_job(self, job_id: str, reason: str = "") -> None:
        """Ask the team to stop a job (it ends ``cancelled``, with a result like any other)."""
        validate_token(job_id, "job id")
        await publish_durable(
            self.bus,
            self.subjects.job_requests,
            CancelJob(job_id=job_id, reason=reason),
            msg_id=f"cancel-{job_id}",
        )

    @contextlib.asynccontextmanager
    async def watch_job(self, job_id: str) -> AsyncIterator[AsyncIterator[JobView]]:
        """A view of the job once read, then after every change (see ``JobBoard.watch``)."""
        async with (await self.board()).watch(job_id) as views:
            yield views

    def _awaiting_job(
        self, job_id: str
    ) -> contextlib.AbstractAsyncContextManager[Callable[[float], Awaitable[JobResult]]]:
        return self._awaiting_first(
            self.subjects.job_result(job_id),
            _JOB_RESULTS,
            lambda: self._result_or_board(job_id),
            f"job {job_id}",
        )


@contextlib.asynccontextmanager
async def connect(
    url: str | None = None,
    *,
    team: str = "default",
    name: str = "client",
    streams: StreamSettings | None = None,
    **auth: Unpack[ClientAuth],
) -> AsyncIterator[JobClient]:
    """``lmteams.connect`` for jobs: the same bus and streams, a client that also runs jobs."""
    async with open_team(JobClient, url, team, name=name, streams=streams, **auth) as client:
        yield client
