"""Agent processes: ``lmteams agent start``, one agent per process or several on one model.

SIGTERM (or a ``Stop`` on the agent's control subject) drains: the agent stops pulling,
finishes or hands back the task in hand, announces that it leaves, and the process exits 0.
A worker that keeps crashing exits 1 so that the process supervisor can decide.

The daemon's view of the team comes from a membership factory the layer above passes in
(gossip, for ``lmteams agent start``); agents never import it. Its signing key outlives the
process, since the team refuses a second key under one name: the key of the nkey seed file
the bus credential names (the key IS the credential), else one kept per team and name in
lmteams' state directory (``identity_path``).

A process may host several agents (``agents > 1``: ``name-1`` .. ``name-K``), each its own
actor with its own key, heartbeat and place in the team, so that they can share one loaded
model (``BackendConfig(share=True)``) instead of holding a copy each. They share the
process's fate too: one that keeps crashing exits the process, the others with it, and the
supervisor restarts them together. On a secured bus they would share one credential, which
the bus's per-agent permissions cannot tell apart, so such a process takes no nkey seed.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import anyio
import msgspec
import structlog

from lmteams.agents._identity import AgentIdentity, identity_from_file, stored_identity
from lmteams.agents._membership import LocalMembership, Membership
from lmteams.agents._messages import Cancel, Stop
from lmteams.agents._metrics import serve_metrics
from lmteams.agents._runtime import (
    ActorState,
    Runtime,
    WorkerService,
    dead_letter,
    open_runtime,
)
from lmteams.agents._state import state_dir
from lmteams.agents._strategy import load_strategies
from lmteams.agents._worker import WorkerAgent, WorkerConfig
from lmteams.bus import Bus, BusAuth, Codec, Incoming, open_bus, validate_token
from lmteams.errors import ConfigError

__all__ = (
    "DaemonConfig",
    "Service",
    "MembershipFactory",
    "run_daemon",
    "daemon_identity",
    "identity_path",
)

log = structlog.get_logger(__name__)


class DaemonConfig(msgspec.Struct, frozen=True, kw_only=True):
    team: str = "default"
    name: str
    nats_url: str | None = None
    roles: tuple[str, ...] = ("worker",)
    worker: WorkerConfig = WorkerConfig()  # worker.streams.replicas: 3 on a cluster
    drain_timeout_s: float = 60.0
    auth: BusAuth = BusAuth()  # credentials for a secured bus (paths; secrets hidden in repr)
    agents: int = 1  # agents this process hosts: name (one) or name-1 .. name-K
    metrics_port: int = 0  # Prometheus metrics on http://metrics_host:port/metrics; 0: none
    metrics_host: str = "127.0.0.1"

    def agent_names(self) -> tuple[str, ...]:
        if self.agents == 1:
            return (self.name,)
        return tuple(f"{self.name}-{i}" for i in range(1, self.agents + 1))


Service = Callable[[Bus, str], Coroutine[Any, Any, None]]
"""Something an agent process runs beside its worker, given the bus and the agent's name
(the ``lmteams`` command uses it for leader election, which lives in a layer above)."""

MembershipFactory = Callable[[Bus, str], contextlib.AbstractAsyncContextManager[Membership]]
"""Opens the team's membership view on a bus for a team (``lmteams.gossip.open_membership``)."""


def identity_path(team: str, name: str) -> Path:
    """Where an agent without an nkey credential keeps its seed (``$LMTEAMS_HOME/keys``)."""
    return state_dir() / "keys" / validate_token(team, "team name") / f"{name}.nk"


def daemon_identity(config: DaemonConfig, name: str | None = None) -> AgentIdentity:
    """Agent ``name``'s signing key (default: the daemon's one agent): its bus credential's
    nkey, else its stored one (made once)."""
    if config.auth.nkey_seed:
        return identity_from_file(Path(config.auth.nkey_seed))
    agent = validate_token(name or config.name, "agent name")
    return stored_identity(identity_path(config.team, agent))


def _check(config: DaemonConfig) -> tuple[str, ...]:
    validate_token(config.team, "team name")
    validate_token(config.name, "agent name")
    if config.agents < 1:
        raise ConfigError(f"a process hosts at least one agent, got agents={config.agents}")
    if config.agents > 1 and (config.auth.nkey_seed or config.auth.creds or config.auth.user):
        raise ConfigError(
            "several agents in one process would share one bus credential, which the "
            "secured bus's per-agent permissions cannot tell apart: run one process per agent"
        )
    return tuple(validate_token(n, "agent name") for n in config.agent_names())


async def run_daemon(
    config: DaemonConfig,
    *,
    services: Sequence[Service] = (),
    membership: MembershipFactory | None = None,
    worker_services: Sequence[WorkerService] = (),
) -> int:
    """Serve until told to stop; return the process exit code.

    ``membership`` opens the team's view around the runtime (so the agent leaves before the
    view closes); without one the agent knows only itself (``LocalMembership``).
    ``worker_services`` run inside the worker (team jobs, for ``lmteams agent start``).
    """
    names = _check(config)
    keys = {name: daemon_identity(config, name) for name in names}
    load_strategies()  # vote, weighted, debate, quorum: registered by the daemon, not by imports
    async with (
        open_bus(config.nats_url, name=config.name, **config.auth.options()) as bus,
        _open_membership(membership, bus, config.team) as view,
        open_runtime(
            bus,
            config.team,
            membership=view,
            identities=keys.__getitem__,
            worker_services=worker_services,
        ) as runtime,
        _metrics_server(config, runtime),
    ):
        stop = anyio.Event()  # the whole process: a signal
        asked: set[str] = set()  # agents a Stop on their control subject asked to leave

        def on_control(name: str) -> Callable[[Incoming[Stop | Cancel]], Awaitable[None]]:
            async def handle(inc: Incoming[Stop | Cancel]) -> None:
                # The worker handles Cancel on the same subject; the daemon only needs Stop.
                if isinstance(inc.body, Stop):
                    log.info("agent.stop_requested", agent=name, reason=inc.body.reason)
                    asked.add(name)

            return handle

        control: Codec[Stop | Cancel] = Codec(Stop, Cancel)
        for name in names:
            await bus.subscribe(
                runtime.subjects.control(name),
                on_control(name),
                codec=control,
                # the worker listens here too; one dead letter per refused control message
                on_decode_error=lambda msg, err: dead_letter(
                    bus, runtime.subjects, msg, "decode", str(err)
                ),
            )
            await runtime.spawn(
                lambda: WorkerAgent(config.worker),
                actor_id=name,
                roles=config.roles,
                drain_timeout=config.drain_timeout_s,
            )
        failed = False
        stopped: set[str] = set()
        async with anyio.create_task_group() as tg:

            async def on_signals() -> None:
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for signum in signals:
                        log.info("agent.signal", signal=signal.Signals(signum).name)
                        stop.set()
                        return

            tg.start_soon(on_signals)
            for service in services:
                for name in names:
                    tg.start_soon(service, bus, name)
            while not stop.is_set() and stopped != set(names):
                with anyio.move_on_after(0.5):
                    await stop.wait()
                if any(runtime.state(n) is ActorState.FAILED for n in names):
                    failed = True
                    break
                for name in sorted(asked - stopped):  # each drains on its own Stop
                    stopped.add(name)
                    await runtime.stop(name)
            tg.cancel_scope.cancel()
        with anyio.CancelScope(shield=True):
            await runtime.stop_all()
    return 1 if failed else 0


def _metrics_server(
    config: DaemonConfig, runtime: Runtime
) -> contextlib.AbstractAsyncContextManager[object]:
    """The process's metrics server, started after its runtime and stopped before it."""
    if not config.metrics_port:
        return contextlib.nullcontext()
    registry = runtime.metrics.registry
    return serve_metrics(registry, port=config.metrics_port, host=config.metrics_host)


def _open_membership(
    factory: MembershipFactory | None, bus: Bus, team: str
) -> contextlib.AbstractAsyncContextManager[Membership]:
    if factory is None:
        return contextlib.nullcontext(LocalMembership())
    return factory(bus, team)
