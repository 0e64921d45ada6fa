"""``lmteams agent start``, ``up``, ``down`` and ``task publish``: thin verbs over agents."""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Annotated, Any

import anyio
import msgspec
import typer

from lmteams.agents import (
    NORMALIZERS,
    STRATEGIES,
    DaemonConfig,
    Result,
    Service,
    Supervisor,
    SupervisorConfig,
    Task,
    TeamClient,
    WorkerConfig,
    new_task,
    open_supervisor,
    pid_alive,
    read_state,
    resolve_url,
    run_daemon,
)
from lmteams.bus import (
    ENV_NKEY_SEED,
    ENV_PASSWORD,
    ENV_USER,
    Bus,
    BusAuth,
    StreamSettings,
    WorkQueueSettings,
    ensure_team_streams,
    open_bus,
)
from lmteams.cli._common import (
    BaseUrlOption,
    NatsOption,
    TeamOption,
    check_backend,
    err,
    fail,
    loads_model_file,
    out,
    positive,
    run_async,
    runs_on,
    setup_logs,
    team_subjects,
    token,
)
from lmteams.consensus import LeaderElection
from lmteams.errors import ConfigError, LmteamsError
from lmteams.gossip import open_membership
from lmteams.hardware import BACKEND_KINDS, BackendConfig, ModelFile, resolve_model
from lmteams.jobs import COORDINATOR_ROLE, JobServiceConfig, job_service

__all__ = ("agent_app", "up", "down", "task_app")

agent_app = typer.Typer(name="agent", help="Run one agent daemon.")
task_app = typer.Typer(name="task", help="Submit tasks to a team.")

ModelOption = Annotated[
    str,
    typer.Option(help="Catalogue name (see `lmteams model list`) or a path to a .gguf file."),
]
BackendOption = Annotated[
    str, typer.Option(help=f"Where the model runs: {'|'.join(BACKEND_KINDS)}.")
]
SimDeviceOption = Annotated[
    str, typer.Option(help="Device class for --backend sim (see `lmteams hardware`).")
]
ReplicasOption = Annotated[
    int,
    typer.Option(
        min=1, max=5, help="JetStream replicas of the team's streams (3 on a 3-node cluster)."
    ),
]
ThreadsOption = Annotated[int | None, typer.Option(min=1, help="CPU threads for llama.cpp.")]
SharedModelOption = Annotated[
    bool,
    typer.Option(
        "--shared-model",
        help="The agents of this process share one loaded model, decoded in one batch "
        "(one copy of the weights instead of one per agent).",
    ),
]
NkeySeedOption = Annotated[
    str | None,
    typer.Option(
        "--nkey-seed",
        envvar=ENV_NKEY_SEED,
        help="Seed file of this user's nkey (from `lmteams bus up --secure`).",
    ),
]
UserOption = Annotated[
    str | None,
    typer.Option(
        "--user", envvar=ENV_USER, help=f"User name; the password comes from ${ENV_PASSWORD}."
    ),
]
CredsOption = Annotated[
    str | None, typer.Option("--creds", help="A NATS .creds file (JWT operator mode).")
]
TlsCaOption = Annotated[
    str | None, typer.Option("--tls-ca", help="CA bundle that signed the bus's TLS certificate.")
]


def _metrics_port(help: str) -> Any:
    return typer.Option("--metrics-port", min=0, max=65535, help=help)


MetricsHostOption = Annotated[
    str,
    typer.Option(
        "--metrics-host", help="Address the metrics server binds (0.0.0.0: every interface)."
    ),
]


def _auth(
    nkey_seed: str | None, user: str | None, creds: str | None, tls_ca: str | None
) -> BusAuth:
    """Credentials by path or environment; a password is read from $LMTEAMS_NATS_PASSWORD only,
    so it never shows in ``ps`` or shell history."""
    return BusAuth.from_env(nkey_seed=nkey_seed, user=user, creds=creds, tls_ca=tls_ca)


@agent_app.command("start")
def agent_start(
    *,
    name: Annotated[str, typer.Option(help="This agent's id in the team.")],
    team: TeamOption = "default",
    model: ModelOption = "smollm2-135m",
    backend: BackendOption = "auto",
    sim_device: SimDeviceOption = "cpu-x86",
    base_url: BaseUrlOption = None,
    threads: ThreadsOption = None,
    agents: Annotated[
        int,
        typer.Option(
            min=1,
            help="Agents this process hosts (NAME-1 .. NAME-K when more than one), each with "
            "its own key and place in the team.",
        ),
    ] = 1,
    shared_model: SharedModelOption = False,
    nats: NatsOption = None,
    metrics_port: Annotated[
        int, _metrics_port("Serve Prometheus metrics on http://HOST:PORT/metrics (0: none).")
    ] = 0,
    metrics_host: MetricsHostOption = "127.0.0.1",
    ack_wait: Annotated[
        float,
        typer.Option(callback=positive, help="Seconds without news before a task is redelivered."),
    ] = 30.0,
    drain_timeout: Annotated[
        float, typer.Option(min=0, help="On SIGTERM, seconds to finish the task in hand.")
    ] = 60.0,
    json_logs: Annotated[bool, typer.Option("--json-logs", help="JSON log lines.")] = False,
    elect: Annotated[
        list[str] | None,
        typer.Option(help="Stand for this role's leader election (repeatable), e.g. coordinator."),
    ] = None,
    lease_ttl: Annotated[
        float, typer.Option(callback=positive, help="Leader lease TTL, seconds.")
    ] = 5.0,
    replicas: ReplicasOption = 1,
    nkey_seed: NkeySeedOption = None,
    user: UserOption = None,
    creds: CredsOption = None,
    tls_ca: TlsCaOption = None,
) -> None:
    """Join a team and serve its tasks until SIGTERM (which drains)."""
    setup_logs(json=json_logs, default_level="info")
    team_subjects(team)
    token(name, "agent name", "--name")
    for role in elect or ():
        token(role, "role", "--elect")
    check_backend(backend, sim_device, base_url)
    if loads_model_file(backend):
        try:
            model = str(resolve_model(model).path)  # fail fast, before joining the team
        except LmteamsError as exc:
            raise fail(exc, code=2) from None
    config = DaemonConfig(
        team=team,
        name=name,
        nats_url=nats,
        drain_timeout_s=drain_timeout,
        worker=WorkerConfig(
            backend=BackendConfig(
                kind=backend,
                model=model,
                n_threads=threads,
                sim_device=sim_device,
                base_url=base_url,
                share=shared_model,
                share_slots=max(agents, BackendConfig().share_slots),
            ),
            queue=WorkQueueSettings(ack_wait_s=ack_wait),
            streams=StreamSettings(replicas=replicas),
        ),
        auth=_auth(nkey_seed, user, creds, tls_ca),
        agents=agents,
        metrics_port=metrics_port,
        metrics_host=metrics_host,
    )
    # the job service stands for the coordinator lease itself (its holder runs the jobs)
    services = [_standing_for(team, r, lease_ttl) for r in elect or () if r != COORDINATOR_ROLE]
    jobs = job_service(JobServiceConfig(lease_ttl_s=lease_ttl, replicas=replicas))
    # imported here: the protocol SDKs (and pydantic) cost every other verb 0.2 s to load
    from lmteams.interop import protocol_service  # noqa: PLC0415

    code = run_async(
        lambda: run_daemon(
            config,
            services=services,
            # ...and a Synadia Agent Protocol agent: any protocol caller discovers and prompts it
            worker_services=[jobs, protocol_service()],
            # the agent is a SWIM member of the team; its facts are its gossiped map
            membership=open_membership,
        )
    )
    raise typer.Exit(code=code)


def _standing_for(team: str, role: str, ttl: float) -> Service:
    """A daemon service: this agent stands in ``role``'s election for as long as it runs."""

    async def stand(bus: Bus, name: str) -> None:
        await LeaderElection(bus, team, candidate=name, role=role, ttl_s=ttl).run()

    return stand


def up(
    *,
    agents: Annotated[int, typer.Option(min=1, help="How many agent processes.")] = 3,
    team: TeamOption = "default",
    model: ModelOption = "smollm2-135m",
    backend: BackendOption = "auto",
    sim_device: SimDeviceOption = "cpu-x86",
    threads: Annotated[
        int | None, typer.Option(min=1, help="Threads per agent (default: cores / agents).")
    ] = None,
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="Port of the embedded bus (0 = any free).")
    ] = 4222,
    nats: Annotated[
        str | None, typer.Option("--nats", help="Use this NATS instead of the embedded bus.")
    ] = None,
    ack_wait: Annotated[
        float, typer.Option(callback=positive, help="Redelivery timeout, seconds.")
    ] = 30.0,
    replicas: ReplicasOption = 1,
    creds_dir: Annotated[
        str | None,
        typer.Option(
            help="Credentials from `lmteams bus up --secure`: each agent uses its own seed; "
            "the embedded bus (without --nats) requires them."
        ),
    ] = None,
    tls_ca: TlsCaOption = None,
    shared_model: Annotated[
        bool,
        typer.Option(
            "--shared-model",
            help="One process hosts every agent on one shared model, decoded in one batch "
            "per token step, with all the threads (not with --creds-dir).",
        ),
    ] = False,
    metrics_port: Annotated[
        int, _metrics_port("Agent process i (from 0) serves Prometheus metrics on PORT+i.")
    ] = 0,
    metrics_host: MetricsHostOption = "127.0.0.1",
) -> None:
    """Start the embedded bus and N agents; restart crashed agents; Ctrl-C stops all."""
    setup_logs(default_level="info")
    team_subjects(team)
    check_backend(backend, sim_device)
    config = SupervisorConfig(
        team=team,
        agents=agents,
        model=model,
        backend=backend,
        sim_device=sim_device,
        threads=threads,
        port=port,
        nats_url=nats,
        ack_wait_s=ack_wait,
        replicas=replicas,
        creds_dir=creds_dir,
        tls_ca=tls_ca,
        shared_model=shared_model,
        metrics_port=metrics_port,
        metrics_host=metrics_host,
    )
    if metrics_port and metrics_port + agents - 1 > 65535:
        raise typer.BadParameter(
            f"agents use ports {metrics_port}..{metrics_port + agents - 1}, past 65535",
            param_hint="'--metrics-port'",
        )

    async def main() -> None:
        resolved = model if backend == "sim" else str(_pull(model).path)
        async with open_supervisor(config) as supervisor:
            await supervisor.start_agents(resolved)
            out.print(
                f"[green]team {team!r} up[/green]: {agents} agents on "
                f"{runs_on(backend, model, sim_device)} "
                f"({_threads_line(supervisor, shared_model and agents > 1)}), "
                f"bus {supervisor.url}",
                highlight=False,
            )
            out.print(f"agent logs: {supervisor.log_dir}   stop: Ctrl-C or `lmteams down`")
            for process in supervisor.processes() if metrics_port else ():
                url = f"http://{metrics_host}:{supervisor.metrics_port(process.name)}/metrics"
                out.print(f"metrics of {process.name}: {url}", highlight=False)
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    out.print("stopping: agents drain, then the bus stops")
                    break

    run_async(main)


def _threads_line(supervisor: Supervisor, shared: bool) -> str:
    threads = supervisor.threads_per_agent()
    return f"one shared model, {threads} threads" if shared else f"{threads} threads each"


def _pull(model: str) -> ModelFile:
    return resolve_model(model, progress=lambda msg: err.print(msg, highlight=False))


def down(
    *,
    team: TeamOption = "default",
    timeout: Annotated[
        float, typer.Option(callback=positive, help="Seconds to wait for a clean stop.")
    ] = 60.0,
) -> None:
    """Stop a running `lmteams up` for the team (agents drain first)."""
    team_subjects(team)
    state = read_state(team)
    if state is None:
        err.print(f"[red]error:[/red] no `lmteams up` is running for team {team!r}")
        raise typer.Exit(code=1)
    os.kill(state.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # `up` removes its state file last, once agents and bus are down
        if read_state(team) is None or not pid_alive(state.pid):
            out.print(f"team {team!r} stopped")
            return
        time.sleep(0.2)
    err.print(f"team {team!r} (pid {state.pid}) did not stop within {timeout:g}s")
    raise typer.Exit(code=1)


async def _print_stream(
    client: TeamClient, task: Task, timeout: float, *, json_out: bool
) -> Result:
    """Print a streamed task's chunks as they come (text, or a JSON line each); its result."""
    async with client.run_streamed(task, timeout=timeout) as answer:
        async for chunk in answer:
            line = msgspec.json.encode(chunk).decode() + "\n" if json_out else chunk.text
            sys.stdout.write(line)
            sys.stdout.flush()
    if not json_out:
        sys.stdout.write("\n")
    assert answer.result is not None  # the iterator ends only with the result
    return answer.result


@task_app.command("publish")
def task_publish(
    prompt: Annotated[str, typer.Argument(help="The question or instruction.")],
    *,
    nats: NatsOption = None,
    team: TeamOption = "default",
    agents: Annotated[int, typer.Option(help="How many agents answer.")] = 1,
    strategy: Annotated[
        str, typer.Option(help=f"How answers are agreed: {'|'.join(STRATEGIES)}.")
    ] = "single",
    normalizer: Annotated[
        str, typer.Option(help=f"How votes are compared: {'|'.join(NORMALIZERS)}.")
    ] = "auto",
    rounds: Annotated[int, typer.Option(help="Most debate rounds.")] = 3,
    system: Annotated[str | None, typer.Option(help="System prompt.")] = None,
    max_tokens: Annotated[int, typer.Option(help="Most tokens to generate.")] = 128,
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 0.0,
    seed: Annotated[
        int | None, typer.Option(help="Sampling seed (default: the agent's own).")
    ] = None,
    task_id: Annotated[
        str | None, typer.Option("--id", help="Task id (default: a fresh one).")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the result.")] = False,
    stream: Annotated[
        bool,
        typer.Option(
            "--stream",
            help="Wait, printing the answer as it is generated (strategy single), then the "
            "result as --wait does. With --json: one JSON line per chunk "
            '({"type":"chunk","agent","delivery","seq","text","last"}), then the result\'s '
            '({"type":"result",...}).',
        ),
    ] = False,
    timeout: Annotated[
        float, typer.Option(callback=positive, help="Seconds to wait with --wait.")
    ] = 300.0,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    replicas: ReplicasOption = 1,
    nkey_seed: NkeySeedOption = None,
    user: UserOption = None,
    creds: CredsOption = None,
    tls_ca: TlsCaOption = None,
) -> None:
    """Publish a task to the team's queue; with --wait, print its result.

    The task is checked before anything connects: a bad option exits 2 naming the field.
    """
    setup_logs()
    subjects = team_subjects(team)
    try:
        task = new_task(
            prompt,
            task_id=task_id,
            system=system,
            max_tokens=max_tokens,
            temperature=temperature,
            seed=seed,
            agents=agents,
            strategy=strategy,
            normalizer=normalizer,
            rounds=rounds,
        )
    except ConfigError as exc:
        raise fail(exc, code=2) from None
    auth = _auth(nkey_seed, user, creds, tls_ca)

    async def main() -> None:
        url = resolve_url(nats, team)
        async with open_bus(url, name="client", **auth.options()) as bus:
            client = TeamClient(bus, team)
            # a client only finds the operator's streams (it may not create or change them)
            settings = StreamSettings(replicas=replicas)
            await ensure_team_streams(bus, subjects, settings, update=False)
            if stream:
                result = await _print_stream(client, task, timeout, json_out=json_out)
            elif not wait:
                await client.publish(task)
                typer.echo(
                    msgspec.json.encode({"task_id": task.id}).decode() if json_out else task.id
                )
                return
            else:
                result = await client.run(task, timeout=timeout)
        if json_out:
            typer.echo(msgspec.json.encode(result).decode())
        elif result.ok:
            if not stream:  # a streamed answer is on stdout already
                out.print(result.answer, highlight=False)
            err.print(
                f"[dim]{result.agent} on {result.device}: {result.tokens_out} tokens in "
                f"{result.total_s:.2f}s, {result.rounds} round(s)[/dim]"
            )
        else:
            err.print(f"[red]task failed ({result.error_kind}):[/red] {result.error}")
        if not result.ok:
            raise typer.Exit(code=1)

    run_async(main)
