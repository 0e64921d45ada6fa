"""``lmteams bus up``: run the embedded nats-server (or a local cluster) in the foreground."""

from __future__ import annotations

import signal
from typing import Annotated

import anyio
import typer

from lmteams.bus import EmbeddedServer, LocalCluster, ServerConfig
from lmteams.cli._common import err, out, run_async, setup_logs

__all__ = ("bus_app",)

bus_app = typer.Typer(name="bus", help="Run the NATS bus that teams talk over.")


async def _until_signal() -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            return


@bus_app.command("up")
def up(
    *,
    port: Annotated[int, typer.Option(help="Client port (0 = any free port).")] = 4222,
    store: Annotated[
        str | None, typer.Option(help="JetStream store directory (default: a temporary one).")
    ] = None,
    cluster: Annotated[
        int, typer.Option(help="Run an N-node loopback cluster with replicated JetStream.")
    ] = 1,
    leaf_port: Annotated[
        int | None,
        typer.Option(help="Accept leaf-node connections (edge devices) on this port."),
    ] = None,
    js_domain: Annotated[
        str | None,
        typer.Option(help="JetStream domain name, for clients behind leaf nodes (e.g. hub)."),
    ] = None,
) -> None:
    """Start nats-server with JetStream and keep it running until Ctrl-C."""
    setup_logs(default_level="info")

    async def main() -> None:
        if cluster > 1:
            local = LocalCluster(cluster, base_dir=store)
            await local.start()
            try:
                out.print(f"[green]cluster of {cluster} up[/green]: --nats {local.url}")
                err.print("Ctrl-C stops it.")
                await _until_signal()
            finally:
                await local.stop()
                local.cleanup()
            return
        config = ServerConfig(port=port, store_dir=store, leaf_port=leaf_port, js_domain=js_domain)
        server = EmbeddedServer(config)
        await server.start()
        try:
            out.print(f"[green]bus up[/green]: --nats {server.url}  (log: {server.log_path})")
            if server.leaf_url:
                out.print(f"edge devices connect their leaf node to {server.leaf_url}")
            err.print("Ctrl-C stops it.")
            await _until_signal()
        finally:
            await server.stop()
            server.cleanup()

    run_async(main)
