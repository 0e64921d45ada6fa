"""Decentralized team runs: agents claim ready subtasks themselves through KV.

There is no coordinator. Each agent keeps its own view of the board (which subtasks are done
or claimed), learnt only from notes other agents publish on the bus, and claims a ready
subtask with a KV create-if-absent on ``claim.<subtask>``: exactly one agent's create
succeeds, the others get ``RevisionMismatchError``, count a lost claim (a conflict) and try
the next subtask. Views lag the board by a message's flight time, so agents deciding at the
same moment race for the same subtask; that is the coordination cost the paper measures.

In rounds, every agent makes at most one claim per round, all from the same view (the
barrier makes views agree), which is when races are most likely.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio
import msgspec

from lmteams.bus import KV, Codec, Incoming, Subjects, open_kv
from lmteams.errors import BusError, RevisionMismatchError
from lmteams.study._metrics import Recorder

__all__ = ("BoardNote", "run_decentralized")

_VIEW_SYNC_S = 5.0


class BoardNote(msgspec.Struct, frozen=True, kw_only=True, tag="study-note"):
    """What an agent tells the others about a subtask: claimed, done, or released."""

    kind: str
    task: str
    agent: str


_NOTES: Codec[BoardNote] = Codec(BoardNote)


@dataclass
class _View:
    done: set[str] = field(default_factory=set)
    claimed: set[str] = field(default_factory=set)
    changed: anyio.Event = field(default_factory=anyio.Event)


def _key(task_id: str) -> str:
    return "claim." + "".join(c if c.isalnum() or c in "-_" else "_" for c in task_id)


class _Board:
    """The agents of one run, each with its own view, claiming through one KV bucket."""

    def __init__(self, rec: Recorder, kv: KV, subject: str) -> None:
        self.rec = rec
        self.kv = kv
        self.subject = subject
        self.views = [_View() for _ in range(rec.n)]
        self.noted = anyio.Event()  # any view changed (the round barrier waits on it)

    def listener(self, view: _View) -> Callable[[Incoming[BoardNote]], Awaitable[None]]:
        async def on_note(incoming: Incoming[BoardNote]) -> None:
            note = incoming.body
            if note.kind == "done":
                view.done.add(note.task)
            elif note.kind == "claim":
                view.claimed.add(note.task)
            elif note.kind == "release":
                view.claimed.discard(note.task)
            view.changed.set()
            self.noted.set()

        return on_note

    async def note(self, agent: int, kind: str, task_id: str) -> None:
        who = self.rec.members[agent].agent_id
        body = BoardNote(kind=kind, task=task_id, agent=who)
        await self.rec.team.bus.publish(self.subject, body, sender=who)

    async def turn(self, agent: int) -> bool:
        """One claim-and-work step from the agent's view; False when nothing was claimable."""
        rec, view = self.rec, self.views[agent]
        candidates = [t for t in rec.graph.ready(view.done) if t not in view.claimed]
        for task_id in candidates:
            try:
                await self.kv.create(_key(task_id), rec.members[agent].agent_id.encode())
            except RevisionMismatchError:
                rec.lost_claims[agent] += 1
                view.claimed.add(task_id)
                continue
            await self.note(agent, "claim", task_id)
            if await rec.execute(agent, rec.graph.subtask(task_id)):
                view.done.add(task_id)
                await self.note(agent, "done", task_id)
            else:
                with contextlib.suppress(BusError):
                    await self.kv.delete(_key(task_id))
                view.claimed.discard(task_id)
                await self.note(agent, "release", task_id)
            return True
        return False

    async def free_running(self, agent: int) -> None:
        view = self.views[agent]
        while len(view.done) < len(self.rec.graph.subtasks):
            view.changed = anyio.Event()
            if not await self.turn(agent):
                with anyio.move_on_after(_VIEW_SYNC_S):
                    await view.changed.wait()

    async def rounds(self) -> None:
        rec = self.rec
        while len(rec.completed) < len(rec.graph.subtasks):
            rec.rounds += 1
            async with anyio.create_task_group() as tg:
                for agent in range(rec.n):
                    tg.start_soon(self.turn, agent)
            # the barrier: nobody starts the next round on a stale view
            with anyio.move_on_after(_VIEW_SYNC_S):
                while True:
                    self.noted = anyio.Event()  # before the check, so no note slips by
                    if all(len(v.done) >= len(rec.completed) for v in self.views):
                        break
                    await self.noted.wait()


async def run_decentralized(rec: Recorder, *, barrier: bool) -> None:
    """Let the agents claim and finish every subtask; returns when all are done."""
    bus = rec.team.bus
    subjects = Subjects(rec.team.team)
    bucket = subjects.kv_bucket(f"claims-{rec.run_id}")
    board = _Board(rec, await open_kv(bus, bucket), subjects.study(rec.run_id))
    subscriptions = [
        await bus.subscribe(board.subject, board.listener(v), codec=_NOTES) for v in board.views
    ]
    try:
        rec.start_clock()
        with anyio.fail_after(rec.timeout_s * len(rec.graph.subtasks)):
            if barrier:
                await board.rounds()
            else:
                async with anyio.create_task_group() as tg:
                    for agent in range(rec.n):
                        tg.start_soon(board.free_running, agent)
    finally:
        for sub in subscriptions:
            await sub.unsubscribe()
        with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
            await bus.js.delete_key_value(bucket)
