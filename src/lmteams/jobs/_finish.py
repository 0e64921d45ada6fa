"""Ending a job, once: whoever wins the record's compare-and-set publishes the result.

The result goes to the job-results stream with the job id as message id, and that stream
keeps the first message per subject, so a result is published once even if two engines
(an old coordinator that woke up, a racing decentralized agent) both try.
"""

from __future__ import annotations

import time

import structlog

from lmteams.bus import Bus, last_message, publish_durable
from lmteams.errors import BusError, EncodeError, RevisionMismatchError
from lmteams.jobs._board import JobBoard, JobView
from lmteams.jobs._figures import build_result
from lmteams.jobs._messages import JobResult, JobStatus

__all__ = ("ensure_result", "finish_job", "job_over", "publish_result")

log = structlog.get_logger(__name__)


async def finish_job(
    board: JobBoard, bus: Bus, job_id: str, status: JobStatus, error: str = ""
) -> JobResult | None:
    """End a running job and publish its result; ``None`` if it had already ended."""
    if await board.end(job_id, status, error=error) is None:
        return None
    log.info("jobs.ended", job_id=job_id, status=str(status), error=error)
    return await ensure_result(board, bus, job_id)


async def job_over(board: JobBoard, bus: Bus, view: JobView) -> bool:
    """Whether the job is over: ended already (its result made sure of), or ended now
    because ``view`` shows it complete, a subtask failed for good, or its time ran out."""
    record = view.record
    job_id = record.spec.id
    if record.status is not JobStatus.RUNNING:
        await ensure_result(board, bus, job_id)
        return True
    timeout_s = record.spec.options.timeout_s
    overdue = time.time() - record.admitted_at > timeout_s
    if not (view.complete or view.failed or overdue):
        return False
    status = JobStatus.DONE if view.complete else JobStatus.FAILED
    error = view.failed[0].error if view.failed else ""
    if overdue and not view.complete:
        error = f"timed out after {timeout_s:g}s"
    await finish_job(board, bus, job_id, status, error)
    return True


async def ensure_result(board: JobBoard, bus: Bus, job_id: str) -> JobResult | None:
    """Publish the result of an ended job unless it is stored already.

    Whoever ended the job publishes it; should that one die in between, every engine that
    later finds the job ended without a result does (the stream keeps the first).
    """
    subjects = board.subjects
    if await last_message(bus, subjects.job_results_stream, subjects.job_result(job_id)):
        return None
    view = await board.view(job_id)
    if view is None or view.record.status is JobStatus.RUNNING:
        return None

    result = build_result(view)
    await publish_result(bus, board, result)
    return result


async def publish_result(bus: Bus, board: JobBoard, result: JobResult) -> None:
    try:
        await publish_durable(
            bus,
            board.subjects.job_result(result.job_id),
            result,
            msg_id=f"result-{result.job_id}",
            sender=bus.name,
            once=True,
        )
    except RevisionMismatchError:
        pass  # stored already: the first result stands
    except (BusError, EncodeError) as err:
        log.warning("jobs.result_not_published", job_id=result.job_id, error=str(err))
