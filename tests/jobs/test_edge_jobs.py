"""An agent behind a leaf node takes a centralized job's subtasks: assignments reach its job
inbox through the leaf, and its renewals and durable reports come back the same way."""

from __future__ import annotations

import anyio

from lmteams.agents import WorkerAgent, open_runtime
from lmteams.bus import (
    EmbeddedServer,
    ServerConfig,
    Subjects,
    ensure_team_streams,
    leaf_node_config,
    open_bus,
    run_server,
)
from lmteams.gossip import open_membership
from lmteams.jobs import JobClient, JobServiceConfig, JobStatus, job_service
from lmteams.jobs._graph import Subtask, TaskGraph

from .conftest import SIM

TEAM = "edgejobs"
GRAPH = TaskGraph(
    name="at-the-edge",
    subtasks=(
        Subtask(id="e1", title="sense", work_tokens=10, roles=("edge",)),
        Subtask(id="e2", title="sense again", work_tokens=10, roles=("edge",)),
        Subtask(id="sum", title="summarize", deps=("e1", "e2"), work_tokens=10, roles=("edge",)),
    ),
)


async def test_an_edge_agent_behind_a_leaf_node_works_a_centralized_job() -> None:
    async with run_server(ServerConfig(leaf_port=0, js_domain="hub")) as hub:
        assert hub.leaf_url is not None
        leaf = EmbeddedServer(leaf_node_config(hub.leaf_url))
        await leaf.start()
        try:
            async with (
                open_bus(hub.url, name="hub-side") as hub_bus,
                open_bus(leaf.url, name="edge-side", js_domain="hub") as edge_bus,
            ):
                await ensure_team_streams(hub_bus, Subjects(TEAM))
                async with (
                    open_membership(hub_bus, TEAM) as hub_view,
                    open_membership(edge_bus, TEAM) as edge_view,
                    # the hub agent coordinates (it holds the lease); only the edge one may work
                    open_runtime(
                        hub_bus, TEAM, membership=hub_view, worker_services=[job_service()]
                    ) as hub_runtime,
                    open_runtime(
                        edge_bus,
                        TEAM,
                        membership=edge_view,
                        worker_services=[job_service(JobServiceConfig(kv=False))],
                    ) as edge_runtime,
                ):
                    await hub_runtime.spawn(
                        lambda: WorkerAgent(SIM), actor_id="hub-1", roles=("worker",)
                    )
                    await edge_runtime.spawn(
                        lambda: WorkerAgent(SIM), actor_id="edge-1", roles=("worker", "edge")
                    )
                    with anyio.fail_after(30):
                        while not (m := hub_view.member("edge-1")) or not m.available:
                            await hub_view.wait_changed()
                    result = await JobClient(hub_bus, TEAM).run_job(GRAPH, timeout=60)
        finally:
            await leaf.stop()
            leaf.cleanup()
    assert result.status is JobStatus.DONE, result.error
    assert {r.agent for r in result.subtasks} == {"edge-1"}
    assert all(r.attempts == 1 and r.releases == 0 for r in result.subtasks)
