"""One agent's running counts per job, kept in its own KV key (nobody else writes it).

Counting by one writer per key never contends, whatever the team size; the job's figures
sum the tallies. A tally that cannot be written (an edge agent behind a leaf node, which
reaches no KV) is logged and kept in memory: counts are then lower bounds.
"""

from __future__ import annotations

import msgspec
import structlog

from lmteams.jobs._board import JobBoard
from lmteams.jobs._messages import AgentTally

__all__ = ("Ledger",)

log = structlog.get_logger(__name__)


class Ledger:
    """``board`` None: counts stay in memory (an agent that reaches no KV bucket)."""

    def __init__(self, board: JobBoard | None, name: str) -> None:
        self.board = board
        self.name = name
        self._tallies: dict[str, AgentTally] = {}

    def get(self, job_id: str) -> AgentTally:
        return self._tallies.get(job_id) or AgentTally(agent=self.name)

    async def add(self, job_id: str, **increments: float) -> AgentTally:
        """Add to counters (``busy_s=1.5, commits=1``) and write the tally at once."""
        tally = self.get(job_id)
        changes = {k: getattr(tally, k) + v for k, v in increments.items()}
        tally = msgspec.structs.replace(tally, **changes)
        self._tallies[job_id] = tally
        await self._write(job_id, tally)
        return tally

    async def span(self, job_id: str, started: float, ended: float) -> None:
        """Widen the tally's first-start / last-end window (busy and idle time come from it)."""
        tally = self.get(job_id)
        first = min(started, tally.first_start) if tally.first_start else started
        tally = msgspec.structs.replace(
            tally, first_start=first, last_end=max(ended, tally.last_end)
        )
        self._tallies[job_id] = tally
        await self._write(job_id, tally)

    async def _write(self, job_id: str, tally: AgentTally) -> None:
        if self.board is None:
            return
        try:
            await self.board.put_tally(job_id, tally)
        except Exception as err:
            log.warning("jobs.tally_not_written", job_id=job_id, error=repr(err))
