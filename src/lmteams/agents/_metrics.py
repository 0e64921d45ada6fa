"""Prometheus metrics of one agent process: what its agents did, and how the team looks.

Each runtime has its own ``CollectorRegistry`` (never prometheus_client's global one), so
several runtimes in one process (tests, studies) and several agents in one runtime never
collide; every series carries ``team`` and ``agent`` labels.

Two kinds of figures, recorded two ways:

- **Events** (a task answered or refused, a redelivery, a dead letter, tokens read and
  written) are counted where they happen, by the agent's :class:`AgentMeter`, whose label
  children are bound once, so the hot path pays a lock and an add, never a label lookup.
  The meter belongs to the runtime's cell, not to one incarnation of the actor: a crashed
  and restarted agent keeps counting up, as a Prometheus counter must.
- **States** (tasks in flight, tokens/s, mailbox depth, members by liveness) are read when
  Prometheus scrapes, by :class:`_ScrapeTime`, from what already holds them: the runtime's
  cell statistics and the membership view (the facts each agent publishes every heartbeat).
  Nothing on the hot path updates a gauge.

``serve_metrics`` exposes a registry over HTTP for ``--metrics-port``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, get_args

import anyio
import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from lmteams.agents._membership import Liveness, MemberInfo
from lmteams.errors import ConfigError

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from lmteams.agents._messages import Result
    from lmteams.agents._runtime import Runtime
    from lmteams.hardware import Completion

__all__ = ("OUTCOMES", "AgentMeter", "RuntimeMetrics", "serve_metrics")

log = structlog.get_logger(__name__)

OUTCOMES = ("ok", "error", "refused", "duplicate", "poisoned")
"""``lmteams_tasks_total{outcome}``: a result with an answer; a result with an error (the
backend failed or the task timed out); refused before the model ran (undecodable, invalid,
too long for the context); a second message with an answered id; given up after
``max_deliveries`` tries."""

# LLM tasks take from tens of milliseconds (a simulated device) to minutes (a big model)
_SECONDS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
_AGENT = ("team", "agent")


class AgentMeter:
    """One agent's event counters, bound to its labels; the worker and its task path call it."""

    def __init__(self, metrics: RuntimeMetrics, agent: str) -> None:
        labels = (metrics.team, agent)
        self._outcome = {o: metrics.tasks.labels(*labels, o) for o in OUTCOMES}
        self._duration = metrics.task_seconds.labels(*labels)
        self._queue_wait = metrics.queue_seconds.labels(*labels)
        self._tokens_in = metrics.tokens_in.labels(*labels)
        self._tokens_out = metrics.tokens_out.labels(*labels)
        self._redeliveries = metrics.redeliveries.labels(*labels)
        self._dead_letters = metrics.dead_letters
        self._labels = labels

    def delivered(self, deliveries: int) -> None:
        """A delivery pulled from the queue: its second and later copies are redeliveries."""
        if deliveries > 1:
            self._redeliveries.inc()

    def answered(self, result: Result) -> None:
        """A task's result was stored by this agent (the model ran: ok, or its error)."""
        self._outcome["ok" if result.ok else "error"].inc()
        self._duration.observe(result.total_s)
        self._queue_wait.observe(result.queue_s)

    def generated(self, completion: Completion) -> None:
        """One model call of this agent (queued task, a coordinator's prompt, a job subtask)."""
        self._tokens_in.inc(completion.tokens_in)
        self._tokens_out.inc(completion.tokens_out)

    def refused(self, kind: str) -> None:
        """A task or message refused with a dead letter (``kind``: decode, invalid, ...)."""
        outcome = {"duplicate": "duplicate", "poison": "poisoned"}.get(kind, "refused")
        self._outcome[outcome].inc()
        self.dead_letter(kind)

    def dead_letter(self, kind: str) -> None:
        """A message kept in the dead-letter stream (a refusal, or an inbox decode error)."""
        self._dead_letters.labels(*self._labels, kind).inc()


class RuntimeMetrics:
    """The registry of one runtime: event metrics, the scrape-time collector, the meters."""

    def __init__(self, runtime: Runtime) -> None:
        self.team = runtime.subjects.team
        self.registry = CollectorRegistry()
        r = self.registry
        self.tasks = Counter(
            "lmteams_tasks", "Tasks ended by this agent, by outcome.", (*_AGENT, "outcome"),
            registry=r,
        )  # fmt: skip
        self.task_seconds = Histogram(
            "lmteams_task_duration_seconds",
            "Seconds from claiming a task to its result (the model's work and the strategy's).",
            _AGENT, registry=r, buckets=_SECONDS,
        )  # fmt: skip
        self.queue_seconds = Histogram(
            "lmteams_queue_wait_seconds",
            "Seconds a task waited in the queue, from its submission to its claim.",
            _AGENT, registry=r, buckets=_SECONDS,
        )  # fmt: skip
        self.tokens_in = Counter(
            "lmteams_tokens_in", "Prompt tokens this agent's model read.", _AGENT, registry=r
        )
        self.tokens_out = Counter(
            "lmteams_tokens_out", "Tokens this agent's model generated.", _AGENT, registry=r
        )
        self.redeliveries = Counter(
            "lmteams_redeliveries",
            "Task deliveries after the first (a try that crashed, hung or was handed back).",
            _AGENT, registry=r,
        )  # fmt: skip
        self.dead_letters = Counter(
            "lmteams_dead_letters", "Messages put in the dead-letter stream, by kind.",
            (*_AGENT, "kind"), registry=r,
        )  # fmt: skip
        r.register(_ScrapeTime(runtime))
        self._meters: dict[str, AgentMeter] = {}

    def agent(self, actor_id: str) -> AgentMeter:
        """The meter of a hosted agent, the same one across its restarts."""
        meter = self._meters.get(actor_id)
        if meter is None:
            meter = self._meters[actor_id] = AgentMeter(self, actor_id)
        return meter


class _ScrapeTime(Collector):
    """Gauges read when scraped (in the exposition server's thread: it only reads)."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    def collect(self) -> Iterator[Metric]:
        team = self._runtime.subjects.team
        in_flight = GaugeMetricFamily(
            "lmteams_tasks_in_flight", "Model calls this agent is running now.", labels=_AGENT
        )
        rate = GaugeMetricFamily(
            "lmteams_tokens_per_second",
            "Generation rate this agent advertises (measured on its device).",
            labels=_AGENT,
        )
        mailbox = GaugeMetricFamily(
            "lmteams_mailbox_depth", "Messages waiting in this agent's mailbox.", labels=_AGENT
        )
        members = GaugeMetricFamily(
            "lmteams_members",
            "Members of the team in this process's membership view, by state.",
            labels=("team", "state"),
        )
        view = {m.name: m for m in self._members()}
        for stats in self._runtime.statistics():
            labels = [team, stats.actor_id]
            mailbox.add_metric(labels, stats.mailbox)
            member = view.get(stats.actor_id)
            if member is not None:
                in_flight.add_metric(labels, member.facts.in_flight)
                rate.add_metric(labels, member.facts.tokens_per_s)
        for state in get_args(Liveness):
            members.add_metric([team, state], sum(m.state == state for m in view.values()))
        yield from (in_flight, rate, mailbox, members)

    def _members(self) -> tuple[MemberInfo, ...]:
        """The view's members; the loop thread may change the view while this thread reads."""
        for _ in range(3):
            with contextlib.suppress(RuntimeError):  # "changed size during iteration"
                return self._runtime.membership.members()
        return ()


@contextlib.asynccontextmanager
async def serve_metrics(
    registry: CollectorRegistry, *, port: int, host: str = "127.0.0.1"
) -> AsyncIterator[tuple[str, int]]:
    """Serve ``registry``'s exposition on ``http://host:port/metrics`` for the block.

    prometheus_client's server runs in a thread of its own; it is shut down and joined on
    exit, so a daemon leaves no thread behind. ``port=0`` takes a free port; the address
    actually bound is what the block gets.
    """
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as err:  # in use, not ours to bind, an unknown host
        raise ConfigError(f"cannot serve metrics on {host}:{port}: {err}") from None
    bound = str(server.server_address[0]), int(server.server_address[1])
    log.info("metrics.serving", url=f"http://{bound[0]}:{bound[1]}/metrics")
    try:
        yield bound
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(server.shutdown)  # waits for serve_forever to end
            server.server_close()
            await anyio.to_thread.run_sync(thread.join, 5.0)
