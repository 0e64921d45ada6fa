"""One team run on the bus: pick the architecture, time it, read the bus counters.

This is the seam between the sweep (many runs) and the architectures (how one run is
coordinated): it gives each run a fresh id, so claims, notes and prompts of different runs
never mix even when the same agents serve a whole sweep.
"""

from __future__ import annotations

import uuid
from typing import Final, Literal, get_args

import structlog

from lmteams.errors import ConfigError
from lmteams.study._central import run_centralized
from lmteams.study._decentral import run_decentralized
from lmteams.study._graph import TaskGraph
from lmteams.study._metrics import Recorder, RunMetrics, bus_traffic
from lmteams.study._team import StudyTeam

__all__ = ("ARCHITECTURES", "SCHEDULINGS", "Architecture", "Scheduling", "run_team")

log = structlog.get_logger(__name__)

Architecture = Literal["centralized-greedy", "centralized-preassigned", "decentralized"]
"""Who decides which agent does what: a coordinator (by expected finish, or the paper's
pre-assignment), or the agents themselves by claiming."""

Scheduling = Literal["async", "rounds"]
"""``async``: an agent takes its next subtask as soon as it is free; ``rounds``: the paper's
synchronous rounds, with a barrier after each."""

ARCHITECTURES: Final = get_args(Architecture)
SCHEDULINGS: Final = get_args(Scheduling)


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
) -> RunMetrics:
    """Run ``graph`` on the first ``n_agents`` agents of ``team`` and measure it.

    ``monitor_url`` (``http://host:monitor_port`` of the nats-server) adds the messages and
    bytes the run put on the bus; without it they read 0.
    """
    if architecture not in ARCHITECTURES:
        raise ConfigError(
            f"architecture must be one of {', '.join(ARCHITECTURES)}, got {architecture!r}"
        )
    if scheduling not in SCHEDULINGS:
        raise ConfigError(f"scheduling must be one of {', '.join(SCHEDULINGS)}, got {scheduling!r}")
    if not 1 <= n_agents <= len(team.members):
        raise ConfigError(f"n_agents must be in 1..{len(team.members)} (the team's size)")
    run_id = uuid.uuid4().hex[:10]
    rec = Recorder(team, graph, n_agents, run_id, task_timeout_s)
    barrier = scheduling == "rounds"
    before = await bus_traffic(monitor_url)
    if architecture == "decentralized":
        await run_decentralized(rec, barrier=barrier)
    else:
        preassigned = architecture == "centralized-preassigned"
        await run_centralized(rec, "preassigned" if preassigned else "greedy", barrier=barrier)
    traffic = (await bus_traffic(monitor_url)) - before
    metrics = rec.metrics(
        architecture=architecture, scheduling=scheduling, traffic=traffic, seed=seed
    )
    log.info(
        "study.run.done",
        graph=graph.name,
        n=n_agents,
        architecture=architecture,
        scheduling=scheduling,
        makespan_s=round(metrics.makespan_s, 3),
        conflicts=metrics.conflicts,
    )
    return metrics
