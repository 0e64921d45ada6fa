"""A real 3-node cluster: the bus keeps working when a node dies; leaf nodes reach the hub."""

from __future__ import annotations

import socket

import anyio
import msgspec

from lmteams.bus import (
    Codec,
    EmbeddedServer,
    Incoming,
    LocalCluster,
    ServerConfig,
    StreamSettings,
    Subjects,
    ensure_team_streams,
    leaf_node_config,
    open_bus,
    publish_durable,
    run_server,
)
from lmteams.testing import wait_until


class Note(msgspec.Struct, frozen=True, kw_only=True, tag="note"):
    n: int


async def test_publishing_continues_through_a_killed_node(cluster3: LocalCluster) -> None:
    s = Subjects("chaos")
    victim = cluster3.servers[0]
    async with open_bus(cluster3.url, name="writer") as bus:
        await ensure_team_streams(bus, s, StreamSettings(replicas=3))
        acked: list[int] = []
        for i in range(20):
            ack = await publish_durable(bus, s.tasks, Note(n=i), msg_id=f"n-{i}")
            acked.append(ack.seq)
        await victim.kill()
        for i in range(20, 60):
            ack = await publish_durable(bus, s.tasks, Note(n=i), msg_id=f"n-{i}", timeout=10)
            acked.append(ack.seq)
        assert acked == list(range(1, 61))  # nothing lost, nothing duplicated
        info = await bus.js.stream_info(s.tasks_stream)
        assert info.state.messages == 60
        assert bus.statistics().server != victim.url or bus.statistics().reconnects >= 1

        # the node comes back and catches up: R3 again
        await victim.start()
        await wait_until(lambda: victim.running)
        async with open_bus(victim.url, name="late") as late:

            async def caught_up() -> bool:
                info = await late.js.stream_info(s.tasks_stream)
                return info.state.messages == 60

            for _ in range(100):
                if await caught_up():
                    break
                await anyio.sleep(0.1)
            assert await caught_up()


async def test_core_requests_route_across_nodes(cluster3: LocalCluster) -> None:
    a, b = cluster3.servers[0], cluster3.servers[2]
    async with open_bus(a.url, name="responder") as resp, open_bus(b.url, name="asker") as ask:

        async def echo(inc: Incoming[Note]) -> None:
            await inc.respond(Note(n=inc.body.n * 2))

        await resp.subscribe("x.echo", echo, codec=Codec(Note))
        # interest propagates over routes asynchronously
        for _ in range(50):
            try:
                assert (await ask.request("x.echo", Note(n=21), expect=Note, timeout=0.5)).n == 42
                break
            except Exception:  # retried until routes carry the interest
                await anyio.sleep(0.1)
        else:
            raise AssertionError("request never crossed the cluster")


async def test_leaf_node_reaches_hub_services_and_jetstream() -> None:
    async with run_server(ServerConfig(leaf_port=0, js_domain="hub")) as hub:
        assert hub.leaf_url is not None
        leaf = EmbeddedServer(leaf_node_config(hub.leaf_url))
        try:
            await leaf.start()
            async with (
                open_bus(hub.url, name="hub-side") as hub_bus,
                open_bus(leaf.url, name="edge-side", js_domain="hub") as edge_bus,
            ):

                async def echo(inc: Incoming[Note]) -> None:
                    await inc.respond(Note(n=inc.body.n + 1))

                await hub_bus.subscribe("x.echo", echo, codec=Codec(Note))
                reply = None
                for _ in range(50):
                    try:
                        reply = await edge_bus.request(
                            "x.echo", Note(n=1), expect=Note, timeout=0.5
                        )
                        break
                    except Exception:  # leaf interest propagates asynchronously
                        await anyio.sleep(0.1)
                assert reply == Note(n=2)
                # JetStream at the edge is the hub's: one team, one set of streams
                team = Subjects("edge")
                await ensure_team_streams(edge_bus, team)
                ack = await publish_durable(edge_bus, team.tasks, Note(n=7), msg_id="edge-1")
                info = await hub_bus.js.stream_info(team.tasks_stream)
                assert (ack.seq, info.state.messages) == (1, 1)
        finally:
            await leaf.stop()
            leaf.cleanup()


async def test_a_route_port_taken_before_the_start_rebuilds_the_cluster_on_fresh_ports(
    log_events: list[dict[str, object]],
) -> None:
    """Every node's route list names every other node's route port, so when another process
    takes one between the pick and the start, no node can move alone: the cluster is built
    again on fresh ports, forms, and replicates."""
    cluster = LocalCluster(3, name="squat")
    victim = cluster.servers[1].config.cluster
    assert victim is not None
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", victim.port))
        squatter.listen()
        try:
            await cluster.start()
            routes = [s.config.cluster.port for s in cluster.servers if s.config.cluster]
            assert victim.port not in routes and all(s.running for s in cluster.servers)
            assert [e for e in log_events if e["event"] == "nats.cluster_port_taken"]
            async with open_bus(cluster.url, name="probe") as bus:
                s = Subjects("squat")
                await ensure_team_streams(bus, s, StreamSettings(replicas=3))  # needs all 3
                ack = await publish_durable(bus, s.tasks, Note(n=1), msg_id="n-1", timeout=10)
                assert ack.seq == 1
        finally:
            await cluster.stop()
            cluster.cleanup()
