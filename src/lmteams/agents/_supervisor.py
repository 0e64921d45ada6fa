"""``lmteams up``: the embedded bus plus N agent processes, restarted one-for-one on crashes.

The supervisor owns processes, not agents: each agent is an ``lmteams agent start`` child
with its own event loop and model, so a segfault in llama.cpp takes down one agent, which
is restarted with exponential backoff while the rest of the team keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import msgspec
import structlog
from anyio.abc import TaskGroup

from lmteams._process import spawn, terminate
from lmteams.agents._state import UpState, clear_state, state_dir, write_state
from lmteams.bus import (
    Backoff,
    BusAuth,
    EmbeddedServer,
    ServerConfig,
    StreamSettings,
    WorkQueueSettings,
    load_security,
    provision_team_at,
    validate_token,
)
from lmteams.errors import ConfigError

__all__ = ("SupervisorConfig", "AgentProcessInfo", "Supervisor", "open_supervisor")

log = structlog.get_logger(__name__)


class SupervisorConfig(msgspec.Struct, frozen=True, kw_only=True):
    team: str = "default"
    agents: int = 3
    model: str = "smollm2-135m"
    backend: str = "auto"
    sim_device: str = "cpu-x86"
    threads: int | None = None  # per agent; default: the cores shared out among agents
    max_tokens_cap: int | None = None
    port: int = 0
    nats_url: str | None = None
    store_dir: str | None = None
    ack_wait_s: float = 30.0
    drain_timeout_s: float = 30.0
    restart_backoff_s: float = 1.0
    restart_backoff_max_s: float = 30.0
    stable_after_s: float = 60.0  # a child that ran this long resets its backoff
    replicas: int = 1  # JetStream replicas of the team's streams (3 on a 3-node cluster)
    creds_dir: str | None = None  # from `lmteams bus up --secure`: agent-N.nk per agent
    tls_ca: str | None = None  # CA bundle of a TLS bus
    shared_model: bool = False  # one process hosts every agent on one shared, batched model
    metrics_port: int = 0  # agent process i (0-based) serves Prometheus metrics on port + i
    metrics_host: str = "127.0.0.1"


class AgentProcessInfo(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    pid: int | None
    restarts: int
    running: bool
    log_path: str


class _Child:
    def __init__(self, name: str, log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None
        self.restarts = 0


class Supervisor:
    """Runs the bus and the agent processes of one team. Create with ``open_supervisor``."""

    def __init__(self, config: SupervisorConfig, url: str, tg: TaskGroup) -> None:
        self.config = config
        self.url = url
        self._tg = tg
        self._stopping = False
        self.log_dir = state_dir() / config.team
        self._children: dict[str, _Child] = {}

    def agent_names(self) -> list[str]:
        return [f"agent-{i + 1}" for i in range(self.config.agents)]

    def threads_per_agent(self) -> int:
        """Threads of each model: the cores shared out among the agents, or all of them for
        the one shared model, which decodes every agent's sequence in one batch."""
        if self.config.threads:
            return self.config.threads
        if self._one_process:
            return os.cpu_count() or 1
        return max(1, (os.cpu_count() or 1) // max(1, self.config.agents))

    @property
    def _one_process(self) -> bool:
        return self.config.shared_model and self.config.agents > 1

    def _process_names(self) -> list[str]:
        """One process per agent; with a shared model one, ``agent``, hosting agent-1..N."""
        return ["agent"] if self._one_process else self.agent_names()

    def argv(self, name: str, model: str) -> list[str]:
        c = self.config
        shared = ["--agents", str(c.agents), "--shared-model"] if self._one_process else []
        return [
            sys.executable, "-m", "lmteams", "agent", "start",
            "--team", c.team, "--name", name, "--nats", self.url,
            "--model", model, "--backend", c.backend, "--sim-device", c.sim_device,
            "--threads", str(self.threads_per_agent()),
            "--ack-wait", str(c.ack_wait_s), "--drain-timeout", str(c.drain_timeout_s),
            "--replicas", str(c.replicas), "--json-logs",
            *shared, *self.auth_argv(name), *self.metrics_argv(name),
        ]  # fmt: skip

    def metrics_port(self, name: str) -> int:
        """The port agent process ``name`` serves its metrics on (0: none)."""
        port = self.config.metrics_port
        return port + self._process_names().index(name) if port else 0

    def metrics_argv(self, name: str) -> list[str]:
        port = self.metrics_port(name)
        if not port:
            return []
        return ["--metrics-port", str(port), "--metrics-host", self.config.metrics_host]

    def auth_argv(self, name: str) -> list[str]:
        """Paths to the agent's own credentials, never a secret on the command line."""
        c = self.config
        argv: list[str] = []
        if c.creds_dir:
            argv += ["--nkey-seed", str(Path(c.creds_dir) / f"{name}.nk")]
        if c.tls_ca:
            argv += ["--tls-ca", c.tls_ca]
        return argv

    async def start_agents(self, model: str) -> None:
        """Start every agent process; ``model`` is a resolved path or catalogue name."""
        if self.config.creds_dir and self.config.shared_model:
            raise ConfigError(
                "a shared model puts every agent in one process on one bus credential, which "
                "the secured bus's per-agent permissions cannot tell apart: drop --shared-model"
            )
        if self.config.creds_dir:
            missing = [
                n
                for n in self.agent_names()
                if not (Path(self.config.creds_dir) / f"{n}.nk").is_file()
            ]
            if missing:
                raise ConfigError(
                    f"no credentials for {', '.join(missing)} in {self.config.creds_dir}: "
                    f"generate them with `lmteams bus up --secure --agents {self.config.agents}`"
                )
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for name in self._process_names():
            child = _Child(name, self.log_dir / f"{name}.log")
            self._children[name] = child
            self._tg.start_soon(self._keep_alive, child, model)

    async def _keep_alive(self, child: _Child, model: str) -> None:
        c = self.config
        # jittered: agents that crash together (one bad model file) do not restart together
        backoff = Backoff(initial_s=c.restart_backoff_s, max_s=c.restart_backoff_max_s).counter()
        while not self._stopping:
            with child.log_path.open("ab") as out:
                child.proc = await spawn(self.argv(child.name, model), stdout=out, stderr=out)
            if self._stopping:  # stop() came while it started, and saw the one before it
                with anyio.CancelScope(shield=True):
                    await terminate(child.proc, timeout=self.config.drain_timeout_s + 5)
                return
            started = time.monotonic()
            log.info("supervisor.agent_started", agent=child.name, pid=child.proc.pid)
            code = await child.proc.wait()
            if self._stopping:
                return
            if code == 0:
                log.info("supervisor.agent_left", agent=child.name)
                return
            if time.monotonic() - started > c.stable_after_s:
                backoff.reset()
            child.restarts += 1
            delay = backoff.next_delay()
            log.warning(
                "supervisor.agent_crashed", agent=child.name, code=code, restart_in=round(delay, 3)
            )
            await anyio.sleep(delay)

    def processes(self) -> list[AgentProcessInfo]:
        return [
            AgentProcessInfo(
                name=child.name,
                pid=child.proc.pid if child.proc else None,
                restarts=child.restarts,
                running=child.proc is not None and child.proc.returncode is None,
                log_path=str(child.log_path),
            )
            for child in self._children.values()
        ]

    async def stop(self) -> None:
        """SIGTERM every agent (they drain), SIGKILL stragglers after the drain timeout."""
        self._stopping = True
        async with anyio.create_task_group() as tg:
            for child in self._children.values():
                if child.proc is not None:
                    tg.start_soon(self._stop_child, child)

    async def _stop_child(self, child: _Child) -> None:
        assert child.proc is not None
        code = await terminate(child.proc, timeout=self.config.drain_timeout_s + 5)
        log.info("supervisor.agent_stopped", agent=child.name, code=code)


@contextlib.asynccontextmanager
async def open_supervisor(config: SupervisorConfig) -> AsyncIterator[Supervisor]:
    """Start the bus (unless ``nats_url`` points elsewhere); stop agents, then bus, on exit."""
    validate_token(config.team, "team name")
    async with contextlib.AsyncExitStack() as stack:
        server: EmbeddedServer | None = None
        url = config.nats_url
        if url is None:
            extra = load_security(config.creds_dir).server_config() if config.creds_dir else {}
            server = EmbeddedServer(
                ServerConfig(port=config.port, store_dir=config.store_dir, extra=extra)
            )
            await server.start()
            stack.push_async_callback(_stop_server, server)
            url = server.url
        await _provision(config, url)
        tg = await stack.enter_async_context(anyio.create_task_group())
        supervisor = Supervisor(config, url, tg)
        write_state(
            UpState(
                team=config.team, url=url, pid=os.getpid(), agents=config.agents,
                started_at=time.time(),
            )
        )  # fmt: skip
        try:
            yield supervisor
        finally:
            with anyio.CancelScope(shield=True):
                await supervisor.stop()
                clear_state(config.team)
            tg.cancel_scope.cancel()


async def _provision(config: SupervisorConfig, url: str) -> None:
    """Make the team's streams, consumer and buckets as the operator, before any agent
    (on a secured bus agents may not; and tasks published meanwhile are kept)."""
    admin = Path(config.creds_dir) / "admin.nk" if config.creds_dir else None
    if admin is not None and not admin.is_file():
        log.warning("up.no_admin_credential", expected=str(admin))
        return  # the agents find what an operator made, or report that nothing is there
    auth = BusAuth(nkey_seed=str(admin) if admin else None, tls_ca=config.tls_ca)
    await provision_team_at(
        url,
        config.team,
        streams=StreamSettings(replicas=config.replicas),
        queue=WorkQueueSettings(ack_wait_s=config.ack_wait_s),
        **auth.options(),
    )


async def _stop_server(server: EmbeddedServer) -> None:
    await server.stop()
    server.cleanup()
