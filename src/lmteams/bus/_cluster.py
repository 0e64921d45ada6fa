"""Several nats-servers on loopback: an N-node cluster with replicated JetStream, and leaf nodes.

Fault tests need a cluster whose nodes can be killed and brought back; edge devices need a
leaf node that forwards to a hub. Both are plain nats-server configurations, nothing more.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import msgspec
import structlog

from lmteams.bus._server import (
    PORT_ATTEMPTS,
    ClusterConfig,
    EmbeddedServer,
    ServerConfig,
    free_port,
)
from lmteams.errors import ConfigError, PortInUseError

__all__ = ("LocalCluster", "run_cluster", "leaf_node_config")

log = structlog.get_logger(__name__)


class LocalCluster:
    """N routed nats-servers with JetStream; ``urls`` lists every node for client failover."""

    def __init__(
        self,
        size: int = 3,
        *,
        name: str = "lmteams",
        base_dir: str | Path | None = None,
        sync_interval: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        """``port`` is node 0's client port and node i listens on ``port + i`` (0: free ports),
        so a cluster's URLs can be known before it starts."""
        if size < 1:
            raise ConfigError(f"a cluster needs at least 1 node, got {size}")
        if port and not 0 < port <= 65535 - (size - 1):
            raise ConfigError(
                f"client ports {port}..{port + size - 1} of a {size}-node cluster "
                "are not all between 1 and 65535"
            )
        self._size, self._name, self._host, self._port = size, name, host, port
        self._sync_interval = sync_interval
        self._owns_base = base_dir is None  # a caller's stores are kept, whatever happens
        self._base = Path(base_dir or tempfile.mkdtemp(prefix="lmteams-cluster-"))
        self.servers = self._nodes()

    def _nodes(self) -> list[EmbeddedServer]:
        """Nodes on fresh route ports, each routed to all the others."""
        host, port, name = self._host, self._port, self._name
        route_ports = [free_port(host) for _ in range(self._size)]
        routes = tuple(f"nats-route://{host}:{p}" for p in route_ports)
        return [
            EmbeddedServer(
                ServerConfig(
                    host=host,
                    port=port + i if port else 0,
                    name=f"{name}-n{i}",
                    store_dir=str(self._base / f"n{i}"),
                    sync_interval=self._sync_interval,
                    cluster=ClusterConfig(
                        name=name,
                        port=route_ports[i],
                        routes=tuple(r for j, r in enumerate(routes) if j != i),
                    )
                    if self._size > 1
                    else None,
                )
            )
            for i in range(self._size)
        ]

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    @property
    def url(self) -> str:
        """All node URLs joined by commas: the form ``open_bus`` and ``--nats`` accept."""
        return ",".join(self.urls)

    async def start(self) -> None:
        """Start every node at once: JetStream's meta group forms only when a quorum is up.

        A node's route port is in every other node's route list, so a node cannot pick a
        new one alone when another process took it first: the whole cluster is stopped and
        built again on fresh ports (client ports the caller gave are kept). A cluster that
        has served once keeps its ports, which its clients know.
        """
        for attempt in range(PORT_ATTEMPTS):
            try:
                await self._start_nodes()
            except* PortInUseError:
                served = any(server.has_run for server in self.servers)
                if attempt + 1 == PORT_ATTEMPTS or served:
                    raise
                log.warning("nats.cluster_port_taken", cluster=self._name, attempt=attempt + 1)
                await self.stop()
                if self._owns_base:  # a stale meta group slows the next forming by seconds
                    for server in self.servers:
                        shutil.rmtree(server.store_dir, ignore_errors=True)
                self.servers = self._nodes()
            else:
                return

    async def _start_nodes(self) -> None:
        async with anyio.create_task_group() as tg:
            for server in self.servers:
                tg.start_soon(server.start)

    async def stop(self) -> None:
        async with anyio.create_task_group() as tg:
            for server in self.servers:
                tg.start_soon(server.stop)

    def cleanup(self) -> None:
        for server in self.servers:
            server.cleanup()
        shutil.rmtree(self._base, ignore_errors=True)


@contextlib.asynccontextmanager
async def run_cluster(
    size: int = 3,
    *,
    name: str = "lmteams",
    base_dir: str | Path | None = None,
    sync_interval: str | None = None,
) -> AsyncIterator[LocalCluster]:
    """Run an N-node loopback cluster for the duration of the block."""
    cluster = LocalCluster(size, name=name, base_dir=base_dir, sync_interval=sync_interval)
    try:
        await cluster.start()
        yield cluster
    finally:
        await cluster.stop()
        cluster.cleanup()


def leaf_node_config(hub_leaf_url: str, **overrides: object) -> ServerConfig:
    """A leaf node that forwards to a hub's leaf port.

    JetStream stays off on the leaf by default: clients at the edge use the hub's streams and
    KV by naming the hub's JetStream domain (``open_bus(..., js_domain=HUB_DOMAIN)``), so a
    team has one set of streams wherever its agents sit.
    """
    base = ServerConfig(jetstream=False, leaf_remotes=(hub_leaf_url,))
    return msgspec.structs.replace(base, **overrides)
