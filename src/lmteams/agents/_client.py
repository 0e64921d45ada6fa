"""The caller's side: submit tasks to a team and get exactly one result each.

``async with lmteams.connect(url, team="t") as team: result = await team.submit("...")``.
Results are read from the results subject with the stream as a fallback, and a task id is
answered once to the caller however often JetStream redelivered the task.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Unpack

import anyio

from lmteams.agents._messages import Progress, Result, Task
from lmteams.agents._state import read_state
from lmteams.agents._tasks import TaskOptions, check_task, new_task
from lmteams.bus import (
    ENV_URL,
    Bus,
    Codec,
    Incoming,
    StreamSettings,
    SubjectKind,
    Subjects,
    ensure_team_streams,
    last_message,
    open_bus,
    publish_durable,
)
from lmteams.errors import NotConnectedError, RequestTimeoutError

__all__ = ("TeamClient", "connect", "resolve_url")

_RESULTS: Codec[Result] = Codec(Result)
_PROGRESS: Codec[Progress] = Codec(Progress)


def resolve_url(url: str | None, team: str) -> str:
    """The bus to use: the argument, ``$LMTEAMS_NATS_URL``, or the running ``lmteams up``."""
    if url:
        return url
    if os.environ.get(ENV_URL):
        return os.environ[ENV_URL]
    state = read_state(team)
    if state is not None:
        return state.url
    raise NotConnectedError(
        f"no bus for team {team!r}: start one with `lmteams up --team {team}`, "
        f"pass --nats URL, or set {ENV_URL}"
    )


class TeamClient:
    """Submit tasks to one team over an open bus."""

    def __init__(self, bus: Bus, team: str) -> None:
        self.bus = bus
        self.subjects = Subjects(team)

    async def submit(
        self,
        prompt: str,
        *,
        timeout: float = 300.0,
        task_id: str | None = None,
        **options: Unpack[TaskOptions],
    ) -> Result:
        """Publish a task and wait for its result (``RequestTimeoutError`` after ``timeout``).

        ``options`` are the task's fields (``system``, ``max_tokens``, ``temperature``, ``seed``,
        ``agents``, ``strategy``, ``normalizer``, ``rounds``); a bad one raises ``ConfigError``
        before anything is published.
        """
        return await self.run(new_task(prompt, task_id=task_id, **options), timeout=timeout)

    async def run(self, task: Task, *, timeout: float = 300.0) -> Result:
        """Publish a prepared task and wait for its one result."""
        async with self._awaiting(task.id) as wait:
            await self.publish(task)
            return await wait(timeout)

    async def publish(self, task: Task) -> str:
        """Put a task on the team's queue without waiting; returns its id.

        Invalid tasks are refused here (``ConfigError``) rather than dead-lettered later.
        """
        check_task(task)
        await publish_durable(
            self.bus, self.subjects.tasks, task, msg_id=task.id, sender=self.bus.name
        )
        return task.id

    async def wait(self, task_id: str, *, timeout: float = 300.0) -> Result:
        """Wait for the result of a task published earlier (it may already be stored)."""
        async with self._awaiting(task_id) as wait:
            return await wait(timeout)

    async def result(self, task_id: str) -> Result | None:
        """The stored result of a task, or None if it has none (yet)."""
        stored = await last_message(
            self.bus, self.subjects.results_stream, self.subjects.results(task_id)
        )
        if stored is None:
            return None
        return self.bus.decode_raw(stored[0], stored[1], _RESULTS)

    @contextlib.asynccontextmanager
    async def watch_progress(
        self, callback: Callable[[Progress], Awaitable[None] | None]
    ) -> AsyncIterator[None]:
        """Call ``callback`` for every progress event of this team while the block runs."""

        async def on_progress(inc: Incoming[Progress]) -> None:
            outcome = callback(inc.body)
            if outcome is not None:
                await outcome

        sub = await self.bus.subscribe(
            self.subjects.all(SubjectKind.PROGRESS), on_progress, codec=_PROGRESS
        )
        try:
            yield
        finally:
            await sub.unsubscribe()

    @contextlib.asynccontextmanager
    async def _awaiting(self, task_id: str) -> AsyncIterator[Callable[[float], Awaitable[Result]]]:
        """Subscribe before publishing so no result can slip past; first result wins."""
        box: list[Result] = []
        arrived = anyio.Event()

        async def on_result(inc: Incoming[Result]) -> None:
            if not box:
                box.append(inc.body)
                arrived.set()

        sub = await self.bus.subscribe(self.subjects.results(task_id), on_result, codec=_RESULTS)

        async def wait(timeout: float) -> Result:
            with anyio.move_on_after(timeout):
                stored = await self.result(task_id)  # answered before we subscribed?
                if stored is not None and not box:
                    box.append(stored)
                    arrived.set()
                await arrived.wait()
            if not box:
                raise RequestTimeoutError(f"no result for task {task_id} within {timeout:g}s")
            return box[0]

        try:
            yield wait
        finally:
            await sub.unsubscribe()


@contextlib.asynccontextmanager
async def connect(
    url: str | None = None,
    *,
    team: str = "default",
    name: str = "client",
    streams: StreamSettings | None = None,
    token: str | None = None,
    user: str | None = None,
    password: str | None = None,
    nkey_seed: str | None = None,
    creds: str | None = None,
) -> AsyncIterator[TeamClient]:
    """Connect to a team's bus (see ``resolve_url``) and make sure its streams exist."""
    async with open_bus(
        resolve_url(url, team),
        name=name,
        token=token,
        user=user,
        password=password,
        nkey_seed=nkey_seed,
        creds=creds,
    ) as bus:
        client = TeamClient(bus, team)
        await ensure_team_streams(bus, client.subjects, streams, update=False)
        yield client
