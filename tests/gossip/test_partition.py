"""A gossip partition and its heal: two halves of a team on two servers whose route is cut.

Two nats-servers form a cluster whose only route runs through a TCP proxy this test holds;
both advertise the proxy as their route address, so no route bypasses it. Cutting the proxy
splits the cluster in two live halves (no server stops, no client disconnects): each half must
declare the other dead. Restoring it must bring every view back to one: all members alive.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio
import anyio.abc

from lmteams.agents import MemberFacts
from lmteams.bus import EmbeddedServer, ServerConfig, free_port, open_bus
from lmteams.gossip import GossipMembership, SwimConfig, open_membership
from lmteams.testing import wait_until

TEAM = "part"
FAST = SwimConfig(period_s=0.1, suspicion_mult=4.0)
HOST = "127.0.0.1"


class RouteProxy:
    """Forwards TCP to ``target`` until cut: then drops every connection and refuses new ones."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = free_port(HOST)
        self.open = True
        self._live: set[anyio.abc.SocketStream] = set()

    async def serve(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        listener = await anyio.create_tcp_listener(local_host=HOST, local_port=self.port)
        async with listener:
            task_status.started()
            await listener.serve(self._forward)

    async def _forward(self, client: anyio.abc.SocketStream) -> None:
        async with client:
            if not self.open:
                return
            try:
                upstream = await anyio.connect_tcp(HOST, self.target)
            except OSError:  # the server is not up (yet): the route retries
                return
            async with upstream, anyio.create_task_group() as tg:
                self._live |= {client, upstream}
                tg.start_soon(self._pipe, client, upstream, tg.cancel_scope)
                tg.start_soon(self._pipe, upstream, client, tg.cancel_scope)
            self._live -= {client, upstream}

    async def _pipe(
        self, src: anyio.abc.SocketStream, dst: anyio.abc.SocketStream, scope: anyio.CancelScope
    ) -> None:
        with contextlib.suppress(
            anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError, OSError
        ):
            async for chunk in src:
                await dst.send(chunk)
        scope.cancel()

    async def cut(self) -> None:
        self.open = False
        for stream in list(self._live):
            with contextlib.suppress(Exception):
                await stream.aclose()

    def restore(self) -> None:
        self.open = True


def node(name: str, cluster_port: int, advertise: int, routes: list[str]) -> ServerConfig:
    cluster = {
        "name": "part",
        "listen": f"{HOST}:{cluster_port}",
        "advertise": f"{HOST}:{advertise}",
        "routes": routes,
    }
    return ServerConfig(name=name, jetstream=False, extra={"cluster": cluster})


@contextlib.asynccontextmanager
async def two_halves() -> AsyncIterator[tuple[EmbeddedServer, EmbeddedServer, list[RouteProxy]]]:
    """Servers a and b; every route between them passes one of the two proxies."""
    port_a, port_b = free_port(HOST), free_port(HOST)
    to_a, to_b = RouteProxy(port_a), RouteProxy(port_b)
    a = EmbeddedServer(node("a", port_a, to_a.port, []))
    b = EmbeddedServer(node("b", port_b, to_b.port, [f"nats-route://{HOST}:{to_a.port}"]))
    async with anyio.create_task_group() as tg:
        await tg.start(to_a.serve)
        await tg.start(to_b.serve)
        try:
            await a.start()
            await b.start()
            yield a, b, [to_a, to_b]
        finally:
            with anyio.CancelScope(shield=True):
                await b.stop()
                await a.stop()
                a.cleanup()
                b.cleanup()
            tg.cancel_scope.cancel()


def states(view: GossipMembership) -> dict[str, str]:
    return {m.name: m.state for m in view.members()}


async def test_a_cut_route_splits_the_view_and_its_repair_heals_it() -> None:
    names = {"a": ["a0", "a1"], "b": ["b0", "b1"]}
    everyone = {n: "alive" for half in names.values() for n in half}
    async with (
        two_halves() as (server_a, server_b, proxies),
        open_bus(server_a.url, name="side-a") as bus_a,
        open_bus(server_b.url, name="side-b") as bus_b,
        contextlib.AsyncExitStack() as stack,
    ):
        views: dict[str, GossipMembership] = {}
        for side, bus in (("a", bus_a), ("b", bus_b)):
            for name in names[side]:  # one view per member, as one agent process each
                view = await stack.enter_async_context(open_membership(bus, TEAM, config=FAST))
                await view.join(name, MemberFacts(device=f"sim:{side}"))
                views[name] = view
        await wait_until(lambda: all(states(v) == everyone for v in views.values()), timeout=30)

        for proxy in proxies:
            await proxy.cut()

        def split() -> bool:
            for name, view in views.items():
                mine = names[name[0]]
                expect = {n: "alive" if n in mine else "dead" for n in everyone}
                if states(view) != expect:
                    return False
            return True

        await wait_until(split, timeout=60)

        for proxy in proxies:
            proxy.restore()
        await wait_until(lambda: all(states(v) == everyone for v in views.values()), timeout=90)
        # one view again: every view holds the same beliefs, incarnations included
        await wait_until(
            lambda: len({str(sorted(b.items())) for b in _beliefs(views).values()}) == 1,
            timeout=30,
        )


def _beliefs(views: dict[str, GossipMembership]) -> dict[str, dict[str, tuple[str, int]]]:
    return {
        name: {m.name: (m.state, m.incarnation) for m in view.members()}
        for name, view in views.items()
    }
