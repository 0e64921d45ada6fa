"""What a worker agent runs to take part in team jobs (handed to it by the daemon).

``agents`` never imports ``jobs``: the daemon (``lmteams agent start``), a study team or a
user's runtime passes ``job_service()`` as a worker service, and each worker then admits
job requests, works its share of jobs, and stands for the team's coordinator lease (the
leader election on JetStream KV, whose holder runs the centralized jobs).
"""

from __future__ import annotations

import anyio
import msgspec

from lmteams.agents import WorkerAgent, WorkerService
from lmteams.consensus import LeaderElection
from lmteams.jobs._admit import admit_requests
from lmteams.jobs._board import open_board
from lmteams.jobs._central import Coordinator
from lmteams.jobs._participant import Participant
from lmteams.jobs._watch import keep_running

__all__ = ("COORDINATOR_ROLE", "JobServiceConfig", "job_service")

COORDINATOR_ROLE = "coordinator"


class JobServiceConfig(msgspec.Struct, frozen=True, kw_only=True):
    coordinator: bool = True
    """Stand for the coordinator lease (a team needs at least one candidate for centralized
    jobs; an edge agent behind a leaf node cannot hold it: the lease lives in KV)."""
    lease_ttl_s: float = 5.0
    """The coordinator lease: a dead coordinator is replaced within about this long."""
    replicas: int = 1
    """Replicas of the jobs bucket when this agent is the one that makes it (R3 on a cluster)."""
    kv: bool = True
    """Whether the agent reaches the jobs KV bucket. False behind a leaf node (which reaches
    no bucket): the agent then only works centralized assignments, which need none."""


def job_service(config: JobServiceConfig | None = None) -> WorkerService:
    """The worker service that makes an agent a member of its team's jobs."""
    settings = config or JobServiceConfig()

    async def serve(agent: WorkerAgent) -> None:
        ctx = agent.context
        if not settings.kv:
            await Participant(agent, None).run()
            return
        board = await open_board(ctx.bus, ctx.team, replicas=settings.replicas)
        async with anyio.create_task_group() as tg:
            tg.start_soon(keep_running, "job admission", lambda: admit_requests(agent, board))
            tg.start_soon(Participant(agent, board).run)
            if settings.coordinator:
                lease = _Lease()
                election = LeaderElection(
                    ctx.bus,
                    ctx.team,
                    candidate=ctx.actor_id,
                    role=COORDINATOR_ROLE,
                    ttl_s=settings.lease_ttl_s,
                    on_change=lambda _leadership: lease.changed(),
                )
                await tg.start(election.run)
                tg.start_soon(lease.coordinate, election, Coordinator(agent, board))

    return serve


class _Lease:
    """Runs the coordinator for exactly as long as this agent holds the lease."""

    def __init__(self) -> None:
        self._event = anyio.Event()

    def changed(self) -> None:
        self._event.set()
        self._event = anyio.Event()

    async def _until_changed(self, timeout: float) -> None:
        with anyio.move_on_after(timeout):  # also re-checked now and then
            await self._event.wait()

    async def coordinate(self, election: LeaderElection, coordinator: Coordinator) -> None:
        while True:
            if not election.is_leader:
                await self._until_changed(1.0)
                continue
            async with anyio.create_task_group() as tg:

                async def step_down_when_lost() -> None:
                    while election.is_leader:
                        await self._until_changed(1.0)
                    tg.cancel_scope.cancel()

                tg.start_soon(step_down_when_lost)
                await coordinator.run()
                tg.cancel_scope.cancel()
