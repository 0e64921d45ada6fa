"""The operator's half of a team's JetStream state: streams, the shared consumer, KV buckets.

On a secured bus agents and clients may only read the info of what they use (see
``TeamSecurity``), so whoever starts the bus for a team (``lmteams bus up --team``,
``lmteams up``) makes it first, with an identity allowed to. It also means a plain
``nats pub`` of a task is stored before the first agent has started.
"""

from __future__ import annotations

from typing import Any

import structlog

from lmteams.bus._connection import Bus, open_bus
from lmteams.bus._jetstream import StreamSettings, ensure_team_streams, open_kv
from lmteams.bus._subjects import (
    JOB_REPORTS_CONSUMER,
    JOB_REQUESTS_CONSUMER,
    KEYS_BUCKET,
    TEAM_BUCKETS,
    Subjects,
)
from lmteams.bus._workqueue import WorkQueueSettings, open_consumer, open_work_queue

__all__ = ("provision_team", "provision_team_at")

log = structlog.get_logger(__name__)


async def provision_team(
    bus: Bus,
    subjects: Subjects,
    *,
    streams: StreamSettings | None = None,
    queue: WorkQueueSettings | None = None,
) -> None:
    """Create (or bring to this configuration) everything a team keeps in JetStream.

    Idempotent; ``bus`` must be allowed to create streams and consumers (an admin).
    """
    settings = streams or StreamSettings()
    await ensure_team_streams(bus, subjects, settings, update=True)
    await (await open_work_queue(bus, subjects, queue)).close()
    for durable, subject in (
        (JOB_REQUESTS_CONSUMER, subjects.job_requests),
        (JOB_REPORTS_CONSUMER, subjects.job_reports),
    ):
        await (await open_consumer(bus, subjects.jobs_stream, subject, durable=durable)).close()
    for name in TEAM_BUCKETS:
        # a key binding is written once: the server refuses any later write to a bound name
        once = name == KEYS_BUCKET
        await open_kv(bus, subjects.kv_bucket(name), replicas=settings.replicas, write_once=once)
    log.info("bus.team_provisioned", team=subjects.team, buckets=len(TEAM_BUCKETS))


async def provision_team_at(
    url: str,
    team: str,
    *,
    streams: StreamSettings | None = None,
    queue: WorkQueueSettings | None = None,
    **auth: Any,
) -> None:
    """``provision_team`` over a connection of its own; ``auth`` as ``open_bus`` takes it."""
    async with open_bus(url, name="operator", **auth) as bus:
        await provision_team(bus, Subjects(team), streams=streams, queue=queue)
