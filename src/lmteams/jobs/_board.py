"""A job's durable state in the team's ``jobs`` KV bucket, changed only by compare-and-set.

Every transition of a subtask reads its entry, checks the rule, and writes with the
revision it read; a writer that lost the race gets ``None`` (or ``FENCED``) and decides
again from a fresh read. So two agents can never both claim, or both commit, one subtask,
whatever the clocks, the pauses or the message delays. Facts that only grow (a dependency
being done) are safe to act on from a stale read; everything else is decided by the CAS.

A value someone else wrote into the bucket that does not decode is skipped with a warning:
it never stops an agent (the bucket is writable by every agent of the team).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeVar

import anyio
import msgspec
import structlog

from lmteams.bus import JOBS_BUCKET, KV, Bus, KVEntry, Subjects, open_kv, validate_token
from lmteams.errors import BusError, RevisionMismatchError
from lmteams.jobs._messages import (
    AgentTally,
    JobRecord,
    JobSpec,
    JobStatus,
    SubtaskState,
    SubtaskStatus,
)

__all__ = ("JobBoard", "JobView", "Commit", "open_board", "MAX_FAILURES")

log = structlog.get_logger(__name__)

MAX_FAILURES = 3
"""Failed attempts (the model raised, the prompt did not fit) before a subtask fails the job."""

_CAS_TRIES = 20

S = TypeVar("S", JobRecord, SubtaskState, AgentTally)
_VALUE = msgspec.msgpack.Decoder(JobRecord | SubtaskState | AgentTally)
_ENCODE = msgspec.msgpack.Encoder()


class Commit(StrEnum):
    """What became of a completion."""

    COMMITTED = "committed"
    FENCED = "fenced"  # the claim lapsed (released, maybe re-claimed) before it came in
    LOST = "lost"  # another copy (a backup, or the primary) committed first
    ENDED = "ended"  # the subtask failed for good, or the job ended
    UNKNOWN = "unknown"  # no such job or subtask (a forged or stale report)


@dataclass
class JobView:
    """One read of a job: its record and every subtask's state, each with its KV revision.

    Entries are read one by one, so a view may mix moments; that is fine for deciding what to
    try (the CAS decides what happens), never for claiming that something did not happen.
    """

    record: JobRecord
    record_rev: int
    states: list[SubtaskState]
    revisions: list[int]
    tallies: dict[str, AgentTally] = field(default_factory=dict)

    @property
    def job_id(self) -> str:
        return self.record.spec.id

    def done(self) -> set[int]:
        return {s.index for s in self.states if s.status is SubtaskStatus.DONE}

    def ready(self) -> list[int]:
        """Subtasks nobody holds whose dependencies are all done, in written order."""
        finished = self.done()
        graph = self.record.spec.graph
        index = {s.id: i for i, s in enumerate(graph.subtasks)}
        return [
            s.index
            for s in self.states
            if s.status is SubtaskStatus.PENDING
            and all(index[d] in finished for d in graph.subtasks[s.index].deps)
        ]

    def claimed(self) -> list[int]:
        return [s.index for s in self.states if s.status is SubtaskStatus.CLAIMED]

    @property
    def complete(self) -> bool:
        return all(s.status is SubtaskStatus.DONE for s in self.states)

    @property
    def failed(self) -> list[SubtaskState]:
        return [s for s in self.states if s.status is SubtaskStatus.FAILED]


def _key(job_id: str, kind: str, name: str | int = "") -> str:
    validate_token(job_id, "job id")
    return f"{job_id}.{kind}" if name == "" else f"{job_id}.{kind}.{name}"


class JobBoard:
    """The jobs of one team, as stored; every method is safe to call from any agent."""

    def __init__(self, kv: KV, subjects: Subjects) -> None:
        self.kv = kv
        self.subjects = subjects

    # --- reading -----------------------------------------------------------------------------
    async def _read(self, key: str, kind: type[S]) -> tuple[S, int] | None:
        entry = await self.kv.get(key)
        if entry is None:
            return None
        value = decode_value(entry)
        if not isinstance(value, kind):
            return None
        return value, entry.revision

    async def record(self, job_id: str) -> tuple[JobRecord, int] | None:
        return await self._read(_key(job_id, "job"), JobRecord)

    async def state(self, job_id: str, index: int) -> tuple[SubtaskState, int] | None:
        return await self._read(_key(job_id, "s", index), SubtaskState)

    async def view(self, job_id: str, *, timeout: float = 10.0) -> JobView | None:
        """Record, then every subtask (by index) and every tally, read now.

        Raises ``BusError`` when the bucket does not answer within ``timeout``.
        """
        validate_token(job_id, "job id")
        entries: list[KVEntry] = []
        with anyio.move_on_after(timeout) as scope:
            async with self.kv.watch(f"{job_id}.>") as updates:
                async for entry in updates:
                    if entry is None:
                        break
                    entries.append(entry)
        if scope.cancelled_caught:
            raise BusError(f"cannot read job {job_id} from {self.kv.bucket} within {timeout:g}s")
        return _assemble(job_id, entries)

    async def jobs(self) -> list[tuple[JobRecord, int]]:
        """Every job record in the bucket, oldest admission first."""
        found: list[tuple[JobRecord, int]] = []
        async with self.kv.watch("*.job") as updates:
            with anyio.fail_after(10):
                async for entry in updates:
                    if entry is None:
                        break
                    value = decode_value(entry)
                    if isinstance(value, JobRecord) and not entry.deleted:
                        found.append((value, entry.revision))
        return sorted(found, key=lambda pair: pair[0].admitted_at)

    @contextlib.asynccontextmanager
    async def watch(self, job_id: str) -> AsyncIterator[AsyncIterator[JobView]]:
        """A view once the job is read, then a fresh one after every change to it.

        Changes that arrive together are folded into one view (the newest of each key).
        """
        validate_token(job_id, "job id")
        async with self.kv.watch(f"{job_id}.>") as updates:

            async def views() -> AsyncIterator[JobView]:
                latest: dict[str, KVEntry] = {}
                loaded = False
                async for entry in updates:
                    if entry is None:
                        loaded = True
                    else:
                        latest[entry.key] = entry
                    if loaded:
                        view = _assemble(job_id, list(latest.values()))
                        if view is not None:
                            yield view

            yield views()

    # --- admission -----------------------------------------------------------------------------
    async def admit(self, spec: JobSpec, participants: tuple[str, ...]) -> bool:
        """Store a new job: subtasks first, the record last (its presence means "admitted").

        Idempotent: a job id already admitted is left as it is and False is returned.
        """
        if await self.record(spec.id) is not None:
            return False
        for i, s in enumerate(spec.graph.subtasks):
            with contextlib.suppress(RevisionMismatchError):
                await self.kv.create(
                    _key(spec.id, "s", i), _ENCODE.encode(SubtaskState(index=i, id=s.id))
                )
        record = JobRecord(spec=spec, admitted_at=time.time(), participants=participants)
        try:
            await self.kv.create(_key(spec.id, "job"), _ENCODE.encode(record))
        except RevisionMismatchError:
            return False
        return True

    # --- subtask transitions ---------------------------------------------------------------
    async def _swap(
        self,
        job_id: str,
        index: int,
        change: Callable[[SubtaskState], SubtaskState | None],
        *,
        revision: int | None = None,
        seen: SubtaskState | None = None,
    ) -> tuple[SubtaskState, int] | None:
        """Apply ``change`` by CAS. With ``revision``, only from that revision (one try);
        without, re-read and retry until it applies or ``change`` says no (``None``).

        ``seen`` is the state the caller read at ``revision`` (from a watch): the change is
        computed from it without reading again, and the CAS proves it is still current.
        """
        key = _key(job_id, "s", index)
        for _ in range(_CAS_TRIES):
            if seen is not None and revision is not None:
                current: tuple[SubtaskState, int] | None = (seen, revision)
            else:
                current = await self.state(job_id, index)
            if current is None:
                return None
            state, rev = current
            if revision is not None and rev != revision:
                return None
            new = change(state)
            if new is None:
                return None
            try:
                new_rev = await self.kv.update(key, _ENCODE.encode(new), revision=rev)
            except RevisionMismatchError:
                if revision is not None:
                    return None
                continue
            return new, new_rev
        raise BusError(f"{key}: too much contention to change the subtask")

    async def claim(
        self,
        job_id: str,
        index: int,
        revision: int,
        holder: str,
        *,
        round: int = 0,
        seen: SubtaskState | None = None,
    ) -> tuple[SubtaskState, int] | None:
        """Take a pending subtask for ``holder``, from the revision the caller saw it at.

        The claim's fencing token (``claim_rev``) is that revision: unique per claim, since a
        key's revisions only grow. ``None``: someone else changed it first (a conflict).
        """

        def take(s: SubtaskState) -> SubtaskState | None:
            if s.status is not SubtaskStatus.PENDING:
                return None
            return msgspec.structs.replace(
                s,
                status=SubtaskStatus.CLAIMED,
                holder=holder,
                claim_rev=revision,
                attempt=s.attempt + 1,
                round=round,
                renewals=0,
                backups=(),
                claimed_at=time.time(),
            )

        return await self._swap(job_id, index, take, revision=revision, seen=seen)

    async def renew(
        self, job_id: str, index: int, claim_rev: int, agent: str
    ) -> tuple[SubtaskState, int] | None:
        """Show the claim is alive (its revision moves); ``None`` once it no longer holds."""

        def bump(s: SubtaskState) -> SubtaskState | None:
            if not _holds(s, claim_rev, agent):
                return None
            return msgspec.structs.replace(s, renewals=s.renewals + 1)

        return await self._swap(job_id, index, bump)

    async def release(
        self, job_id: str, index: int, revision: int, *, seen: SubtaskState | None = None
    ) -> tuple[SubtaskState, int] | None:
        """Hand back a claim whose lease lapsed (LATTE's Release), from the revision that
        was seen unchanged for a whole lease. None: it moved (renewed or committed)."""

        def free(s: SubtaskState) -> SubtaskState | None:
            if s.status is not SubtaskStatus.CLAIMED:
                return None
            return _unclaimed(s, releases=s.releases + 1)

        return await self._swap(job_id, index, free, revision=revision, seen=seen)

    async def add_backup(
        self,
        job_id: str,
        index: int,
        revision: int,
        agent: str,
        *,
        seen: SubtaskState | None = None,
    ) -> tuple[SubtaskState, int] | None:
        """Join a running claim as a backup copy; the claim (and its token) stays the same."""

        def join(s: SubtaskState) -> SubtaskState | None:
            if s.status is not SubtaskStatus.CLAIMED or agent == s.holder or agent in s.backups:
                return None
            return msgspec.structs.replace(s, backups=(*s.backups, agent))

        return await self._swap(job_id, index, join, revision=revision, seen=seen)

    async def commit(
        self,
        job_id: str,
        index: int,
        claim_rev: int,
        agent: str,
        *,
        output: str,
        prompt: str,
        tokens_in: int,
        tokens_out: int,
        started_at: float,
        ended_at: float,
    ) -> Commit:
        """Accept a completion only while its claim still holds; the first copy wins."""
        outcome = Commit.UNKNOWN

        def finish(s: SubtaskState) -> SubtaskState | None:
            nonlocal outcome
            if s.status is SubtaskStatus.DONE:
                same = s.agent == agent and s.claim_rev == claim_rev
                outcome = Commit.COMMITTED if same else _late(s, claim_rev)
                return None
            if s.status is SubtaskStatus.FAILED:
                outcome = Commit.ENDED
                return None
            if not _holds(s, claim_rev, agent):
                outcome = Commit.FENCED
                return None
            outcome = Commit.COMMITTED
            return msgspec.structs.replace(
                s,
                status=SubtaskStatus.DONE,
                agent=agent,
                output=output,
                prompt=prompt,
                tokens_in=tokens_in,
                tokens_out=tokens_out,
                started_at=started_at,
                ended_at=ended_at,
                error="",
            )

        await self._swap(job_id, index, finish)
        return outcome

    async def fail(self, job_id: str, index: int, claim_rev: int, agent: str, error: str) -> Commit:
        """A failed attempt: the subtask goes back to be tried again, or fails for good."""
        outcome = Commit.UNKNOWN

        def back(s: SubtaskState) -> SubtaskState | None:
            nonlocal outcome
            if not _holds(s, claim_rev, agent) or agent != s.holder:
                outcome = Commit.FENCED  # a backup's failure leaves the primary running
                return None
            outcome = Commit.COMMITTED
            failures = s.attempt - s.releases - s.declines
            final = failures >= MAX_FAILURES
            return msgspec.structs.replace(
                s,
                status=SubtaskStatus.FAILED if final else SubtaskStatus.PENDING,
                holder="" if not final else s.holder,
                claim_rev=0 if not final else s.claim_rev,
                backups=(),
                error=error,
            )

        await self._swap(job_id, index, back)
        return outcome

    async def decline(self, job_id: str, index: int, claim_rev: int, agent: str) -> bool:
        """The holder hands an assignment back unworked: pending again, no failure counted."""

        def back(s: SubtaskState) -> SubtaskState | None:
            if not _holds(s, claim_rev, agent) or agent != s.holder:
                return None
            return _unclaimed(s, declines=s.declines + 1)

        return await self._swap(job_id, index, back) is not None

    # --- the job record and tallies ----------------------------------------------------------
    async def end(
        self, job_id: str, status: JobStatus, *, error: str = ""
    ) -> tuple[JobRecord, int] | None:
        """Mark a running job ended, once: the caller that wins publishes its result."""
        key = _key(job_id, "job")
        for _ in range(_CAS_TRIES):
            current = await self.record(job_id)
            if current is None or current[0].status is not JobStatus.RUNNING:
                return None
            record, rev = current
            ended = msgspec.structs.replace(
                record, status=status, ended_at=time.time(), error=error
            )
            try:
                return ended, await self.kv.update(key, _ENCODE.encode(ended), revision=rev)
            except RevisionMismatchError:
                continue
        raise BusError(f"{key}: too much contention to end the job")

    async def advance_round(self, job_id: str, seen: int) -> bool:
        """Move the job from round ``seen`` to the next, once (the first caller wins)."""
        current = await self.record(job_id)
        if current is None or current[0].round != seen:
            return False
        record, rev = current
        with contextlib.suppress(RevisionMismatchError):
            nxt = msgspec.structs.replace(record, round=seen + 1)
            await self.kv.update(_key(job_id, "job"), _ENCODE.encode(nxt), revision=rev)
            return True
        return False

    async def put_tally(self, job_id: str, tally: AgentTally) -> None:
        """An agent's own counts for a job (only it writes this key: a plain put)."""
        await self.kv.put(_key(job_id, "a", tally.agent), _ENCODE.encode(tally))


def _unclaimed(s: SubtaskState, **counts: int) -> SubtaskState:
    """``s`` back to pending, nobody's: claimable again, its claim's token void."""
    return msgspec.structs.replace(
        s, status=SubtaskStatus.PENDING, holder="", claim_rev=0, backups=(), **counts
    )


def _holds(s: SubtaskState, claim_rev: int, agent: str) -> bool:
    """Whether ``agent``'s copy still belongs to the current claim."""
    return (
        s.status is SubtaskStatus.CLAIMED
        and s.claim_rev == claim_rev
        and (agent == s.holder or agent in s.backups)
    )


def _late(s: SubtaskState, claim_rev: int) -> Commit:
    """A completion after the subtask was done: a lost race, or a lapsed claim."""
    return Commit.LOST if s.claim_rev == claim_rev else Commit.FENCED


def decode_value(entry: KVEntry) -> JobRecord | SubtaskState | AgentTally | None:
    if entry.deleted or not entry.value:
        return None
    try:
        value: JobRecord | SubtaskState | AgentTally = _VALUE.decode(entry.value)
    except (msgspec.DecodeError, msgspec.ValidationError) as err:
        log.warning("jobs.foreign_value", key=entry.key, error=str(err))
        return None
    return value


def _assemble(job_id: str, entries: list[KVEntry]) -> JobView | None:
    record: tuple[JobRecord, int] | None = None
    states: dict[int, tuple[SubtaskState, int]] = {}
    tallies: dict[str, AgentTally] = {}
    for entry in entries:
        value = decode_value(entry)
        if isinstance(value, JobRecord) and entry.key == _key(job_id, "job"):
            record = (value, entry.revision)
        elif isinstance(value, SubtaskState) and entry.key == _key(job_id, "s", value.index):
            states[value.index] = (value, entry.revision)
        elif isinstance(value, AgentTally) and entry.key == _key(job_id, "a", value.agent):
            tallies[value.agent] = value
    if record is None:
        return None
    n = len(record[0].spec.graph.subtasks)
    if any(i not in states for i in range(n)):
        return None  # admission writes subtasks before the record; a purge may remove some
    return JobView(
        record=record[0],
        record_rev=record[1],
        states=[states[i][0] for i in range(n)],
        revisions=[states[i][1] for i in range(n)],
        tallies=tallies,
    )


async def open_board(bus: Bus, team: str, *, replicas: int = 1) -> JobBoard:
    """The team's jobs bucket (made if absent: an operator makes it R3 on a cluster)."""
    subjects = Subjects(team)
    kv = await open_kv(bus, subjects.kv_bucket(JOBS_BUCKET), replicas=replicas)
    return JobBoard(kv, subjects)
