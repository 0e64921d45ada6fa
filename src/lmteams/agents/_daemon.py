"""One agent per OS process: ``lmteams agent start``.

SIGTERM (or a ``Stop`` on the agent's control subject) drains: the agent stops pulling,
finishes or hands back the task in hand, announces that it leaves, and the process exits 0.
A worker that keeps crashing exits 1 so that the process supervisor can decide.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import anyio
import msgspec
import structlog

from lmteams.agents._messages import Cancel, Stop
from lmteams.agents._runtime import ActorState, dead_letter, open_runtime
from lmteams.agents._strategy import load_strategies
from lmteams.agents._worker import WorkerAgent, WorkerConfig
from lmteams.bus import Bus, BusAuth, Codec, Incoming, open_bus, validate_token

__all__ = ("DaemonConfig", "Service", "run_daemon")

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


async def run_daemon(config: DaemonConfig, *, services: Sequence[Service] = ()) -> int:
    """Serve until told to stop; return the process exit code."""
    validate_token(config.team, "team name")
    validate_token(config.name, "agent name")
    load_strategies()  # vote, weighted, debate, quorum: registered by the daemon, not by imports
    async with (
        open_bus(config.nats_url, name=config.name, **config.auth.options()) as bus,
        open_runtime(bus, config.team) as runtime,
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
