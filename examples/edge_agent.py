"""An lmteams agent inside your own asyncio program, on an edge device.

The device runs a local NATS leaf node that connects out to the team's hub: local traffic
stays local, team subjects cross the uplink, and the hub's JetStream (named by its domain)
holds the team's queue. The agent also takes subtasks of the team's centralized jobs (the
coordinator's assignments cross the leaf like any team subject). Your program keeps doing
its own work on the same event loop while the agent serves the team; Ctrl-C drains the
agent and leaves.

On the hub:    lmteams bus up --leaf-port 7422 --js-domain hub
On the device: python examples/edge_agent.py --hub nats-leaf://HUB:7422 --name edge-1
Anywhere:      lmteams task publish "hello from the hub" --nats nats://HUB:4222 --wait
"""

from __future__ import annotations

import argparse
import contextlib
import signal

import anyio

from lmteams.agents import WorkerAgent, WorkerConfig, open_runtime
from lmteams.bus import EmbeddedServer, leaf_node_config, open_bus
from lmteams.gossip import open_membership
from lmteams.hardware import BackendConfig
from lmteams.jobs import JobServiceConfig, job_service
from lmteams.logging import configure


async def my_own_work() -> None:
    """Stands for whatever the device really does (sensors, UI, ...) on the same loop."""
    await anyio.sleep_forever()


async def main(args: argparse.Namespace) -> None:
    configure(json=args.json_logs)
    leaf = EmbeddedServer(leaf_node_config(args.hub))
    await leaf.start()
    try:
        async with (
            open_bus(leaf.url, name=args.name, js_domain=args.hub_domain) as bus,
            # a SWIM member of the team, so the hub's coordinator can place job subtasks here
            open_membership(bus, args.team) as view,
            # centralized job subtasks only: a leaf connection reaches no KV bucket
            open_runtime(
                bus,
                args.team,
                membership=view,
                worker_services=[job_service(JobServiceConfig(kv=False))],
            ) as runtime,
        ):
            backend = BackendConfig(kind=args.backend, model=args.model, n_threads=args.threads)
            await runtime.spawn(
                lambda: WorkerAgent(WorkerConfig(backend=backend)),
                actor_id=args.name,
                roles=("worker",),
            )
            print(f"edge agent {args.name} serving team {args.team} via {args.hub}", flush=True)
            async with anyio.create_task_group() as tg:
                tg.start_soon(my_own_work)
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for _ in signals:
                        break
                tg.cancel_scope.cancel()
    finally:
        with contextlib.suppress(Exception):
            await leaf.stop()
        leaf.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hub", required=True, help="the hub's leaf URL, nats-leaf://host:port")
    parser.add_argument("--hub-domain", default="hub", help="the hub's JetStream domain")
    parser.add_argument("--team", default="default")
    parser.add_argument("--name", default="edge-1")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--backend", default="auto", help="auto|cpu|cuda|metal|vulkan|sim")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json-logs", action="store_true")
    anyio.run(main, parser.parse_args())
