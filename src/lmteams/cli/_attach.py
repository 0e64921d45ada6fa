"""``lmteams agent attach``: a protocol agent on the bus joins a team as a member."""

from __future__ import annotations

import signal
from typing import Annotated

import anyio
import typer

from lmteams.agents import (
    DaemonConfig,
    WorkerConfig,
    daemon_identity,
    load_strategies,
    open_runtime,
    resolve_url,
)
from lmteams.bus import StreamSettings, WorkQueueSettings, open_bus
from lmteams.cli._agents import (
    CredsOption,
    NkeySeedOption,
    ReplicasOption,
    TlsCaOption,
    UserOption,
    _auth,
)
from lmteams.cli._common import (
    NatsOption,
    TeamOption,
    fail,
    out,
    positive,
    run_async,
    setup_logs,
    team_subjects,
)
from lmteams.cli._common import token as check_token
from lmteams.errors import LmteamsError
from lmteams.gossip import open_membership
from lmteams.jobs import JobServiceConfig, job_service

__all__ = ("attach_cmd",)


def attach_cmd(
    *,
    agent: Annotated[
        str,
        typer.Option(
            help="The protocol agent's kind, the 3rd token of agents.prompt.<agent>.<owner>."
            "<session> (claude-code, openclaw, ...; `nats micro info agents` lists them)."
        ),
    ],
    name: Annotated[str, typer.Option(help="Its member name in the team.")],
    owner: Annotated[
        str | None, typer.Option(help="The agent's owner token (needed if several match).")
    ] = None,
    session: Annotated[
        str | None, typer.Option(help="The agent's session token (needed if several match).")
    ] = None,
    team: TeamOption = "default",
    nats: NatsOption = None,
    stall: Annotated[
        float,
        typer.Option(
            callback=positive,
            help="Seconds of silence within one answer before its task is handed back.",
        ),
    ] = 60.0,
    ack_wait: Annotated[
        float,
        typer.Option(callback=positive, help="Seconds without news before a task is redelivered."),
    ] = 30.0,
    replicas: ReplicasOption = 1,
    json_logs: Annotated[bool, typer.Option("--json-logs", help="JSON log lines.")] = False,
    nkey_seed: NkeySeedOption = None,
    user: UserOption = None,
    creds: CredsOption = None,
    tls_ca: TlsCaOption = None,
) -> None:
    """Take a Synadia Agent Protocol agent into the team until SIGTERM.

    It then answers tasks, votes, debates and job subtasks like any member; its answers'
    timings are measured as a device's are.
    """
    setup_logs(json=json_logs, default_level="info")
    team_subjects(team)
    check_token(name, "agent name", "--name")
    auth = _auth(nkey_seed, user, creds, tls_ca)
    # imported here: the protocol SDKs (and pydantic) cost every other verb 0.2 s to load
    from lmteams.interop import ProtocolBackendConfig, ProtocolTarget, attach  # noqa: PLC0415

    target = ProtocolTarget(agent=agent, owner=owner, session=session)
    identity = daemon_identity(DaemonConfig(team=team, name=name, auth=auth), name)
    worker = WorkerConfig(
        queue=WorkQueueSettings(ack_wait_s=ack_wait), streams=StreamSettings(replicas=replicas)
    )

    async def main() -> None:
        load_strategies()  # it coordinates the multi-agent tasks it pulls, as any member does
        url = resolve_url(nats, team)
        async with (
            open_bus(url, name=name, **auth.options()) as bus,
            open_membership(bus, team) as view,
            open_runtime(
                bus,
                team,
                membership=view,
                identities=lambda _name: identity,
                worker_services=[job_service(JobServiceConfig(replicas=replicas))],
            ) as runtime,
        ):
            try:
                await attach(
                    runtime,
                    target,
                    actor_id=name,
                    protocol=ProtocolBackendConfig(stall_s=stall),
                    config=worker,
                )
            except LmteamsError as exc:
                raise fail(exc, code=2) from None
            out.print(
                f"[green]{name!r} joined team {team!r}[/green] answering with protocol agent "
                f"{agent!r}   stop: Ctrl-C or SIGTERM",
                highlight=False,
            )
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    out.print(f"{name!r} leaves team {team!r}")
                    break

    run_async(main)
