"""Admission: turning a request on ``lmt.<team>.jobs.request`` into a job on the board.

Every agent of the team binds the same durable consumer, so each request is admitted by
one of them, and again by another if that one dies before acking (admission is idempotent:
the job id is the key). What cannot become a job is refused loudly: an undecodable request
goes to the dead letters, and a request whose graph is invalid gets a failed result under
its id, so the submitter hears why. Neither stops the agent.
"""

from __future__ import annotations

import msgspec
import structlog

from lmteams.agents import Membership, WorkerAgent, dead_letter
from lmteams.bus import JOB_REQUESTS_CONSUMER, Codec, Delivery, open_consumer, validate_token
from lmteams.errors import ConfigError, DecodeError, LmteamsError
from lmteams.jobs._board import JobBoard
from lmteams.jobs._finish import finish_job, publish_result
from lmteams.jobs._messages import CancelJob, JobResult, JobSpec, JobStatus, SubmitJob
from lmteams.jobs._policy import available_workers

__all__ = ("admit_requests",)

log = structlog.get_logger(__name__)

_REQUEST: Codec[SubmitJob | CancelJob] = Codec(SubmitJob, CancelJob)


class _JobId(msgspec.Struct, frozen=True):
    id: str = ""


class _Salvage(msgspec.Struct, frozen=True):
    job: _JobId = _JobId()


async def admit_requests(agent: WorkerAgent, board: JobBoard) -> None:
    """Admit requests until cancelled (one at a time: admission is a few KV writes)."""
    ctx = agent.context
    queue = await open_consumer(
        ctx.bus, ctx.subjects.jobs_stream, ctx.subjects.job_requests, durable=JOB_REQUESTS_CONSUMER
    )
    try:
        while True:
            delivery = await queue.fetch(timeout=1.0)
            if delivery is not None:
                await _handle(agent, board, delivery)
    finally:
        await queue.close()


async def _handle(agent: WorkerAgent, board: JobBoard, delivery: Delivery) -> None:
    ctx = agent.context
    try:
        request = ctx.bus.decode_raw(delivery.data, delivery.headers, _REQUEST)
        match request:
            case SubmitJob(job=spec):
                validate_token(spec.id, "job id")
                participants = _participants(ctx.membership, spec)
                if await board.admit(spec, participants):
                    log.info("jobs.admitted", job_id=spec.id, participants=participants)
            case CancelJob(job_id=job_id, reason=reason):
                validate_token(job_id, "job id")
                await finish_job(board, ctx.bus, job_id, JobStatus.CANCELLED, reason or "cancelled")
    except (DecodeError, LmteamsError) as err:
        await _refuse(agent, board, delivery, err)
        await delivery.term()
        return
    await delivery.ack()


def _participants(membership: Membership, spec: JobSpec) -> tuple[str, ...]:
    """Who takes part in a decentralized job of ``agents = N``: the N fastest available
    workers, fixed now. ``agents = 0`` names nobody: every worker that sees the job takes
    part (no view of the team, which gossip may not have finished, can leave one out)."""
    if not spec.options.agents:
        return ()
    return tuple(m.name for m in available_workers(membership))[: spec.options.agents]


async def _refuse(agent: WorkerAgent, board: JobBoard, delivery: Delivery, err: Exception) -> None:
    ctx = agent.context
    log.warning("jobs.request_refused", error=str(err))
    await dead_letter(ctx.bus, ctx.subjects, delivery.raw, "job", str(err))
    job_id = _salvage_id(delivery.data)
    if job_id:
        await publish_result(
            ctx.bus,
            board,
            JobResult(
                job_id=job_id,
                status=JobStatus.FAILED,
                graph="",
                architecture="centralized",
                scheduling="async",
                error=f"job refused: {err}",
            ),
        )


def _salvage_id(data: bytes) -> str:
    """The job id of a request that failed validation, if it has a usable one."""
    for decode in (msgspec.json.decode, msgspec.msgpack.decode):
        try:
            job_id = decode(data, type=_Salvage).job.id
            return validate_token(job_id, "job id") if job_id else ""
        except (msgspec.DecodeError, msgspec.ValidationError, ConfigError):
            continue
    return ""
