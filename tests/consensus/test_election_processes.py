"""Leader election between real agent processes: kill -9 the leader, the role moves on."""

from __future__ import annotations

import signal
import subprocess
import sys

import anyio

from lmteams.bus import EmbeddedServer, Subjects, open_bus, open_kv
from lmteams.testing import stop_processes

TEAM = "elect-proc"
TTL = 1.5


async def test_killing_the_leader_process_hands_the_role_over(nats_server: EmbeddedServer) -> None:
    def start(name: str) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "lmteams", "agent", "start", "--team", TEAM]
        argv += ["--name", name, "--backend", "sim", "--nats", nats_server.url]
        argv += ["--elect", "coordinator", "--lease-ttl", str(TTL)]
        return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    procs = {name: start(name) for name in ("a1", "a2", "a3")}
    try:
        async with open_bus(nats_server.url, name="observer") as bus:
            kv = await open_kv(bus, Subjects(TEAM).kv_bucket("leases"))

            async def holder() -> tuple[str, int]:
                entry = await kv.get("coordinator")
                return (entry.value.decode(), entry.revision) if entry else ("", 0)

            with anyio.fail_after(30):
                while not (await holder())[0]:
                    await anyio.sleep(0.1)
            leader, token = await holder()
            assert leader in procs
            procs[leader].send_signal(signal.SIGKILL)
            procs[leader].wait()
            with anyio.fail_after(60):  # a deadline against hangs; no timing is asserted
                while (await holder())[0] in ("", leader):
                    await anyio.sleep(0.1)
            successor, new_token = await holder()
            assert successor in procs and successor != leader
            assert new_token > token  # the fencing token grew with the new term
    finally:
        stop_processes(procs.values())
