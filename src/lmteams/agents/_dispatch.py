"""The dispatcher: places prompts on agents by capacity, hedges stragglers, cancels losers.

Who may take work, and how fast it is, come from the process's one membership view (the
:class:`~lmteams.agents.Membership` it is given): a member is placed on while it is
``available`` (live and serving), at the token rates its facts advertise. The dispatcher keeps
no liveness of its own, only a ledger per agent of the work *it* has assigned there and not
seen finish, so it agrees with strategies and ``lmteams status`` on who is alive. When the
view changes, a member that joined is put to work (it may take waiting work from the slowest
queue), a member that stopped being available loses its waiting work to the others, and a
member the view declares dead also loses what it was running (it will not answer).

Each prompt goes where a :class:`~lmteams.hardware.Placement` says; at most ``window``
requests per agent are on the wire (well under the agent's bounded mailbox), the rest wait
here, where capacity-aware placement may still move them to an agent that runs dry (late
binding corrects the early guess, which is what keeps a fast agent from idling while a slow
one holds a queue).

Hedging: once a request has run ``HedgePolicy.delay`` past its send, a copy goes to the
best other agent, ahead of that agent's waiting work; the first answer wins, and the loser
is cancelled twice over: its request is dropped here, and a ``Cancel`` on the agent's control
subject stops its generation (the agent's mailbox is busy with that very prompt, so the
cancel cannot queue behind it).

Limits: load that other dispatchers (or the task queue) put on an agent is invisible here
(its facts carry ``in_flight``, not yet used); rates are what agents advertise, not yet
re-measured.
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

from lmteams.agents._membership import MemberFacts, MemberInfo, Membership
from lmteams.agents._messages import Answer, Cancel, Prompt
from lmteams.agents._ref import ActorRef
from lmteams.bus import Bus, Subjects, new_id, validate_token
from lmteams.errors import AgentError, BusError, ConfigError, RequestTimeoutError
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

_SLOWNESS_SAMPLES = 512
_RECHECK_S = 1.0
"""The longest the change loop waits for the view before it looks again anyway."""
_UNKNOWN = MemberFacts()


class DispatcherConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Clocks and bounds of a dispatcher; tests shorten them."""

    window: int = 2
    """Requests on the wire per agent; keep it below the agent's mailbox (16 for workers)."""
    request_timeout_s: float = 120.0
    """One attempt on one agent."""
    task_timeout_s: float = 600.0
    """A whole ``submit``, hedges and retries included, unless it passes its own."""
    agent_timeout_s: float = 5.0
    """How long ``submit`` waits for a first available member before it gives up."""
    max_attempts: int = 3
    """Agents a task may be tried on after failures (a hedge is not a failure)."""
    output_fraction: float = 1.0
    """Expected output tokens as a fraction of ``max_tokens`` (1.0: assume the worst)."""

    def __post_init__(self) -> None:
        if not 1 <= self.window <= 14:
            raise ConfigError(f"window must be 1..14 (below a worker's mailbox), got {self.window}")
        for name in ("request_timeout_s", "task_timeout_s", "agent_timeout_s"):
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


class _Ledger:
    """The work this dispatcher assigned to one agent: what waits here and what is sent."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.waiting: deque[_Job] = deque()
        self.sent = 0
        self.sent_tokens = 0.0
        self.sent_prompt_tokens = 0.0
        self.queued_tokens = 0.0  # waiting + sent
        self.queued_prompt_tokens = 0.0

    def load(self, facts: MemberFacts, *, sent_only: bool = False) -> AgentLoad:
        return AgentLoad(
            agent=self.name,
            device=facts.device,
            tokens_per_s=facts.tokens_per_s,
            prompt_tokens_per_s=facts.prompt_tokens_per_s,
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
        membership: Membership,
        placement: Placement,
        hedge: HedgePolicy | None,
        config: DispatcherConfig,
        tg: TaskGroup,
    ) -> None:
        self.bus = bus
        self.subjects = subjects
        self.membership = membership
        self.placement = placement
        self.hedge = hedge
        self.config = config
        self._tg = tg
        self._ledgers: dict[str, _Ledger] = {}
        self._active: dict[str, _Job] = {}
        self._slowness: deque[float] = deque(maxlen=_SLOWNESS_SAMPLES)
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
        return tuple(ledger.load(info.facts) for info, ledger in self._eligible())

    def statistics(self) -> DispatchStatistics:
        return DispatchStatistics(
            **self._counts, sent=dict(self._sent), answered=dict(self._answered)
        )

    async def wait_for_agents(self, count: int = 1, *, timeout: float | None = None) -> None:
        """Return once ``count`` members are available; ``AgentError`` after ``timeout``."""
        limit = self.config.agent_timeout_s if timeout is None else timeout
        with anyio.move_on_after(limit):
            while len(self._eligible()) < count:
                await self.membership.wait_changed()
            return
        known = sorted(info.name for info, _ in self._eligible())
        raise AgentError(
            f"only {len(known)} of {count} agents of team {self.subjects.team!r} available "
            f"after {limit:g}s ({', '.join(known) or 'none'}): agents join the team's "
            f"membership when they start; start some, or check the team name"
        )

    def _eligible(self) -> list[tuple[MemberInfo, _Ledger]]:
        """The members the view says may take work, each with its ledger here."""
        return [
            (info, self._ledger(info.name)) for info in self.membership.members() if info.available
        ]

    def _ledger(self, name: str) -> _Ledger:
        ledger = self._ledgers.get(name)
        if ledger is None:
            ledger = self._ledgers[name] = _Ledger(name)
        return ledger

    def _facts(self, name: str) -> MemberFacts:
        info = self.membership.member(name)
        return info.facts if info is not None else _UNKNOWN

    def _load(self, ledger: _Ledger, *, sent_only: bool = False) -> AgentLoad:
        return ledger.load(self._facts(ledger.name), sent_only=sent_only)

    def _stand_in_rates(self) -> tuple[float, float]:
        return stand_in_rates([ledger.load(info.facts) for info, ledger in self._eligible()])

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
        candidates = [(i, led) for i, led in self._eligible() if i.name not in exclude]
        if not candidates:
            return False
        name = self.placement.choose(
            [led.load(i.facts, sent_only=front) for i, led in candidates],
            job.tokens,
            job.prompt_tokens,
        )
        ledger = self._ledgers[name]
        ledger.hold(job, front=front)
        self._pump(ledger)
        return True

    def _pump(self, ledger: _Ledger) -> None:
        """Put waiting work on the wire up to the window; steal some when it runs dry."""
        info = self.membership.member(ledger.name)
        if self._closed or info is None or not info.available:
            return
        defaults = self._stand_in_rates()
        while ledger.sent < self.config.window:
            if not ledger.waiting and not (
                self.placement.rebalance and (self._steal(ledger) or self._backup(ledger))
            ):
                return
            job = ledger.waiting.popleft()
            job.holders.discard(ledger.name)
            if job.done.is_set():
                ledger.release(job)
                continue
            expected = expected_finish(
                ledger.load(info.facts, sent_only=True),
                job.tokens,
                job.prompt_tokens,
                default_rates=defaults,
            )
            ledger.sent += 1
            ledger.sent_tokens += job.tokens
            ledger.sent_prompt_tokens += job.prompt_tokens
            scope = anyio.CancelScope()
            job.running[ledger.name] = scope
            job.started[ledger.name] = (time.monotonic(), expected)
            self._tg.start_soon(self._attempt, job, ledger, scope, expected)
            if self.hedge is not None and not job.hedged and len(job.running) == 1:
                self._tg.start_soon(self._hedge_later, job, ledger, expected)

    def _steal(self, idle: _Ledger) -> bool:
        """Move the last waiting job of the agent that would finish it latest, if it helps."""
        defaults = self._stand_in_rates()
        mine = self._load(idle)
        best: tuple[float, _Ledger] | None = None
        for other in self._ledgers.values():
            if other is idle or not other.waiting:
                continue
            job = other.waiting[-1]
            if idle.name in job.running or idle.name in job.holders:
                continue
            there = expected_finish(self._load(other), 0.0, default_rates=defaults)
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

    def _backup(self, idle: _Ledger) -> bool:
        """An idle agent takes a backup copy of the running job it would finish in half the time.

        Only once nothing waits anywhere (the end of a burst), as MapReduce's backup tasks: a
        slow device's last prompt should not set the makespan while fast devices idle. The
        copy counts as the job's one hedge; the first answer wins and the loser is cancelled.
        """
        if idle.sent or any(ledger.waiting for ledger in self._ledgers.values()):
            return False
        defaults = self._stand_in_rates()
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
                self._load(idle, sent_only=True),
                job.tokens,
                job.prompt_tokens,
                default_rates=defaults,
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
        self, job: _Job, ledger: _Ledger, scope: anyio.CancelScope, expected: float
    ) -> None:
        started = time.monotonic()
        self._sent[ledger.name] = self._sent.get(ledger.name, 0) + 1
        ref = ActorRef(self.bus, self.subjects, ledger.name)
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
                    self._counts["answered_total"] += 1
                    self._answered[ledger.name] = self._answered.get(ledger.name, 0) + 1
                    if job.hedged and ledger.name == job.hedge_agent:
                        self._counts["hedge_wins"] += 1
                    self._settle(job, winner=ledger.name)
            if scope.cancelled_caught and not job.done.is_set():
                # not a loser's cancel (that settles the job first): the view declared it dead
                self._failed(job, ledger, AgentError(f"agent {ledger.name} is dead"))
        except (AgentError, BusError) as err:
            self._failed(job, ledger, err)
        finally:
            job.running.pop(ledger.name, None)
            job.started.pop(ledger.name, None)
            ledger.sent -= 1
            ledger.sent_tokens = max(0.0, ledger.sent_tokens - job.tokens)
            ledger.sent_prompt_tokens = max(0.0, ledger.sent_prompt_tokens - job.prompt_tokens)
            ledger.release(job)
            self._pump(ledger)

    def _failed(self, job: _Job, ledger: _Ledger, err: Exception) -> None:
        self._log.warning(
            "dispatch.attempt_failed",
            task_id=job.prompt.task_id,
            agent=ledger.name,
            error=f"{type(err).__name__}: {err}",
        )
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
            holder = self._ledgers.get(name)
            if holder is not None and job in holder.waiting:
                holder.waiting.remove(job)
                holder.release(job)
        job.holders.clear()
        for name, scope in list(job.running.items()):
            if name == winner:
                continue
            scope.cancel()
            self._counts["cancelled"] += 1
            self._cancel_later(name, job)

    def _cancel_later(self, agent: str, job: _Job) -> None:
        if not self._closed:
            self._tg.start_soon(self._cancel_on, agent, job.prompt.task_id)

    async def _cancel_on(self, agent: str, task_id: str) -> None:
        with contextlib.suppress(BusError, ConfigError):
            await self.bus.publish(
                self.subjects.control(agent), Cancel(task_id=task_id), sender=self.bus.name
            )
        self._log.info("dispatch.cancelled", task_id=task_id, agent=agent)

    async def _hedge_later(self, job: _Job, first: _Ledger, expected: float) -> None:
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

    # --- following the view ------------------------------------------------------------------
    async def _follow(self) -> None:
        """Re-read the view at each change (and every ``_RECHECK_S`` whatever happens)."""
        while True:
            self._reconcile()
            with anyio.move_on_after(_RECHECK_S):
                await self.membership.wait_changed()

    def _reconcile(self) -> None:
        """Move work off members that may no longer take it; put new members to work."""
        for name, ledger in list(self._ledgers.items()):
            info = self.membership.member(name)
            if info is not None and info.available:
                continue
            state = "gone" if info is None else "draining" if info.live else info.state
            if state == "dead":
                self._abandon_running(ledger)
            if ledger.waiting:
                self._reassign(ledger, state)
            if not ledger.sent:
                del self._ledgers[name]
        for _, ledger in self._eligible():
            self._pump(ledger)

    def _abandon_running(self, ledger: _Ledger) -> None:
        """Stop waiting for answers from an agent the view declares dead; they go elsewhere."""
        for job in list(self._active.values()):
            scope = job.running.get(ledger.name)
            if scope is not None and not scope.cancel_called and not job.done.is_set():
                scope.cancel()
                self._cancel_later(ledger.name, job)

    def _reassign(self, ledger: _Ledger, state: str) -> None:
        """Place the work waiting for an agent again; what it runs plays out (or is abandoned)."""
        self._log.info("dispatch.agent_unavailable", agent=ledger.name, state=state)
        orphans = list(ledger.waiting)
        ledger.waiting.clear()
        for job in orphans:
            job.holders.discard(ledger.name)
            ledger.release(job)
            if job.done.is_set() or job.running or job.holders:
                continue
            if not self._place(job):
                job.error = AgentError(
                    f"agent {ledger.name} is {state} and no other agent is available"
                )
                self._settle(job, winner="")

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
    *,
    membership: Membership,
    placement: Placement | None = None,
    hedge: HedgePolicy | None = None,
    config: DispatcherConfig | None = None,
) -> AsyncIterator[Dispatcher]:
    """Dispatch prompts to ``team``'s agents, as ``membership`` sees them, for the block.

    ``membership`` is the process's view (a runtime's ``membership``, or a gossip view for a
    program that hosts no agent); ``placement`` defaults to
    :class:`~lmteams.hardware.LeastExpectedCompletion`; without ``hedge`` nothing is hedged.
    """
    subjects = Subjects(team)
    async with anyio.create_task_group() as tg:
        dispatcher = Dispatcher(
            bus,
            subjects,
            membership=membership,
            placement=placement if placement is not None else LeastExpectedCompletion(),
            hedge=hedge,
            config=config or DispatcherConfig(),
            tg=tg,
        )
        tg.start_soon(dispatcher._follow)
        try:
            yield dispatcher
        finally:
            with anyio.CancelScope(shield=True):
                await dispatcher._close()
            tg.cancel_scope.cancel()
