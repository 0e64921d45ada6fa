"""Centralized jobs: the agent holding the team's coordinator lease runs them.

The coordinator keeps nothing that matters in memory: what is claimed, by whom, with which
token, and what is done, is in the jobs bucket; reports of finished attempts wait in the
jobs stream on a durable consumer. So a coordinator killed mid-job is replaced by whoever
wins the lease next, which reads the bucket and carries on: claims in flight stay valid
(their agents keep working and their reports are still queued), and nothing committed runs
again. The only soft state is when each claim was last renewed; a new coordinator gives
every claim a fresh lease.

Agents on a centralized job never touch KV: assignments arrive on their job inbox, lease
renewals and reports leave on plain subjects, so an agent behind a leaf node (which reaches
streams but no KV bucket) can take part.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time

import anyio
import structlog

from lmteams.agents import WorkerAgent
from lmteams.bus import JOB_REPORTS_CONSUMER, Codec, Incoming, open_consumer
from lmteams.errors import BusError, ConfigError, DecodeError
from lmteams.hardware import AgentLoad, expected_finish
from lmteams.jobs._attempt import AttemptOutcome, settle
from lmteams.jobs._board import Commit, JobBoard, JobView
from lmteams.jobs._finish import job_over
from lmteams.jobs._graph import Subtask, TaskGraph
from lmteams.jobs._ledger import Ledger
from lmteams.jobs._messages import (
    Assign,
    JobRecord,
    JobStatus,
    Report,
    SubtaskState,
    SubtaskStatus,
    Withdraw,
    Working,
)
from lmteams.jobs._policy import available_workers, by_priority, outputs_for, straggler, wake_in
from lmteams.jobs._preassign import agent_lists, depth_first_indices
from lmteams.jobs._template import render_prompt
from lmteams.jobs._watch import Latest, keep_running, running_jobs

__all__ = ("Coordinator",)

log = structlog.get_logger(__name__)


_DECLINE_HOLD_S = 1.0
"""How long an agent that declined an assignment is not offered another (it said it was busy)."""

_REPORT: Codec[Report] = Codec(Report)
_WORKING: Codec[Working] = Codec(Working)


class Coordinator:
    """Runs every centralized job of the team while this agent holds the lease."""

    def __init__(self, agent: WorkerAgent, board: JobBoard) -> None:
        self.agent = agent
        self.board = board
        self.name = agent.context.actor_id
        self.ledger = Ledger(board, f"coordinator-{self.name}")
        self._renewed: dict[tuple[str, int, int], float] = {}
        self.holding: dict[str, set[str]] = {}  # job -> agents holding one of its subtasks
        # agent -> when it last declined (busy elsewhere) or was told to stop a copy: either
        # way it may still be busy for a moment, and an assignment now would be declined
        self._cooling: dict[str, float] = {}
        self._log = agent.context.log.bind(role="coordinator")

    async def run(self) -> None:
        ctx = self.agent.context
        subjects = ctx.subjects
        sub = await ctx.bus.subscribe(subjects.job_leases, self._on_working, codec=_WORKING)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(keep_running, "coordinator reports", self._reports)
                await keep_running(
                    "centralized jobs",
                    lambda: running_jobs(
                        self.board,
                        lambda r: r.spec.options.architecture == "centralized",
                        lambda job_id: _Driver(self, job_id).run(),
                    ),
                )
        finally:
            with anyio.CancelScope(shield=True), contextlib.suppress(BusError):
                await sub.unsubscribe()

    async def _on_working(self, incoming: Incoming[Working]) -> None:
        w = incoming.body
        self._renewed[(w.job_id, w.index, w.claim_rev)] = time.monotonic()

    def busy_elsewhere(self, job_id: str) -> set[str]:
        """Agents holding another of this coordinator's jobs, or that just declined (busy on
        a decentralized job, which the coordinator does not follow)."""
        now = time.monotonic()
        recent = {a for a, at in self._cooling.items() if now - at < _DECLINE_HOLD_S}
        return recent.union(*(v for k, v in self.holding.items() if k != job_id))

    def renewed(self, job_id: str, index: int, claim_rev: int) -> float:
        return self._renewed.get((job_id, index, claim_rev), 0.0)

    async def _reports(self) -> None:
        ctx = self.agent.context
        subjects = ctx.subjects
        queue = await open_consumer(
            ctx.bus,
            subjects.jobs_stream,
            subjects.job_reports,
            durable=JOB_REPORTS_CONSUMER,
            ack_wait_s=30.0,
        )
        try:
            while True:
                delivery = await queue.fetch(timeout=1.0)
                if delivery is None:
                    continue
                try:
                    report = ctx.bus.decode_raw(delivery.data, delivery.headers, _REPORT)
                except DecodeError as err:
                    self._log.warning("jobs.bad_report", error=str(err))
                    await delivery.term()
                    continue
                try:
                    await self.apply(report)
                except ConfigError as err:  # ids that are not subject tokens: forged
                    self._log.warning("jobs.bad_report", error=str(err))
                    await delivery.term()
                    continue
                await delivery.ack()
        finally:
            with anyio.CancelScope(shield=True):
                await queue.close()

    async def apply(self, r: Report) -> Commit:
        """Commit (or fail) a reported attempt if its claim still holds; count it if not."""
        if r.declined:
            self._cooling[r.agent] = time.monotonic()
            await self.board.decline(r.job_id, r.index, r.claim_rev, r.agent)
            return Commit.ENDED
        self._cooling.pop(r.agent, None)  # it finished something: free again
        done = AttemptOutcome(
            ok=r.ok,
            output=r.output,
            error=r.error,
            tokens_in=r.tokens_in,
            tokens_out=r.tokens_out,
            started_at=r.started_at,
            ended_at=r.ended_at,
        )
        outcome = await settle(
            self.board,
            self.ledger,
            done,
            job_id=r.job_id,
            index=r.index,
            claim_rev=r.claim_rev,
            agent=r.agent,
            prompt=r.prompt,
        )
        self._log.info(
            "jobs.report", job_id=r.job_id, index=r.index, agent=r.agent, outcome=str(outcome)
        )
        return outcome

    async def send(self, agent: str, body: Assign | Withdraw) -> None:
        ctx = self.agent.context
        if isinstance(body, Withdraw):
            self._cooling[agent] = time.monotonic()
        with contextlib.suppress(BusError):
            await ctx.bus.publish(ctx.subjects.job_agent(agent), body, sender=self.name)


class _Driver:
    """One job under this coordinator: reacts to every change of its state and to time."""

    def __init__(self, coordinator: Coordinator, job_id: str) -> None:
        self.c = coordinator
        self.job_id = job_id
        self.team: list[str] = []
        self._first_seen: dict[tuple[int, int], float] = {}
        self._withdrawn: set[tuple[int, int, str]] = set()
        # this driver's own writes, until the watch shows them: a step never acts on a view
        # from before its previous step's claims (it would assign an agent twice)
        self._own: dict[int, tuple[SubtaskState, int]] = {}
        self._round = 0
        self._lists: dict[str, list[int]] | None = None  # pre-assigned placement only

    async def run(self) -> None:
        try:
            async with Latest.watching(self.c.board, self.job_id) as latest:
                while True:
                    view = await latest.next(timeout=wake_in(latest.view))
                    if view is None:
                        continue
                    if not await self._step(view):
                        return
        finally:
            self.c.holding.pop(self.job_id, None)

    def _with_own_writes(self, view: JobView) -> JobView:
        states, revisions = list(view.states), list(view.revisions)
        for i, (state, rev) in list(self._own.items()):
            if revisions[i] >= rev:
                del self._own[i]  # the watch caught up
            else:
                states[i], revisions[i] = state, rev
        return dataclasses.replace(view, states=states, revisions=revisions)

    def _wrote(self, index: int, written: tuple[SubtaskState, int] | None) -> bool:
        if written is not None:
            self._own[index] = written
        return written is not None

    async def _step(self, seen: JobView) -> bool:
        """Act on one view; False once the job has ended."""
        view = self._with_own_writes(seen)
        record, graph = view.record, view.record.spec.graph
        if await job_over(self.c.board, self.c.agent.context.bus, view):
            ended = record.status is JobStatus.RUNNING  # by this step
            await self._withdraw_all(view, "job ended" if ended else f"job {record.status}")
            return False
        await self._expire(view)
        await self._withdraw_losers(view)
        team = self._team(record)
        mine = {
            a
            for s in view.states
            if s.status is SubtaskStatus.CLAIMED
            for a in (s.holder, *s.backups)
        }
        self.c.holding[self.job_id] = mine
        # an agent busy on another job of this coordinator declines, so it counts as busy
        busy = mine | self.c.busy_elsewhere(self.job_id)
        idle = [a for a in team if a not in busy]
        if not idle:
            return True
        options = record.spec.options
        rounds = options.scheduling == "rounds"
        round_no = max(record.round, self._round)
        if rounds:
            if view.claimed() or not view.ready():
                return True
            await self.c.board.advance_round(self.job_id, round_no)
            round_no = self._round = round_no + 1
        ready = view.ready()
        if options.placement == "preassigned":
            await self._deal(view, team, idle, round_no, set(ready))
        greedy = by_priority(graph, ready) if options.placement == "greedy" else []
        load = {
            s.holder: float(graph.subtasks[s.index].work_tokens)
            for s in view.states
            if s.status is SubtaskStatus.CLAIMED
        }
        for i in greedy:
            if not idle:
                break
            # in rounds nobody busy frees up before the barrier: only idle agents count
            pick = self._place(graph.subtasks[i], idle if rounds else team, busy, load)
            if pick is None or pick not in idle:
                continue  # a faster busy agent will finish it sooner
            if await self._assign(view, i, pick, round_no):
                idle.remove(pick)
                busy.add(pick)
                load[pick] = load.get(pick, 0.0) + graph.subtasks[i].work_tokens
        if not ready and options.backups and idle and options.scheduling == "async":
            late = straggler(view)
            if late is not None:
                await self._backup(view, late, idle[0])
        return True

    async def _deal(
        self, view: JobView, team: list[str], idle: list[str], round_no: int, ready: set[int]
    ) -> None:
        """Pre-assigned placement: each idle agent gets the next subtask of its own list once
        that is ready, and nothing else (not even when its list is blocked and another's is
        not: that idleness is the architecture's, and what the study measures)."""
        if not team:
            return
        for agent, queue in self._own_lists(view.record.spec.graph, team).items():
            head = next((i for i in queue if view.states[i].status is not SubtaskStatus.DONE), -1)
            if agent in idle and head in ready and await self._assign(view, head, agent, round_no):
                idle.remove(agent)

    def _own_lists(self, graph: TaskGraph, team: list[str]) -> dict[str, list[int]]:
        """Each agent's list, dealt once over the (non-empty) team this driver first sees.

        An agent that leaves the team hands its list to a member without one or, when there
        is none, merges it into the shortest list (both stay in depth-first order). A
        coordinator that takes over deals again over its own view of the team; with the same
        members it deals the same lists (the team's order is by rate, then name).
        """
        if self._lists is None:
            self._lists = dict(zip(team, agent_lists(graph, len(team)), strict=True))
        lists = self._lists
        for gone in [a for a in lists if a not in team]:
            queue = lists.pop(gone)
            spare = next((a for a in team if a not in lists), None)
            if spare is not None:
                lists[spare] = queue
            else:
                position = {i: k for k, i in enumerate(depth_first_indices(graph))}
                target = min(lists, key=lambda a: (len(lists[a]), a))
                lists[target] = sorted(lists[target] + queue, key=position.__getitem__)
            self.c._log.warning("jobs.list_moved", job_id=self.job_id, agent=gone)
        return lists

    def _team(self, record: JobRecord) -> list[str]:
        """The agents this job may use: available workers, the fastest first, kept stable."""
        ordered = [m.name for m in available_workers(self.c.agent.context.membership)]
        want = record.spec.options.agents or len(ordered)
        self.team = [a for a in self.team if a in ordered]
        for name in ordered:
            if len(self.team) >= want:
                break
            if name not in self.team:
                self.team.append(name)
        return list(self.team)

    def _place(
        self, subtask: Subtask, team: list[str], busy: set[str], load: dict[str, float]
    ) -> str | None:
        """The agent expected to finish ``subtask`` first, busy agents included (by the work
        they hold, this step's assignments counted)."""
        membership = self.c.agent.context.membership
        best: tuple[float, bool, str] | None = None
        for name in team:
            info = membership.member(name)
            if info is None:
                continue
            if subtask.roles and not set(subtask.roles) & set(info.facts.roles):
                continue
            queued = AgentLoad(
                agent=name, tokens_per_s=info.facts.tokens_per_s, queued_tokens=load.get(name, 0.0)
            )
            key = (expected_finish(queued, subtask.work_tokens), name in busy, name)
            if best is None or key < best:
                best = key
        return best[2] if best else None

    async def _assign(self, view: JobView, index: int, agent: str, round_no: int) -> bool:
        claimed = await self.c.board.claim(
            self.job_id,
            index,
            view.revisions[index],
            agent,
            round=round_no,
            seen=view.states[index],
        )
        if not self._wrote(index, claimed) or claimed is None:
            return False
        self._first_seen[(index, claimed[0].claim_rev)] = time.monotonic()
        await self._send_assign(view, index, agent, claimed[0].claim_rev, backup=False)
        return True

    async def _backup(self, view: JobView, index: int, agent: str) -> None:
        joined = await self.c.board.add_backup(
            self.job_id, index, view.revisions[index], agent, seen=view.states[index]
        )
        if self._wrote(index, joined) and joined is not None:
            await self._send_assign(view, index, agent, joined[0].claim_rev, backup=True)

    async def _send_assign(
        self, view: JobView, index: int, agent: str, claim_rev: int, *, backup: bool
    ) -> None:
        """Tell ``agent`` to work subtask ``index`` under claim ``claim_rev``, prompt rendered."""
        graph = view.record.spec.graph
        subtask = graph.subtasks[index]
        await self.c.send(
            agent,
            Assign(
                job_id=self.job_id,
                index=index,
                claim_rev=claim_rev,
                prompt=render_prompt(graph, subtask, outputs_for(view, index)),
                system=subtask.system,
                max_tokens=subtask.token_limit,
                strategy=subtask.strategy,
                lease_s=view.record.spec.options.lease_s,
                backup=backup,
                trace=view.record.spec.trace,
            ),
        )
        event = "jobs.backup" if backup else "jobs.assigned"
        self.c._log.info(event, job_id=self.job_id, subtask=subtask.id, agent=agent)

    async def _expire(self, view: JobView) -> None:
        """Release claims whose holder has not renewed within the lease (LATTE's Release)."""
        lease = view.record.spec.options.lease_s
        now = time.monotonic()
        for s in view.states:
            if s.status is not SubtaskStatus.CLAIMED:
                continue
            first = self._first_seen.setdefault((s.index, s.claim_rev), now)
            last = max(first, self.c.renewed(self.job_id, s.index, s.claim_rev))
            if now - last <= lease:
                continue
            released = await self.c.board.release(
                self.job_id, s.index, view.revisions[s.index], seen=s
            )
            if self._wrote(s.index, released):
                await self.c.ledger.add(self.job_id, released=1)
                self.c._log.warning(
                    "jobs.released", job_id=self.job_id, subtask=s.id, holder=s.holder
                )
                for a in (s.holder, *s.backups):
                    await self.c.send(
                        a,
                        Withdraw(
                            job_id=self.job_id,
                            index=s.index,
                            claim_rev=s.claim_rev,
                            reason="lease lapsed",
                        ),
                    )

    async def _withdraw_losers(self, view: JobView) -> None:
        """Once a subtask with backups is committed, the other copies stop."""
        for s in view.states:
            if s.status is not SubtaskStatus.DONE or not s.backups:
                continue
            for a in (s.holder, *s.backups):
                key = (s.index, s.claim_rev, a)
                if a == s.agent or key in self._withdrawn:
                    continue
                self._withdrawn.add(key)
                await self.c.send(
                    a,
                    Withdraw(
                        job_id=self.job_id,
                        index=s.index,
                        claim_rev=s.claim_rev,
                        reason="another copy won",
                    ),
                )

    async def _withdraw_all(self, view: JobView, reason: str) -> None:
        for s in view.states:
            if s.status is SubtaskStatus.CLAIMED:
                for a in (s.holder, *s.backups):
                    await self.c.send(a, Withdraw(job_id=self.job_id, index=s.index, reason=reason))
