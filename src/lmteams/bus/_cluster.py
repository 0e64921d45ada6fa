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

from lmteams.bus._server import ClusterConfig, EmbeddedServer, ServerConfig, free_port
from lmteams.errors import ConfigError

__all__ = ("LocalCluster", "run_cluster", "leaf_node_config")


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
        self._base = Path(base_dir or tempfile.mkdtemp(prefix="lmteams-cluster-"))
        route_ports = [free_port(host) for _ in range(size)]
        routes = tuple(f"nats-route://{host}:{p}" for p in route_ports)
        self.servers = [
            EmbeddedServer(
                ServerConfig(
                    host=host,
                    port=port + i if port else 0,
                    name=f"{name}-n{i}",
                    store_dir=str(self._base / f"n{i}"),
                    sync_interval=sync_interval,
                    cluster=ClusterConfig(
                        name=name,
                        port=route_ports[i],
                        routes=tuple(r for j, r in enumerate(routes) if j != i),
                    )
                    if size > 1
                    else None,
                )
            )
            for i in range(size)
        ]

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    @property
    def url(self) -> str:
        """All node URLs joined by commas: the form ``open_bus`` and ``--nats`` accept."""
        return ",".join(self.urls)

    async def start(self) -> None:
        """Start every node at once: JetStream's meta group forms only when a quorum is up."""
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
