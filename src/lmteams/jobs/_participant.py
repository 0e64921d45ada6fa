"""An agent's part in jobs: it works assigned subtasks, and claims subtasks itself.

Centralized: the coordinator's ``Assign`` arrives on the agent's job inbox; the agent renders
nothing (the prompt comes rendered), renews its lease with ``Working`` messages and reports
the outcome durably. Decentralized: the agent watches the jobs it takes part in, claims a
ready subtask by compare-and-set, renews its claim in the bucket, and commits the output
itself; it also releases claims whose holder went silent for a whole lease, and, when
nothing is ready, may run a backup copy of a straggler. Either way one attempt runs at a
time: an agent is one model.
"""

from __future__ import annotations

import contextlib
import re
import time

import anyio
import structlog
from anyio.abc import TaskGroup

from lmteams import tracing
from lmteams.agents import WorkerAgent
from lmteams.bus import Codec, Incoming, publish_durable, validate_token
from lmteams.errors import BusError, ConfigError, EncodeError, RevisionMismatchError
from lmteams.hardware import GenerateRequest
from lmteams.jobs._attempt import AttemptOutcome, run_attempt, settle
from lmteams.jobs._board import Commit, JobBoard, JobView
from lmteams.jobs._finish import job_over
from lmteams.jobs._ledger import Ledger
from lmteams.jobs._messages import (
    Assign,
    JobRecord,
    Report,
    SubtaskState,
    SubtaskStatus,
    Withdraw,
    Working,
)
from lmteams.jobs._policy import by_priority, outputs_for, straggler, wake_in
from lmteams.jobs._template import render_prompt
from lmteams.jobs._watch import Latest, keep_running, running_jobs

__all__ = ("Participant",)

log = structlog.get_logger(__name__)

_INBOX: Codec[Assign | Withdraw] = Codec(Assign, Withdraw)
_ATTEMPT_TIMEOUT_S = 3600.0
_SETTLE_S = 10.0  # how long a withdrawn attempt may take to count itself


class _Attempt:
    """The one attempt this agent runs now."""

    def __init__(
        self,
        job_id: str,
        index: int,
        claim_rev: int,
        *,
        backup: bool,
        agent: str = "",
        trace: str = "",
    ) -> None:
        self.agent = agent
        self.trace = trace  # the job's traceparent: this attempt's span joins the job's trace
        self.job_id = job_id
        self.index = index
        self.claim_rev = claim_rev
        self.backup = backup
        self.scope = anyio.CancelScope()
        self.reason = ""  # why it was withdrawn

    def withdraw(self, reason: str) -> None:
        self.reason = self.reason or reason
        self.scope.cancel()


def _valid_assign(a: Assign) -> bool:
    """An assignment this agent can work and report: ids that are tokens, sane limits."""
    try:
        validate_token(a.job_id, "job id")
    except ConfigError:
        return False
    return a.index >= 0 and a.max_tokens > 0 and a.lease_s > 0


def _lost(state: SubtaskState, revision: int, attempt: _Attempt) -> str:
    """Why ``attempt`` no longer counts, from its subtask's state at ``revision``; "" while
    it still does, or while that state is from before the attempt's claim (a watched view
    lags the agent's own write: judged on it, every fresh claim would look lapsed and be
    dropped, its lease then running out with nobody working on it)."""
    if revision <= attempt.claim_rev:  # the claim was written from this revision, so later
        return ""
    if state.claim_rev != attempt.claim_rev or state.status is SubtaskStatus.PENDING:
        return "lease lapsed"  # released, maybe claimed again: this copy is fenced
    if state.status is SubtaskStatus.DONE and state.agent != attempt.agent:
        return "another copy won"
    return ""


def _staggered(ready: list[int], participants: tuple[str, ...], name: str) -> list[int]:
    """``ready`` (best first) with this agent's own pick first: the k-th participant starts
    at the k-th best. All agents see the same view and the same order, so without it every
    one of them races for the best subtask, then the second: the k-th agent loses k
    compare-and-sets (a round trip each) before it works, and claims queue up behind each
    other. Staggered, the team's first n picks are still the n best, taken at once."""
    if name not in participants or len(ready) < 2:
        return ready
    k = participants.index(name) % min(len(ready), len(participants))
    return [ready[k], *ready[:k], *ready[k + 1 :]]


class Participant:
    """Serves jobs for one worker agent until cancelled."""

    def __init__(self, agent: WorkerAgent, board: JobBoard | None) -> None:
        self.agent = agent
        self._board = board
        self.name = agent.context.actor_id
        self.ledger = Ledger(board, self.name)
        self.current: _Attempt | None = None
        self._log = agent.context.log

    @property
    def board(self) -> JobBoard:
        """The jobs bucket (decentralized jobs only: never read without one)."""
        assert self._board is not None
        return self._board

    @property
    def busy(self) -> bool:
        return self.current is not None

    async def run(self) -> None:
        ctx = self.agent.context
        async with anyio.create_task_group() as tg:

            async def on_inbox(incoming: Incoming[Assign | Withdraw]) -> None:
                self._on_inbox(tg, incoming.body)

            sub = await ctx.bus.subscribe(ctx.subjects.job_agent(self.name), on_inbox, codec=_INBOX)
            try:
                if self._board is None:  # behind a leaf node: centralized assignments only
                    await anyio.sleep_forever()
                else:
                    board = self._board
                    await keep_running(
                        "decentralized jobs",
                        lambda: running_jobs(board, self._takes_part, self._drive),
                    )
            finally:
                with anyio.CancelScope(shield=True), contextlib.suppress(BusError):
                    await sub.unsubscribe()

    # --- centralized ---------------------------------------------------------------------
    def _on_inbox(self, tg: TaskGroup, body: Assign | Withdraw) -> None:
        match body:
            case Withdraw():
                a = self.current
                same = a is not None and (a.job_id, a.index) == (body.job_id, body.index)
                if a is not None and same and body.claim_rev in (0, a.claim_rev):
                    a.withdraw(body.reason or "withdrawn")
            case Assign():
                if not _valid_assign(body):
                    self._log.warning("jobs.bad_assign", job_id=body.job_id[:64], index=body.index)
                    return
                if self.agent.draining or self.busy:
                    self._log.info("jobs.assign_declined", job_id=body.job_id, index=body.index)
                    tg.start_soon(self._decline, body)  # placed elsewhere at once
                    return
                attempt = _Attempt(
                    body.job_id, body.index, body.claim_rev, backup=body.backup, trace=body.trace
                )
                self.current = attempt
                tg.start_soon(self._work_assigned, attempt, body)

    async def _decline(self, a: Assign) -> None:
        now = time.time()
        await self._report(
            a,
            Report(
                job_id=a.job_id,
                index=a.index,
                claim_rev=a.claim_rev,
                agent=self.name,
                ok=False,
                error="declined: busy",
                started_at=now,
                ended_at=now,
                backup=a.backup,
                declined=True,
            ),
        )

    async def _report(self, a: Assign, report: Report) -> None:
        """Durably, so that a coordinator elected after this one still gets it."""
        ctx = self.agent.context
        try:
            await publish_durable(
                ctx.bus,
                ctx.subjects.job_report(a.job_id),
                report,
                msg_id=f"{a.job_id}.{a.index}.{a.claim_rev}.{self.name}",
                sender=self.name,
            )
        except (BusError, EncodeError, RevisionMismatchError) as err:
            self._log.error("jobs.report_lost", job_id=a.job_id, index=a.index, error=str(err))

    async def _work_assigned(self, attempt: _Attempt, a: Assign) -> None:
        ctx = self.agent.context
        try:
            async with anyio.create_task_group() as tg:

                async def renew() -> None:
                    beat = Working(
                        job_id=a.job_id, index=a.index, claim_rev=a.claim_rev, agent=self.name
                    )
                    while True:
                        with contextlib.suppress(BusError):
                            await ctx.bus.publish(ctx.subjects.job_lease(a.job_id), beat)
                        await anyio.sleep(a.lease_s / 3)

                tg.start_soon(renew)
                outcome = await self._attempt(attempt, a.prompt, a.system, a.max_tokens, a.strategy)
                tg.cancel_scope.cancel()
        finally:
            self.current = None
        if outcome is None:
            await self._withdrawn(attempt)
            return
        report = Report(
            job_id=a.job_id,
            index=a.index,
            claim_rev=a.claim_rev,
            agent=self.name,
            ok=outcome.ok,
            output=outcome.output,
            prompt=a.prompt,
            error=outcome.error,
            tokens_in=outcome.tokens_in,
            tokens_out=outcome.tokens_out,
            started_at=outcome.started_at,
            ended_at=outcome.ended_at,
            backup=a.backup,
        )
        await self._report(a, report)

    # --- the attempt itself ----------------------------------------------------------------
    async def _attempt(
        self, attempt: _Attempt, prompt: str, system: str, max_tokens: int, strategy: str
    ) -> AttemptOutcome | None:
        """Run it and count it; ``None`` when it was withdrawn before it finished."""
        started = time.time()
        outcome: AttemptOutcome | None = None
        attributes: dict[str, tracing.AttributeValue] = {"lmteams.job": attempt.job_id}
        attributes["lmteams.subtask"] = attempt.index
        attributes |= {"lmteams.agent": self.name, "lmteams.strategy": strategy or "single"}
        attributes |= {"lmteams.claim": attempt.claim_rev, "lmteams.backup": attempt.backup}
        parent = {tracing.TRACEPARENT: attempt.trace} if attempt.trace else None
        traced = tracing.span("attempt lmteams.subtask", parent=parent, attributes=attributes)
        with traced, attempt.scope:
            outcome = await run_attempt(
                self.agent,
                prompt=prompt,
                system=system,
                max_tokens=max_tokens,
                strategy=strategy,
                timeout_s=_ATTEMPT_TIMEOUT_S,
                label=f"{attempt.job_id}-{attempt.index}-{attempt.claim_rev}",
            )
        ended = time.time()
        job_id = attempt.job_id
        with anyio.CancelScope(shield=True):
            await self.ledger.span(job_id, started, ended)
            await self.ledger.add(
                job_id,
                attempts=1,
                backups=1 if attempt.backup else 0,
                busy_s=ended - started,
                wasted_s=0.0 if outcome else ended - started,
                backup_s=ended - started if attempt.backup else 0.0,
                tokens_in=outcome.tokens_in if outcome else 0,
                tokens_out=outcome.tokens_out if outcome else 0,
            )
        return outcome

    async def _withdrawn(self, attempt: _Attempt) -> None:
        tally = self.ledger.get(attempt.job_id)
        lapsed = "lease" in attempt.reason
        await self.ledger.add(
            attempt.job_id,
            cancelled=1,
            fenced=1 if lapsed else 0,
            backups_lost=1 if attempt.backup and not lapsed else 0,
        )
        self._log.info(
            "jobs.withdrawn",
            job_id=attempt.job_id,
            index=attempt.index,
            reason=attempt.reason,
            busy_s=round(tally.busy_s, 3),
        )

    # --- decentralized -------------------------------------------------------------------
    def _takes_part(self, record: JobRecord) -> bool:
        options = record.spec.options
        named = not record.participants or self.name in record.participants
        return options.architecture == "decentralized" and named

    async def _drive(self, job_id: str) -> None:
        driver = _SelfOrganizing(self, job_id)
        await driver.run()


class _SelfOrganizing:
    """This agent's side of one decentralized job."""

    def __init__(self, p: Participant, job_id: str) -> None:
        self.p = p
        self.job_id = job_id
        self._seen: dict[int, tuple[int, float]] = {}  # index -> (revision, first seen)
        # index -> the revision a claim of it lost against: the entry has moved past it, so
        # a view still showing it there is stale and claiming from it only loses again
        # (with eight agents under load, retrying on such views made thousands of conflicts)
        self._lost_at: dict[int, int] = {}

    async def run(self) -> None:
        async with (
            Latest.watching(self.p.board, self.job_id) as latest,
            anyio.create_task_group() as tg,
        ):
            while True:
                view = await latest.next(timeout=wake_in(latest.view))
                if view is None:
                    continue
                if not await self._step(view, tg):
                    break
            # an attempt withdrawn as the job ended still counts itself (cancelled, busy
            # time) on its way out: a deadline, not a cancel, which would skip that
            tg.cancel_scope.deadline = anyio.current_time() + _SETTLE_S

    async def _step(self, view: JobView, tg: TaskGroup) -> bool:
        """Act on one view; False once the job has ended."""
        p, record = self.p, view.record
        mine = p.current if p.current and p.current.job_id == self.job_id else None
        if await job_over(p.board, p.agent.context.bus, view):
            if mine:
                mine.withdraw(
                    _lost(view.states[mine.index], view.revisions[mine.index], mine) or "job ended"
                )
            return False
        await self._expire(view)
        if mine:
            reason = _lost(view.states[mine.index], view.revisions[mine.index], mine)
            if reason:
                mine.withdraw(reason)
            return True
        options = record.spec.options
        if p.busy or p.agent.draining:
            return True
        if options.scheduling == "rounds" and not await self._round_open(view):
            return True
        ready = by_priority(record.spec.graph, view.ready())
        if ready:
            await self._claim(view, ready, tg)
        elif options.backups and options.scheduling == "async":
            await self._back_up(view, tg)
        return True

    async def _back_up(self, view: JobView, tg: TaskGroup) -> None:
        p = self.p
        i = straggler(view)
        if i is None or view.states[i].holder == p.name:
            return
        joined = await p.board.add_backup(
            self.job_id, i, view.revisions[i], p.name, seen=view.states[i]
        )
        if joined is not None:
            self._start(view, i, joined[0].claim_rev, tg, backup=True)

    async def _round_open(self, view: JobView) -> bool:
        """Whether this agent may claim in the current round; advances it when it is over."""
        p, r = self.p, view.record.round
        claimed_now = {
            s.holder
            for s in view.states
            if s.round == r
            and s.attempt
            and s.status in (SubtaskStatus.CLAIMED, SubtaskStatus.DONE)
        }
        live = {m.name for m in p.agent.context.membership.members() if m.available}
        others = [a for a in view.record.participants or live if a in live or a == p.name]
        over = r == 0 or (
            not view.claimed() and (all(a in claimed_now for a in others) or not view.ready())
        )
        if over:
            await p.board.advance_round(self.job_id, r)
            return False  # claim from the next view, in the new round
        return p.name not in claimed_now

    async def _claim(self, view: JobView, ready: list[int], tg: TaskGroup) -> None:
        p = self.p
        if view.record.spec.options.choose == "model":
            order = await self._ask_model(view, ready)
        else:
            order = _staggered(ready, view.record.participants, p.name)
        order = [i for i in order if view.revisions[i] > self._lost_at.get(i, -1)]
        conflicts = 0
        try:
            for i in order:
                claimed = await p.board.claim(
                    self.job_id,
                    i,
                    view.revisions[i],
                    p.name,
                    round=view.record.round,
                    seen=view.states[i],
                )
                if claimed is None:
                    conflicts += 1
                    self._lost_at[i] = view.revisions[i]
                    continue
                await p.ledger.add(self.job_id, claims=1, conflicts=conflicts)
                conflicts = 0
                self._start(view, i, claimed[0].claim_rev, tg, backup=False)
                return
        finally:
            if conflicts:
                await p.ledger.add(self.job_id, conflicts=conflicts)

    async def _ask_model(self, view: JobView, ready: list[int]) -> list[int]:
        """Let the agent's model pick what to claim from the board; its choice goes first."""
        p = self.p
        graph = view.record.spec.graph
        lines = [f"{graph.subtasks[i].id}: {graph.subtasks[i].title}" for i in ready]
        done = [graph.subtasks[i].id for i in sorted(view.done())]
        prompt = (
            f"You are agent {p.name} in a team working on '{graph.name}'.\n"
            f"Done: {', '.join(done) or 'nothing yet'}.\n"
            "Ready subtasks (id: title):\n" + "\n".join(lines) + "\n"
            "Answer with the id of the one subtask you will take, and nothing else."
        )
        try:
            completion = await p.agent.complete(GenerateRequest(prompt=prompt, max_tokens=16))
        except Exception as err:
            p._log.warning("jobs.choice_failed", job_id=self.job_id, error=repr(err))
            return ready
        await p.ledger.add(
            self.job_id,
            coordination_tokens_in=completion.tokens_in,
            coordination_tokens_out=completion.tokens_out,
        )
        words = set(re.findall(r"[A-Za-z0-9_.-]+", completion.text))
        chosen = [i for i in ready if graph.subtasks[i].id in words]
        return chosen[:1] + [i for i in ready if i not in chosen[:1]]

    def _start(
        self, view: JobView, index: int, claim_rev: int, tg: TaskGroup, *, backup: bool
    ) -> None:
        p = self.p
        trace = view.record.spec.trace
        attempt = _Attempt(self.job_id, index, claim_rev, backup=backup, agent=p.name, trace=trace)
        p.current = attempt
        graph = view.record.spec.graph
        subtask = graph.subtasks[index]
        prompt = render_prompt(graph, subtask, outputs_for(view, index))
        tg.start_soon(self._work, attempt, prompt, view.record.spec.options.lease_s)

    async def _work(self, attempt: _Attempt, prompt: str, lease_s: float) -> None:
        p = self.p
        try:
            async with anyio.create_task_group() as tg:

                async def renew() -> None:
                    while True:
                        await anyio.sleep(lease_s / 3)
                        renewed = await p.board.renew(
                            self.job_id, attempt.index, attempt.claim_rev, p.name
                        )
                        if renewed is None:
                            attempt.withdraw(await self._why_lost(attempt))
                            return

                tg.start_soon(renew)
                record = await p.board.record(self.job_id)
                assert record is not None
                graph = record[0].spec.graph
                subtask = graph.subtasks[attempt.index]
                outcome = await p._attempt(
                    attempt, prompt, subtask.system, subtask.token_limit, subtask.strategy
                )
                tg.cancel_scope.cancel()
        finally:
            p.current = None
        if outcome is None:
            await p._withdrawn(attempt)
            return
        await self._settle(attempt, outcome, prompt)

    async def _why_lost(self, attempt: _Attempt) -> str:
        found = await self.p.board.state(self.job_id, attempt.index)
        return (_lost(*found, attempt) if found else "") or "lease lapsed"

    async def _settle(self, attempt: _Attempt, outcome: AttemptOutcome, prompt: str) -> None:
        p = self.p
        result = await settle(
            p.board,
            p.ledger,
            outcome,
            job_id=self.job_id,
            index=attempt.index,
            claim_rev=attempt.claim_rev,
            agent=p.name,
            prompt=prompt,
        )
        if result is Commit.COMMITTED and outcome.ok:
            await p.ledger.add(self.job_id, commits=1)
        p._log.info("jobs.settled", job_id=self.job_id, index=attempt.index, outcome=str(result))

    async def _expire(self, view: JobView) -> None:
        """Release a claim whose entry did not move for a whole lease (its holder is silent)."""
        lease = view.record.spec.options.lease_s
        now = time.monotonic()
        for s in view.states:
            rev = view.revisions[s.index]
            if s.status is not SubtaskStatus.CLAIMED:
                self._seen.pop(s.index, None)
                continue
            seen = self._seen.get(s.index)
            if seen is None or seen[0] != rev:
                self._seen[s.index] = (rev, now)
                continue
            if now - seen[1] > lease and await self.p.board.release(
                self.job_id, s.index, rev, seen=s
            ):
                await self.p.ledger.add(self.job_id, released=1)
                self.p._log.warning(
                    "jobs.released", job_id=self.job_id, subtask=s.id, holder=s.holder
                )
