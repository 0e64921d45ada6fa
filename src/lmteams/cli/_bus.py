"""``lmteams bus up``: run the embedded nats-server (or a local cluster) in the foreground."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated, Any

import anyio
import msgspec
import typer

from lmteams.bus import (
    ENV_NKEY_SEED,
    SECURITY_FILE,
    EmbeddedServer,
    LocalCluster,
    ServerConfig,
    TeamSecurity,
    load_security,
    team_security,
    write_credentials,
)
from lmteams.cli._common import err, out, run_async, setup_logs

__all__ = ("bus_app",)

bus_app = typer.Typer(name="bus", help="Run the NATS bus that teams talk over.")


def _secure(team: str, agents: int, creds_dir: str | None) -> tuple[TeamSecurity, Path]:
    """Credentials for the team: reuse a directory that has them, else generate (0600/0700)."""
    directory = Path(creds_dir or Path.cwd() / f"lmteams-creds-{team}").expanduser()
    if (directory / SECURITY_FILE).is_file():
        security = load_security(directory)
    else:
        names = [f"agent-{i + 1}" for i in range(agents)]
        security = team_security(team, names)
        write_credentials(security, directory)
    return security, directory


def _print_usage(security: TeamSecurity, directory: Path, url: str) -> None:
    """How to connect: paths and flags only, never a secret on the terminal."""
    t = security.team

    def say(text: str) -> None:
        out.print(text, soft_wrap=True, highlight=False)  # commands stay copy-pasteable

    say(f"[green]secured[/green]: credentials in {directory} (files 0600, directory 0700)")
    say(f"  agents ({', '.join(security.agents)}) and the rest of the team:")
    say(f"    lmteams up --nats {url} --team {t} --creds-dir {directory}")
    say(
        f"    lmteams agent start --nats {url} --team {t} --name agent-1 "
        f"--nkey-seed {directory / 'agent-1.nk'}"
    )
    say("  clients (submit tasks, read results):")
    say(
        f"    lmteams task publish 'Hi' --wait --nats {url} --team {t} "
        f"--nkey-seed {directory / 'client.nk'}"
    )
    say(f"    or export {ENV_NKEY_SEED}={directory / 'client.nk'}")
    say(f"  operator (everything): --nkey-seed {directory / 'admin.nk'}")
    say(f"  Python: lmteams.connect('{url}', team='{t}', nkey_seed='{directory / 'client.nk'}')")


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
    secure: Annotated[
        bool,
        typer.Option(
            "--secure",
            help="Require nkey authentication, with per-role permissions for one team.",
        ),
    ] = False,
    creds_dir: Annotated[
        str | None,
        typer.Option(
            help="With --secure: where credentials are written (reused if present; "
            "default ./lmteams-creds-<team>)."
        ),
    ] = None,
    team: Annotated[str, typer.Option(help="With --secure: the team the users belong to.")] = (
        "default"
    ),
    agents: Annotated[int, typer.Option(help="With --secure: agent credentials to make.")] = 3,
) -> None:
    """Start nats-server with JetStream and keep it running until Ctrl-C."""
    setup_logs(default_level="info")
    security: TeamSecurity | None = None
    directory = Path()
    extra: dict[str, Any] = {}
    if secure:
        security, directory = _secure(team, agents, creds_dir)
        extra = security.server_config()

    async def main() -> None:
        if cluster > 1:
            local = LocalCluster(cluster, base_dir=store)
            for server in local.servers:  # every node checks the same users
                server.config = msgspec.structs.replace(server.config, extra=extra)
            await local.start()
            try:
                out.print(f"[green]cluster of {cluster} up[/green]: --nats {local.url}")
                if security is not None:
                    _print_usage(security, directory, local.url)
                err.print("Ctrl-C stops it.")
                await _until_signal()
            finally:
                await local.stop()
                local.cleanup()
            return
        config = ServerConfig(
            port=port, store_dir=store, leaf_port=leaf_port, js_domain=js_domain, extra=extra
        )
        server = EmbeddedServer(config)
        await server.start()
        try:
            out.print(f"[green]bus up[/green]: --nats {server.url}  (log: {server.log_path})")
            if security is not None:
                _print_usage(security, directory, server.url)
            if server.leaf_url:
                out.print(f"edge devices connect their leaf node to {server.leaf_url}")
            err.print("Ctrl-C stops it.")
            await _until_signal()
        finally:
            await server.stop()
            server.cleanup()

    run_async(main)
