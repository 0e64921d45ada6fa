"""The caller's side: submit tasks to a team and get exactly one result each.

``async with lmteams.connect(url, team="t") as team: result = await team.submit("...")``.
Results are read from the results subject with the stream as a fallback, and a task id is
answered once to the caller however often JetStream redelivered the task.
"""

from __future__ import annotations

import contextlib
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypedDict, TypeVar, Unpack

import anyio
import msgspec

from lmteams import tracing
from lmteams.agents._messages import Progress, Result, Task
from lmteams.agents._state import read_state
from lmteams.agents._streamed import StreamedTask
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

__all__ = ("TeamClient", "ClientAuth", "connect", "open_team", "resolve_url")

R = TypeVar("R")
C = TypeVar("C", bound="TeamClient")

_RESULTS: Codec[Result] = Codec(Result)
_RECHECK_S = 2.0  # how often a waiting client reads the stored result
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
        tracing.configure(bus.name)  # on only where the environment asks (lmteams.tracing)

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
        attributes = {"lmteams.team": self.subjects.team, "lmteams.task": task.id}
        attributes["lmteams.strategy"] = task.strategy
        with tracing.span("lmteams.task run", kind="client", attributes=attributes):
            async with self._awaiting(task.id) as wait:
                await self.publish(task)
                return await wait(timeout)

    def stream(
        self,
        prompt: str,
        *,
        timeout: float = 300.0,
        task_id: str | None = None,
        **options: Unpack[TaskOptions],
    ) -> StreamedTask:
        """Publish a streamed task: ``async with team.stream(p) as answer``, then ``async for
        chunk in answer`` (a :class:`Chunk` per piece as it is generated), then ``answer.result``.

        The task is published when the block is entered; options are ``submit``'s. Strategies
        other than ``single`` stream nothing: their one result ends the iteration at once.
        """
        return self.run_streamed(new_task(prompt, task_id=task_id, **options), timeout=timeout)

    def run_streamed(self, task: Task, *, timeout: float = 300.0) -> StreamedTask:
        """``stream`` for a prepared task (it is sent with ``stream`` set)."""
        return StreamedTask(self, msgspec.structs.replace(task, stream=True), timeout=timeout)

    async def publish(self, task: Task) -> str:
        """Put a task on the team's queue without waiting; returns its id.

        Invalid tasks are refused here (``ConfigError``) rather than dead-lettered later.
        """
        check_task(task)
        attributes = {"lmteams.team": self.subjects.team, "lmteams.task": task.id}
        attributes |= {"lmteams.strategy": task.strategy, "messaging.system": "nats"}
        attributes["messaging.destination.name"] = self.subjects.tasks
        with tracing.span("send lmteams.task", kind="producer", attributes=attributes):
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
        return await self._stored(
            self.subjects.results_stream, self.subjects.results(task_id), _RESULTS
        )

    async def _stored(self, stream: str, subject: str, codec: Codec[R]) -> R | None:
        """The last message kept for ``subject`` in ``stream``, decoded, or None."""
        stored = await last_message(self.bus, stream, subject)
        if stored is None:
            return None
        return self.bus.decode_raw(stored[0], stored[1], codec)

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

    def _awaiting(
        self, task_id: str
    ) -> contextlib.AbstractAsyncContextManager[Callable[[float], Awaitable[Result]]]:
        return self._awaiting_first(
            self.subjects.results(task_id),
            _RESULTS,
            lambda: self.result(task_id),
            f"task {task_id}",
        )

    @contextlib.asynccontextmanager
    async def _awaiting_first(
        self,
        subject: str,
        codec: Codec[R],
        stored: Callable[[], Awaitable[R | None]],
        what: str,
    ) -> AsyncIterator[Callable[[float], Awaitable[R]]]:
        """Subscribe before publishing so no result can slip past; first result wins.

        ``stored`` reads a result kept in a stream: one published before the subscription.
        """
        box: list[R] = []
        arrived = anyio.Event()

        async def on_result(inc: Incoming[R]) -> None:
            if not box:
                box.append(inc.body)
                arrived.set()

        sub = await self.bus.subscribe(subject, on_result, codec=codec)

        async def wait(timeout: float) -> R:
            with anyio.move_on_after(timeout):
                while not box:
                    # answered before we subscribed? or did core NATS (at most once) drop
                    # the live copy? the stream is the record: look there now and then
                    kept = await stored()
                    if kept is not None and not box:
                        box.append(kept)
                        arrived.set()
                    with anyio.move_on_after(_RECHECK_S):
                        await arrived.wait()
            if not box:
                raise RequestTimeoutError(f"no result for {what} within {timeout:g}s")
            return box[0]

        try:
            yield wait
        finally:
            await sub.unsubscribe()


class ClientAuth(TypedDict, total=False):
    """A client's credentials, as ``open_bus`` takes them."""

    token: str | None
    user: str | None
    password: str | None
    nkey_seed: str | None
    creds: str | None
    tls: ssl.SSLContext | None


@contextlib.asynccontextmanager
async def open_team(
    client: Callable[[Bus, str], C],
    url: str | None,
    team: str,
    *,
    name: str = "client",
    streams: StreamSettings | None = None,
    **auth: Unpack[ClientAuth],
) -> AsyncIterator[C]:
    """``client(bus, team)`` over a connection to the team's bus (see ``resolve_url``), its
    streams made sure of: what every kind of team client (tasks, jobs) connects through."""
    async with open_bus(resolve_url(url, team), name=name, **auth) as bus:
        made = client(bus, team)
        await ensure_team_streams(bus, made.subjects, streams, update=False)
        yield made


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
    async with open_team(
        TeamClient,
        url,
        team,
        name=name,
        streams=streams,
        token=token,
        user=user,
        password=password,
        nkey_seed=nkey_seed,
        creds=creds,
    ) as client:
        yield client
