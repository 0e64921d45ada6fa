"""``lmteams bus up``: run the embedded nats-server (or a local cluster) in the foreground."""

from __future__ import annotations

import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import anyio
import msgspec
import typer

from lmteams.bus import (
    ENV_NKEY_SEED,
    SECURITY_FILE,
    Backoff,
    EmbeddedServer,
    LocalCluster,
    ServerConfig,
    StreamSettings,
    TeamSecurity,
    load_security,
    provision_team_at,
    team_security,
    write_credentials,
)
from lmteams.cli._common import err, out, run_async, setup_logs, team_subjects
from lmteams.errors import LmteamsError, ServerStartError

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


async def _provision(url: str, team: str, creds: Path | None, replicas: int) -> None:
    """The team's streams, consumer and KV buckets, made as the operator before any agent
    starts: a plain `nats pub` of a task is kept, and a secured bus needs an admin for it."""
    seed = str(creds / "admin.nk") if creds is not None else None
    await provision_team_at(url, team, streams=StreamSettings(replicas=replicas), nkey_seed=seed)
    out.print(f"team {team!r}: streams ready (tasks published now are kept)")


_POLL_S = 0.5  # how often node processes are checked
_MAX_RESTARTS = 5  # a node that dies this often is broken, not unlucky
_RESTART_BACKOFF = Backoff(initial_s=_POLL_S, max_s=10.0)


async def _serve(servers: Sequence[EmbeddedServer]) -> None:
    """Until Ctrl-C or SIGTERM, keep every node running: a node whose process dies is named on
    stderr and restarted on its own ports and store (as `lmteams up` restarts agents); one that
    will not come back ends the command with its error (exit 1)."""
    stopping = anyio.Event()
    failed: list[LmteamsError] = []

    async def keep_alive() -> None:
        try:
            await _keep_alive(servers, stopping)
        except LmteamsError as exc:
            failed.append(exc)
        tg.cancel_scope.cancel()

    async with anyio.create_task_group() as tg:
        tg.start_soon(keep_alive)
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                break
        stopping.set()
        tg.cancel_scope.cancel()
    if failed:
        raise failed[0]


async def _keep_alive(servers: Sequence[EmbeddedServer], stopping: anyio.Event) -> None:
    """Restart nodes that die, each after the shared jittered backoff, up to a limit."""
    restarts = [_RESTART_BACKOFF.counter() for _ in servers]
    while True:
        await anyio.sleep(_POLL_S)
        for server, counter in zip(servers, restarts, strict=True):
            if server.running:
                continue
            # at least one poll: a Ctrl-C reaches the nodes too, and must not be fought
            with anyio.move_on_after(max(_POLL_S, counter.next_delay())):
                await stopping.wait()
            if stopping.is_set():
                return
            where = f"node {server.config.name} ({server.url})"
            if counter.attempt > _MAX_RESTARTS:
                raise ServerStartError(
                    f"{where} died {counter.attempt} times, giving up; last log lines:\n"
                    f"{server.log_tail(5)}"
                )
            err.print(f"{where} died: restarting it (log: {server.log_path})", highlight=False)
            await server.start()
            err.print(f"{where} is back", highlight=False)


@bus_app.command("up")
def up(
    *,
    port: Annotated[
        int,
        typer.Option(
            min=0,
            max=65535,
            help="Client port (0 = any free port); with --cluster N, nodes listen on "
            "PORT, PORT+1, ... PORT+N-1.",
        ),
    ] = 4222,
    store: Annotated[
        str | None, typer.Option(help="JetStream store directory (default: a temporary one).")
    ] = None,
    cluster: Annotated[
        int,
        typer.Option(
            min=1, max=16, help="Run an N-node loopback cluster with replicated JetStream."
        ),
    ] = 1,
    leaf_port: Annotated[
        int | None,
        typer.Option(
            min=0, max=65535, help="Accept leaf-node connections (edge devices) on this port."
        ),
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
    team: Annotated[
        str,
        typer.Option(
            help="The team whose streams are created at once (with --secure: whose users are made)."
        ),
    ] = "default",
    agents: Annotated[
        int, typer.Option(min=1, help="With --secure: agent credentials to make.")
    ] = 3,
) -> None:
    """Start nats-server with JetStream and keep it running until Ctrl-C.

    A node (or the single server) whose process dies is restarted on its own ports and store,
    and stderr says so; one that dies more than 5 times, or cannot start again, stops the
    command with exit code 1.
    """
    setup_logs(default_level="info")
    team_subjects(team)
    security: TeamSecurity | None = None
    directory = Path()
    extra: dict[str, Any] = {}
    if secure:
        security, directory = _secure(team, agents, creds_dir)
        extra = security.server_config()
    creds = directory if security is not None else None

    async def main() -> None:
        if cluster > 1:
            local = LocalCluster(cluster, base_dir=store, port=port)
            for server in local.servers:  # every node checks the same users
                server.config = msgspec.structs.replace(server.config, extra=extra)
            await local.start()
            try:
                await _provision(local.url, team, creds, min(cluster, 3))
                out.print(f"[green]cluster of {cluster} up[/green]: --nats {local.url}")
                if security is not None:
                    _print_usage(security, directory, local.url)
                err.print("Ctrl-C stops it.")
                await _serve(local.servers)
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
            await _provision(server.url, team, creds, 1)
            out.print(f"[green]bus up[/green]: --nats {server.url}  (log: {server.log_path})")
            if security is not None:
                _print_usage(security, directory, server.url)
            if server.leaf_url:
                out.print(f"edge devices connect their leaf node to {server.leaf_url}")
            err.print("Ctrl-C stops it.")
            await _serve([server])
        finally:
            await server.stop()
            server.cleanup()

    run_async(main)
