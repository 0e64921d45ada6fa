"""The dispatcher: places prompts on agents by capacity, hedges stragglers, cancels losers.

A dispatcher learns the team from gossip (``join`` carries an agent's advertised token
rates, ``heartbeat`` its liveness, ``leave`` its departure) and keeps, for every agent, the
work *it* has assigned there and not seen finish. Each prompt goes where a
:class:`~lmteams.hardware.Placement` says; at most ``window`` requests per agent are on the
wire (well under the agent's bounded mailbox), the rest wait here, where capacity-aware
placement may still move them to an agent that runs dry (late binding corrects the early
guess, which is what keeps a fast agent from idling while a slow one holds a queue).

Hedging: once a request has run ``HedgePolicy.delay`` past its send, a copy goes to the
best other agent, ahead of that agent's waiting work; the first answer wins, and the loser
is cancelled twice over: its request is dropped here, and a ``Cancel`` on the agent's control
subject stops its generation (the agent's mailbox is busy with that very prompt, so the
cancel cannot queue behind it).

Limits: load that other dispatchers (or the task queue) put on an agent is invisible here
until gossip carries queue depth; rates are what agents advertise, not yet re-measured.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Collection

import anyio
import msgspec
import structlog
from anyio.abc import TaskGroup

from lmteams.agents._messages import AgentInfo, Answer, Cancel, Heartbeat, Leave, Ping, Pong, Prompt
from lmteams.agents._ref import ActorRef
from lmteams.bus import Bus, Codec, Incoming, Subjects, Subscription, new_id, validate_token
from lmteams.errors import (
    ActorDeadError,
    AgentError,
    BusError,
    ConfigError,
    RequestTimeoutError,
)
from lmteams.hardware import (
    AgentLoad,
    HedgePolicy,
    LeastExpectedCompletion,
    Placement,
    estimate_tokens,
    expected_finish,
    stand_in_rates,
)

__all__ = ("Dispatcher", "DispatcherConfig", "DispatchStatistics", "open_dispatcher")

log = structlog.get_logger(__name__)

_JOIN: Codec[AgentInfo] = Codec(AgentInfo)
_BEAT: Codec[Heartbeat] = Codec(Heartbeat)
_LEAVE: Codec[Leave] = Codec(Leave)
_SLOWNESS_SAMPLES = 512


class DispatcherConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Clocks and bounds of a dispatcher; tests shorten them."""

    window: int = 2
    """Requests on the wire per agent; keep it below the agent's mailbox (16 for workers)."""
    request_timeout_s: float = 120.0
    """One attempt on one agent."""
    task_timeout_s: float = 600.0
    """A whole ``submit``, hedges and retries included, unless it passes its own."""
    agent_timeout_s: float = 5.0
    """How long ``submit`` waits for a first agent before it gives up."""
    silence_s: float = 10.0
    """An agent not heard from (join or heartbeat) for this long is forgotten."""
    max_attempts: int = 3
    """Agents a task may be tried on after failures (a hedge is not a failure)."""
    output_fraction: float = 1.0
    """Expected output tokens as a fraction of ``max_tokens`` (1.0: assume the worst)."""

    def __post_init__(self) -> None:
        if not 1 <= self.window <= 14:
            raise ConfigError(f"window must be 1..14 (below a worker's mailbox), got {self.window}")
        for name in ("request_timeout_s", "task_timeout_s", "agent_timeout_s", "silence_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.max_attempts < 1:
            raise ConfigError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if not 0 < self.output_fraction <= 1:
            raise ConfigError(f"output_fraction must be in (0, 1], got {self.output_fraction}")


class DispatchStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """Counters since the dispatcher opened; ``sent``/``answered`` are per agent."""

    submitted: int
    answered_total: int
    failed: int
    hedged: int
    hedge_wins: int
    cancelled: int
    retried: int
    rebalanced: int
    backups: int
    sent: dict[str, int]
    answered: dict[str, int]


class _Job:
    __slots__ = (
        "answer",
        "done",
        "error",
        "hedge_agent",
        "hedged",
        "holders",
        "prompt",
        "prompt_tokens",
        "running",
        "settled",
        "started",
        "tokens",
        "tried",
    )

    def __init__(self, prompt: Prompt, tokens: float, prompt_tokens: float) -> None:
        self.prompt = prompt
        self.tokens = tokens
        self.prompt_tokens = prompt_tokens
        self.done = anyio.Event()
        self.answer: Answer | None = None
        self.error: Exception | None = None
        self.tried: set[str] = set()
        self.holders: set[str] = set()  # agents whose waiting line holds it
        self.running: dict[str, anyio.CancelScope] = {}  # agents it is on the wire to
        self.hedged = False
        self.hedge_agent = ""
        self.settled = False
        self.started: dict[str, tuple[float, float]] = {}  # agent -> (sent at, expected s)


class _Member:
    """One agent as this dispatcher sees it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.device = ""
        self.tokens_per_s = 0.0
        self.prompt_tokens_per_s = 0.0
        self.draining = False
        self.learning = False  # known by heartbeat only, asking it for its rates
        self.last_seen = time.monotonic()
        self.waiting: deque[_Job] = deque()
        self.sent = 0
        self.sent_tokens = 0.0
        self.sent_prompt_tokens = 0.0
        self.queued_tokens = 0.0  # waiting + sent
        self.queued_prompt_tokens = 0.0
        self.sent_count = 0
        self.answered = 0

    def load(self, *, sent_only: bool = False) -> AgentLoad:
        return AgentLoad(
            agent=self.name,
            device=self.device,
            tokens_per_s=self.tokens_per_s,
            prompt_tokens_per_s=self.prompt_tokens_per_s,
            queued_tokens=self.sent_tokens if sent_only else self.queued_tokens,
            queued_prompt_tokens=(
                self.sent_prompt_tokens if sent_only else self.queued_prompt_tokens
            ),
            in_flight=self.sent if sent_only else self.sent + len(self.waiting),
        )

    def hold(self, job: _Job, *, front: bool = False) -> None:
        (self.waiting.appendleft if front else self.waiting.append)(job)
        self.queued_tokens += job.tokens
        self.queued_prompt_tokens += job.prompt_tokens
        job.holders.add(self.name)
        job.tried.add(self.name)

    def release(self, job: _Job) -> None:
        """Account for a job that leaves this agent (finished, cancelled or moved)."""
        self.queued_tokens = max(0.0, self.queued_tokens - job.tokens)
        self.queued_prompt_tokens = max(0.0, self.queued_prompt_tokens - job.prompt_tokens)


class Dispatcher:
    """Sends prompts to a team's agents by placement; create with ``open_dispatcher``."""

    def __init__(
        self,
        bus: Bus,
        subjects: Subjects,
        *,
        placement: Placement,
        hedge: HedgePolicy | None,
        config: DispatcherConfig,
        tg: TaskGroup,
    ) -> None:
        self.bus = bus
        self.subjects = subjects
        self.placement = placement
        self.hedge = hedge
        self.config = config
        self._tg = tg
        self._members: dict[str, _Member] = {}
        self._active: dict[str, _Job] = {}
        self._slowness: deque[float] = deque(maxlen=_SLOWNESS_SAMPLES)
        self._changed = anyio.Event()  # set (and replaced) whenever membership changes
        self._closed = False
        self._log = log.bind(team=subjects.team, dispatcher=bus.name)
        self._counts = dict.fromkeys(
            (
                "submitted",
                "answered_total",
                "failed",
                "hedged",
                "hedge_wins",
                "cancelled",
                "retried",
                "rebalanced",
                "backups",
            ),
            0,
        )
        self._sent: dict[str, int] = {}
        self._answered: dict[str, int] = {}

    # --- what it knows -----------------------------------------------------------------------
    def agents(self) -> tuple[AgentLoad, ...]:
        """Every agent it would place on now, with the load it has assigned there."""
        return tuple(m.load() for m in self._eligible())

    def statistics(self) -> DispatchStatistics:
        return DispatchStatistics(
            **self._counts, sent=dict(self._sent), answered=dict(self._answered)
        )

    async def wait_for_agents(self, count: int = 1, *, timeout: float | None = None) -> None:
        """Return once ``count`` agents may take work; ``AgentError`` after ``timeout``."""
        limit = self.config.agent_timeout_s if timeout is None else timeout
        with anyio.move_on_after(limit):
            while len(self._eligible()) < count:
                await self._changed.wait()
            return
        known = sorted(m.name for m in self._eligible())
        raise AgentError(
            f"only {len(known)} of {count} agents of team {self.subjects.team!r} known after "
            f"{limit:g}s ({', '.join(known) or 'none'}): agents announce themselves on "
            f"{self.subjects.gossip('join')} and heartbeat on "
            f"{self.subjects.gossip('heartbeat')}; start some, or check the team name"
        )

    def _membership_changed(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def _eligible(self) -> list[_Member]:
        return [m for m in self._members.values() if not (m.draining or m.learning)]

    # --- submitting --------------------------------------------------------------------------
    async def submit(
        self,
        prompt: str | Prompt,
        *,
        max_tokens: int = 128,
        system: str | None = None,
        timeout: float | None = None,
    ) -> Answer:
        """Place one prompt, hedge it if it straggles, and return the first answer."""
        if self._closed:
            raise AgentError("the dispatcher is closed")
        msg = prompt if isinstance(prompt, Prompt) else None
        if msg is None:
            msg = Prompt(task_id=new_id(), prompt=str(prompt), system=system, max_tokens=max_tokens)
        validate_token(msg.task_id, "task id")
        if not msg.prompt.strip():
            raise ConfigError("the prompt is empty")
        if msg.max_tokens < 1:
            raise ConfigError(f"max_tokens must be >= 1, got {msg.max_tokens}")
        if msg.task_id in self._active:
            raise ConfigError(f"task id {msg.task_id!r} is already being dispatched")
        await self.wait_for_agents(1)
        job = _Job(
            msg,
            tokens=msg.max_tokens * self.config.output_fraction,
            prompt_tokens=float(estimate_tokens(msg.prompt) + estimate_tokens(msg.system or "")),
        )
        self._active[msg.task_id] = job
        self._counts["submitted"] += 1
        limit = self.config.task_timeout_s if timeout is None else timeout
        try:
            if not self._place(job):
                raise AgentError("no agent may take work (all draining)")
            with anyio.move_on_after(limit):
                await job.done.wait()
            if not job.done.is_set():
                raise RequestTimeoutError(f"task {msg.task_id} got no answer within {limit:g}s")
        finally:
            self._active.pop(msg.task_id, None)
            self._settle(job, winner="")  # no-op when done; cancels leftovers otherwise
        if job.answer is None:
            self._counts["failed"] += 1
            raise job.error or AgentError(f"task {msg.task_id} failed")
        return job.answer

    # --- placement ---------------------------------------------------------------------------
    def _place(self, job: _Job, *, exclude: Collection[str] = (), front: bool = False) -> bool:
        """Hold ``job`` at the agent the placement picks; a hedge (``front``) jumps the line.

        A hedge is placed by what each agent has on the wire, since it will not wait behind
        the rest.
        """
        candidates = [m for m in self._eligible() if m.name not in exclude]
        if not candidates:
            return False
        name = self.placement.choose(
            [m.load(sent_only=front) for m in candidates], job.tokens, job.prompt_tokens
        )
        member = self._members[name]
        member.hold(job, front=front)
        self._pump(member)
        return True

    def _pump(self, member: _Member) -> None:
        """Put waiting work on the wire up to the window; steal some when it runs dry."""
        if member.name not in self._members or self._closed:
            return
        while member.sent < self.config.window:
            if not member.waiting and not (
                self.placement.rebalance and (self._steal(member) or self._backup(member))
            ):
                return
            job = member.waiting.popleft()
            job.holders.discard(member.name)
            if job.done.is_set():
                member.release(job)
                continue
            expected = expected_finish(
                member.load(sent_only=True),
                job.tokens,
                job.prompt_tokens,
                default_rates=stand_in_rates([m.load() for m in self._members.values()]),
            )
            member.sent += 1
            member.sent_tokens += job.tokens
            member.sent_prompt_tokens += job.prompt_tokens
            scope = anyio.CancelScope()
            job.running[member.name] = scope
            job.started[member.name] = (time.monotonic(), expected)
            self._tg.start_soon(self._attempt, job, member, scope, expected)
            if self.hedge is not None and not job.hedged and len(job.running) == 1:
                self._tg.start_soon(self._hedge_later, job, member, expected)

    def _steal(self, idle: _Member) -> bool:
        """Move the last waiting job of the agent that would finish it latest, if it helps."""
        defaults = stand_in_rates([m.load() for m in self._members.values()])
        mine = idle.load()
        best: tuple[float, _Member] | None = None
        for other in self._members.values():
            if other is idle or not other.waiting:
                continue
            job = other.waiting[-1]
            if idle.name in job.running or idle.name in job.holders:
                continue
            there = expected_finish(other.load(), 0.0, default_rates=defaults)
            here = expected_finish(mine, job.tokens, job.prompt_tokens, default_rates=defaults)
            if there - here > 0 and (best is None or there - here > best[0]):
                best = (there - here, other)
        if best is None:
            return False
        victim = best[1]
        job = victim.waiting.pop()
        job.holders.discard(victim.name)
        victim.release(job)
        idle.hold(job)
        self._counts["rebalanced"] += 1
        return True

    def _backup(self, idle: _Member) -> bool:
        """An idle agent takes a backup copy of the running job it would finish in half the time.

        Only once nothing waits anywhere (the end of a burst), as MapReduce's backup tasks: a
        slow device's last prompt should not set the makespan while fast devices idle. The
        copy counts as the job's one hedge; the first answer wins and the loser is cancelled.
        """
        if idle.sent or any(m.waiting for m in self._members.values()):
            return False
        defaults = stand_in_rates([m.load() for m in self._members.values()])
        now = time.monotonic()
        best: tuple[float, _Job] | None = None
        for job in self._active.values():
            if job.done.is_set() or job.hedged or not job.running or idle.name in job.running:
                continue
            remaining = max(
                (sent_at + expected - now for sent_at, expected in job.started.values()),
                default=0.0,
            )
            here = expected_finish(
                idle.load(sent_only=True), job.tokens, job.prompt_tokens, default_rates=defaults
            )
            if here < 0.5 * remaining and (best is None or remaining - here > best[0]):
                best = (remaining - here, job)
        if best is None:
            return False
        job = best[1]
        job.hedged = True
        job.hedge_agent = idle.name
        idle.hold(job, front=True)
        self._counts["hedged"] += 1
        self._counts["backups"] += 1
        return True

    # --- one request on the wire -------------------------------------------------------------
    async def _attempt(
        self, job: _Job, member: _Member, scope: anyio.CancelScope, expected: float
    ) -> None:
        started = time.monotonic()
        self._sent[member.name] = self._sent.get(member.name, 0) + 1
        member.sent_count += 1
        ref = ActorRef(self.bus, self.subjects, member.name)
        try:
            with scope:
                answer = await ref.ask(
                    job.prompt,
                    expect=Answer,
                    timeout=self.config.request_timeout_s,
                    sender=self.bus.name,
                )
                if expected > 0:
                    self._slowness.append((time.monotonic() - started) / expected)
                if not job.done.is_set():
                    job.answer = answer
                    member.answered += 1
                    self._counts["answered_total"] += 1
                    self._answered[member.name] = self._answered.get(member.name, 0) + 1
                    if job.hedged and member.name == job.hedge_agent:
                        self._counts["hedge_wins"] += 1
                    self._settle(job, winner=member.name)
        except (AgentError, BusError) as err:
            self._failed(job, member, err)
        finally:
            job.running.pop(member.name, None)
            job.started.pop(member.name, None)
            member.sent -= 1
            member.sent_tokens = max(0.0, member.sent_tokens - job.tokens)
            member.sent_prompt_tokens = max(0.0, member.sent_prompt_tokens - job.prompt_tokens)
            member.release(job)
            self._pump(member)

    def _failed(self, job: _Job, member: _Member, err: Exception) -> None:
        self._log.warning(
            "dispatch.attempt_failed",
            task_id=job.prompt.task_id,
            agent=member.name,
            error=f"{type(err).__name__}: {err}",
        )
        if isinstance(err, ActorDeadError):
            self._forget(member.name, reason="dead")
        if job.done.is_set() or len(job.running) > 1 or job.holders:
            return  # another copy carries on
        if len(job.tried) < self.config.max_attempts and self._place(job, exclude=job.tried):
            self._counts["retried"] += 1
            return
        job.error = err
        self._settle(job, winner="")

    def _settle(self, job: _Job, *, winner: str) -> None:
        """Finish a job: wake its submitter, cancel every other copy, here and on agents."""
        job.done.set()
        if job.settled:
            return
        job.settled = True
        for name in list(job.holders):
            holder = self._members.get(name)
            if holder is not None and job in holder.waiting:
                holder.waiting.remove(job)
                holder.release(job)
        job.holders.clear()
        for name, scope in list(job.running.items()):
            if name == winner:
                continue
            scope.cancel()
            self._counts["cancelled"] += 1
            if not self._closed:
                self._tg.start_soon(self._cancel_on, name, job.prompt.task_id)

    async def _cancel_on(self, agent: str, task_id: str) -> None:
        with contextlib.suppress(BusError, ConfigError):
            await self.bus.publish(
                self.subjects.control(agent), Cancel(task_id=task_id), sender=self.bus.name
            )
        self._log.info("dispatch.cancelled", task_id=task_id, agent=agent)

    async def _hedge_later(self, job: _Job, first: _Member, expected: float) -> None:
        assert self.hedge is not None
        delay = self.hedge.delay(expected, self._slowness)
        with anyio.move_on_after(delay):
            await job.done.wait()
        if job.done.is_set() or job.hedged or self._closed:
            return
        busy = set(job.running) | job.holders
        job.hedged = True
        if self._place(job, exclude=tuple(busy), front=True):
            job.hedge_agent = next((n for n in job.holders | set(job.running) if n not in busy), "")
            self._counts["hedged"] += 1
            self._log.info(
                "dispatch.hedged",
                task_id=job.prompt.task_id,
                first=first.name,
                to=job.hedge_agent,
                after_s=round(delay, 4),
            )

    # --- membership --------------------------------------------------------------------------
    def _member(self, name: str) -> _Member:
        member = self._members.get(name)
        if member is None:
            member = self._members[name] = _Member(name)
            self._membership_changed()
        member.last_seen = time.monotonic()
        return member

    async def _on_join(self, incoming: Incoming[AgentInfo]) -> None:
        info = incoming.body
        if info.team != self.subjects.team:
            return
        member = self._member(info.agent)
        member.device = info.device
        member.tokens_per_s = info.tokens_per_s
        member.prompt_tokens_per_s = info.prompt_tokens_per_s
        member.draining = False
        member.learning = False
        self._membership_changed()
        self._log.info("dispatch.agent_joined", agent=info.agent, tokens_per_s=info.tokens_per_s)
        self._pump(member)

    async def _on_heartbeat(self, incoming: Incoming[Heartbeat]) -> None:
        beat = incoming.body
        known = beat.agent in self._members
        member = self._member(beat.agent)
        draining = beat.state == "draining"
        if draining != member.draining:
            member.draining = draining
            self._membership_changed()
        if not known:  # joined before we listened: not placed on until its rates are in
            member.learning = True
            self._tg.start_soon(self._learn, beat.agent)

    async def _learn(self, name: str) -> None:
        """Ask an agent we only know by heartbeat for its device and rates (0 if it fails)."""
        try:
            with contextlib.suppress(AgentError, BusError):
                pong = await ActorRef(self.bus, self.subjects, name).ask(
                    Ping(), expect=Pong, timeout=self.config.silence_s
                )
                member = self._members.get(name)
                if member is not None and member.learning:
                    member.device = pong.device
                    member.tokens_per_s = pong.tokens_per_s
                    member.prompt_tokens_per_s = pong.prompt_tokens_per_s
        finally:
            member = self._members.get(name)
            if member is not None and member.learning:
                member.learning = False
                self._membership_changed()
                self._pump(member)

    async def _on_leave(self, incoming: Incoming[Leave]) -> None:
        self._forget(incoming.body.agent, reason=incoming.body.reason)

    def _forget(self, name: str, *, reason: str) -> None:
        """Drop an agent; what waited for it is placed again, what runs there plays out."""
        member = self._members.pop(name, None)
        if member is None:
            return
        self._log.info("dispatch.agent_left", agent=name, reason=reason)
        orphans = list(member.waiting)
        member.waiting.clear()
        for job in orphans:
            job.holders.discard(name)
            if job.done.is_set() or job.running or job.holders:
                continue
            if not self._place(job):
                job.error = AgentError(f"agent {name} left ({reason}) and no other agent is known")
                self._settle(job, winner="")

    async def _sweep(self) -> None:
        while True:
            await anyio.sleep(self.config.silence_s / 4)
            cutoff = time.monotonic() - self.config.silence_s
            for member in list(self._members.values()):
                if member.last_seen < cutoff:
                    self._forget(member.name, reason="silent")

    async def _close(self) -> None:
        self._closed = True
        for job in list(self._active.values()):
            if not job.done.is_set():
                job.error = AgentError("the dispatcher closed before an answer arrived")
                self._settle(job, winner="")


@contextlib.asynccontextmanager
async def open_dispatcher(
    bus: Bus,
    team: str,
    placement: Placement | None = None,
    hedge: HedgePolicy | None = None,
    config: DispatcherConfig | None = None,
) -> AsyncIterator[Dispatcher]:
    """Dispatch prompts to ``team``'s agents for the duration of the block.

    ``placement`` defaults to :class:`~lmteams.hardware.LeastExpectedCompletion`; without
    ``hedge`` nothing is hedged.
    """
    subjects = Subjects(team)
    async with anyio.create_task_group() as tg:
        chosen: Placement = placement if placement is not None else LeastExpectedCompletion()
        dispatcher = Dispatcher(
            bus,
            subjects,
            placement=chosen,
            hedge=hedge,
            config=config or DispatcherConfig(),
            tg=tg,
        )
        subs: list[Subscription] = [
            await bus.subscribe(subjects.gossip("join"), dispatcher._on_join, codec=_JOIN),
            await bus.subscribe(
                subjects.gossip("heartbeat"), dispatcher._on_heartbeat, codec=_BEAT
            ),
            await bus.subscribe(subjects.gossip("leave"), dispatcher._on_leave, codec=_LEAVE),
        ]
        tg.start_soon(dispatcher._sweep)
        try:
            yield dispatcher
        finally:
            with anyio.CancelScope(shield=True):
                for sub in subs:
                    await sub.unsubscribe()
                await dispatcher._close()
            tg.cancel_scope.cancel()
