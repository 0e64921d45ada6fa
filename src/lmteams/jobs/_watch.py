"""Following the jobs bucket: the newest view of one job, and the set of running jobs.

Engines react to changes (a commit makes dependents ready at once) and to time (a lease
runs out while nothing changes), so a driver waits for the next change with a timeout and
then acts on the newest view it has, whichever came first.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
import structlog

from lmteams.bus import Backoff
from lmteams.jobs._board import JobBoard, JobView, decode_value
from lmteams.jobs._messages import JobRecord, JobStatus

__all__ = ("Latest", "keep_running", "running_jobs")

log = structlog.get_logger(__name__)

_RESTART = Backoff(initial_s=0.2, max_s=5.0)


class Latest:
    """The newest view of one job, fed by a KV watch in the background.

    A watch is an ordered push consumer; should it ever fall silent, a driver would act on an
    old view forever. So a view that has not changed for ``refresh_s`` is read afresh.
    """

    def __init__(self, board: JobBoard, job_id: str, refresh_s: float) -> None:
        self.board = board
        self.job_id = job_id
        self.refresh_s = refresh_s
        self.view: JobView | None = None
        self._changed = anyio.Event()
        self._since = anyio.current_time()

    @classmethod
    @contextlib.asynccontextmanager
    async def watching(
        cls, board: JobBoard, job_id: str, *, refresh_s: float = 5.0
    ) -> AsyncIterator[Latest]:
        latest = cls(board, job_id, refresh_s)
        async with board.watch(job_id) as views, anyio.create_task_group() as tg:

            async def pump() -> None:
                async for view in views:
                    latest._take(view)

            tg.start_soon(pump)
            try:
                yield latest
            finally:
                tg.cancel_scope.cancel()

    def _take(self, view: JobView) -> None:
        old = self.view
        if old is not None and _older(view, old):
            return
        self.view = view
        self._since = anyio.current_time()
        self._changed.set()

    async def next(self, *, timeout: float) -> JobView | None:
        """The newest view after the next change, or after ``timeout`` whatever it is."""
        with anyio.move_on_after(timeout):
            await self._changed.wait()
        self._changed = anyio.Event()
        if anyio.current_time() - self._since > self.refresh_s:
            self._since = anyio.current_time()
            fresh = await self.board.view(self.job_id)
            if fresh is not None and self.view is not None and _older(self.view, fresh):
                log.warning("jobs.watch_behind", job_id=self.job_id)  # the read caught up
            if fresh is not None:
                self._take(fresh)
        return self.view


def _older(view: JobView, than: JobView) -> bool:
    """Whether ``view`` is behind ``than`` on any key (a refresh racing the watch)."""
    return view.record_rev < than.record_rev or any(
        a < b for a, b in zip(view.revisions, than.revisions, strict=True)
    )


async def running_jobs(
    board: JobBoard,
    wanted: Callable[[JobRecord], bool],
    drive: Callable[[str], Awaitable[None]],
) -> None:
    """Run ``drive(job_id)`` for each running job that ``wanted`` accepts, as they come.

    A driver that raises (a bus fault mid-step, a node failing over) is logged and run again
    after a jittered backoff, for as long as this runs: a job is never left without its
    driver here, and one bad job never stops the others. A driver that returns is done.
    """
    driving: set[str] = set()
    async with board.kv.watch("*.job") as updates, anyio.create_task_group() as tg:

        async def guarded(job_id: str) -> None:
            try:
                await keep_running(f"driver of job {job_id}", lambda: drive(job_id))
            finally:
                driving.discard(job_id)

        async for entry in updates:
            if entry is None:
                continue
            record = decode_value(entry)
            if not isinstance(record, JobRecord) or record.status is not JobStatus.RUNNING:
                continue
            job_id = record.spec.id
            if job_id in driving or not wanted(record):
                continue
            driving.add(job_id)
            tg.start_soon(guarded, job_id)


async def keep_running(what: str, loop: Callable[[], Awaitable[None]]) -> None:
    """Run ``loop`` until it returns; when it raises, log and run it again after a jittered
    backoff. For the engine's loops, whose faults are the bus's (a node failing over, a
    timeout): the agent keeps serving instead of crashing and waiting for its supervisor."""
    backoff = _RESTART.counter()
    while True:
        try:
            await loop()
        except Exception as err:
            log.warning("jobs.loop_failed", loop=what, error=repr(err))
            await anyio.sleep(backoff.next_delay())
            continue
        return
