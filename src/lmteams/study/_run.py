"""One team run: the graph submitted as a job to the study team, measured from its result.

This is the seam between the sweep (many runs) and the job engine (how one run is
coordinated): a study run is a job like any user's, on the production path, with a fresh id,
so the claims, reports and prompts of different runs never mix even when the same agents
serve a whole sweep. The study's architecture names map onto the engine's:
``centralized-greedy`` is a centralized job (the coordinator places ready subtasks by
expected finish), ``centralized-preassigned`` a centralized job with the paper's
pre-assignment (``placement = "preassigned"``: lists dealt before the run, each agent working
its own), ``decentralized`` a decentralized one (agents claim by compare-and-set).
"""

from __future__ import annotations

from typing import Final, Literal, get_args

import anyio
import structlog

from lmteams.errors import ConfigError, TaskFailedError
from lmteams.jobs import Architecture as JobArchitecture
from lmteams.jobs import Choice, JobClient, JobStatus, JobView, Placement
from lmteams.jobs._graph import TaskGraph
from lmteams.study._metrics import RunMetrics, bus_traffic, job_metrics
from lmteams.study._team import StudyTeam

__all__ = (
    "ARCHITECTURES",
    "CHOICES",
    "SCHEDULINGS",
    "Architecture",
    "Scheduling",
    "run_team",
)

log = structlog.get_logger(__name__)

Architecture = Literal["centralized-greedy", "centralized-preassigned", "decentralized"]
"""Who decides which agent does what: a coordinator (by expected finish, or the paper's
pre-assignment), or the agents themselves by claiming."""

Scheduling = Literal["async", "rounds"]
"""``async``: an agent takes its next subtask as soon as it is free; ``rounds``: the paper's
synchronous rounds, with a barrier after each."""

ARCHITECTURES: Final = get_args(Architecture)
"""What a team runs, as jobs, and the planner's simulator models."""
SCHEDULINGS: Final = get_args(Scheduling)
CHOICES: Final = get_args(Choice)
"""How decentralized agents pick what to claim (``JobOptions.choose``)."""

_VIEW_TRIES: Final = 5
_JOB_OPTIONS: Final[dict[str, tuple[JobArchitecture, Placement]]] = {
    "centralized-greedy": ("centralized", "greedy"),
    "centralized-preassigned": ("centralized", "preassigned"),
    "decentralized": ("decentralized", "greedy"),
}
"""Each study architecture as the engine's ``JobOptions.architecture`` and ``placement``."""


async def _final_view(client: JobClient, job_id: str) -> JobView | None:
    """The ended job as the board holds it (its tallies), or None if no read assembles one:
    a view is read entry by entry and may come back incomplete, so it is tried a few times."""
    for _ in range(_VIEW_TRIES):
        with anyio.fail_after(30):
            view = await client.job(job_id)
        if view is not None:
            return view
        await anyio.sleep(0.2)
    log.warning("study.run.no_view", job_id=job_id)
    return None


async def run_team(
    team: StudyTeam,
    graph: TaskGraph,
    n_agents: int,
    *,
    architecture: str = "centralized-greedy",
    scheduling: str = "async",
    monitor_url: str | None = None,
    task_timeout_s: float = 120.0,
    seed: int = 0,
    backups: bool = False,
    lease_s: float = 3.0,
    choose: str = "first",
) -> RunMetrics:
    """Run ``graph`` as a job on the first ``n_agents`` agents of ``team`` and measure it.

    ``monitor_url`` (``http://host:monitor_port`` of the nats-server) adds the messages and
    bytes the run put on the bus; without it they read 0. ``backups`` lets idle agents run
    copies of stragglers (off by default: the paper's architectures had none).
    ``task_timeout_s`` bounds one subtask; the job as a whole gets that per subtask.
    ``lease_s`` (wall seconds) is short so that a claim whose agent declined it (it was busy)
    comes back soon; its holder renews it every third of it while it works.
    ``choose`` (decentralized only): ``first`` claims the ready subtask with the longest
    remaining chain, ``model`` asks each agent's model over the board (coordination tokens
    and calls, counted apart from the work's; a weak chooser loses claims).
    """
    if architecture not in ARCHITECTURES:
        raise ConfigError(
            f"architecture must be one of {', '.join(ARCHITECTURES)}, got {architecture!r}"
        )
    if scheduling not in SCHEDULINGS:
        raise ConfigError(f"scheduling must be one of {', '.join(SCHEDULINGS)}, got {scheduling!r}")
    if choose not in CHOICES:
        raise ConfigError(f"choose must be one of {', '.join(CHOICES)}, got {choose!r}")
    if choose != "first" and architecture != "decentralized":
        raise ConfigError(
            f"choose={choose!r} is how decentralized agents claim; {architecture} places "
            "subtasks by a coordinator"
        )
    if not 1 <= n_agents <= len(team.members):
        raise ConfigError(f"n_agents must be in 1..{len(team.members)} (the team's size)")
    job_architecture, placement = _JOB_OPTIONS[architecture]
    if team.draws is not None:  # this run's common draws: the same for every option at `seed`
        team.draws.begin(seed)
    job_timeout = task_timeout_s * max(1, len(graph.subtasks))
    client = JobClient(team.bus, team.team)
    first_call = len(team.calls)
    before = await bus_traffic(monitor_url)
    result = await client.run_job(
        graph,
        timeout=job_timeout + 30.0,
        architecture=job_architecture,
        placement=placement,
        scheduling=scheduling,  # type: ignore[arg-type]
        agents=n_agents,
        backups=backups,
        lease_s=lease_s,
        choose=choose,  # type: ignore[arg-type]
        timeout_s=job_timeout,
    )
    traffic = (await bus_traffic(monitor_url)) - before
    if result.status is not JobStatus.DONE:
        raise TaskFailedError(f"job on {graph.name} ended {result.status}: {result.error}")
    view = await _final_view(client, result.job_id)
    metrics = job_metrics(
        team,
        graph,
        n_agents,
        result=result,
        view=view,
        calls=team.calls[first_call:],
        architecture=architecture,
        scheduling=scheduling,
        traffic=traffic,
        seed=seed,
        choose=choose,
    )
    log.info(
        "study.run.done",
        graph=graph.name,
        n=n_agents,
        architecture=architecture,
        scheduling=scheduling,
        job_id=result.job_id,
        makespan_s=round(metrics.makespan_s, 3),
        conflicts=metrics.conflicts,
    )
    return metrics
