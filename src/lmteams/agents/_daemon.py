"""One agent per OS process: ``lmteams agent start``.

SIGTERM (or a ``Stop`` on the agent's control subject) drains: the agent stops pulling,
finishes or hands back the task in hand, announces that it leaves, and the process exits 0.
A worker that keeps crashing exits 1 so that the process supervisor can decide.

The daemon's view of the team comes from a membership factory the layer above passes in
(gossip, for ``lmteams agent start``); agents never import it. Its signing key outlives the
process, since the team refuses a second key under one name: the key of the nkey seed file
the bus credential names (the key IS the credential), else one kept per team and name in
lmteams' state directory (``identity_path``).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import anyio
import msgspec
import structlog

from lmteams.agents._identity import AgentIdentity, identity_from_file, stored_identity
from lmteams.agents._membership import LocalMembership, Membership
from lmteams.agents._messages import Cancel, Stop
from lmteams.agents._runtime import ActorState, WorkerService, dead_letter, open_runtime
from lmteams.agents._state import state_dir
from lmteams.agents._strategy import load_strategies
from lmteams.agents._worker import WorkerAgent, WorkerConfig
from lmteams.bus import Bus, BusAuth, Codec, Incoming, open_bus, validate_token

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


Service = Callable[[Bus, str], Coroutine[Any, Any, None]]
"""Something an agent process runs beside its worker, given the bus and the agent's name
(the ``lmteams`` command uses it for leader election, which lives in a layer above)."""

MembershipFactory = Callable[[Bus, str], contextlib.AbstractAsyncContextManager[Membership]]
"""Opens the team's membership view on a bus for a team (``lmteams.gossip.open_membership``)."""


def identity_path(team: str, name: str) -> Path:
    """Where an agent without an nkey credential keeps its seed (``$LMTEAMS_HOME/keys``)."""
    return state_dir() / "keys" / validate_token(team, "team name") / f"{name}.nk"


def daemon_identity(config: DaemonConfig) -> AgentIdentity:
    """The agent's signing key: its bus credential's nkey, else its stored one (made once)."""
    if config.auth.nkey_seed:
        return identity_from_file(Path(config.auth.nkey_seed))
    return stored_identity(identity_path(config.team, validate_token(config.name, "agent name")))


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
    validate_token(config.team, "team name")
    validate_token(config.name, "agent name")
    identity = daemon_identity(config)
    load_strategies()  # vote, weighted, debate, quorum: registered by the daemon, not by imports
    async with (
        open_bus(config.nats_url, name=config.name, **config.auth.options()) as bus,
        _open_membership(membership, bus, config.team) as view,
        open_runtime(
            bus,
            config.team,
            membership=view,
            identities=lambda _: identity,
            worker_services=worker_services,
        ) as runtime,
    ):
        stop = anyio.Event()

        async def on_control(inc: Incoming[Stop | Cancel]) -> None:
            # The worker handles Cancel on the same subject; the daemon only needs Stop.
            if isinstance(inc.body, Stop):
                log.info("agent.stop_requested", reason=inc.body.reason)
                stop.set()

        control: Codec[Stop | Cancel] = Codec(Stop, Cancel)
        await bus.subscribe(
            runtime.subjects.control(config.name),
            on_control,
            codec=control,
            # the worker listens here too; one dead letter per refused control message
            on_decode_error=lambda msg, err: dead_letter(
                bus, runtime.subjects, msg, "decode", str(err)
            ),
        )
        await runtime.spawn(
            lambda: WorkerAgent(config.worker),
            actor_id=config.name,
            roles=config.roles,
            drain_timeout=config.drain_timeout_s,
        )
        failed = False
        async with anyio.create_task_group() as tg:

            async def on_signals() -> None:
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for signum in signals:
                        log.info("agent.signal", signal=signal.Signals(signum).name)
                        stop.set()
                        return

            tg.start_soon(on_signals)
            for service in services:
                tg.start_soon(service, bus, config.name)
            while not stop.is_set():
                with anyio.move_on_after(0.5):
                    await stop.wait()
                if runtime.state(config.name) is ActorState.FAILED:
                    failed = True
                    break
            tg.cancel_scope.cancel()
        await runtime.stop(config.name)
    return 1 if failed else 0


def _open_membership(
    factory: MembershipFactory | None, bus: Bus, team: str
) -> contextlib.AbstractAsyncContextManager[Membership]:
    if factory is None:
        return contextlib.nullcontext(LocalMembership())
    return factory(bus, team)
