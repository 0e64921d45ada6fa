"""`lmteams status` prints the team's membership view: a table, JSON, and live with --watch."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from typing import Any

import anyio
from anyio.streams.text import TextReceiveStream

from lmteams.agents import AgentIdentity, MemberFacts
from lmteams.bus import Bus, EmbeddedServer
from lmteams.gossip import SwimConfig, fingerprint, open_membership
from lmteams.testing import wait_until

from .conftest import lmteams

TEAM = "st"
FAST = SwimConfig(period_s=0.1, suspicion_mult=4.0)


def _facts(n: int, key: str = "") -> MemberFacts:
    return MemberFacts(
        device=f"sim:dev{n}", model="smollm2-135m", tokens_per_s=12.5, in_flight=n,
        served=10 + n, roles=("worker",), public_key=key,
    )  # fmt: skip


async def _run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return await anyio.to_thread.run_sync(lambda: lmteams(*args, env=env))


async def test_status_prints_the_view_as_json_and_as_a_table(
    bus: Bus, nats_server: EmbeddedServer, home: dict[str, str]
) -> None:
    key = AgentIdentity().public_key
    async with open_membership(bus, TEAM, config=FAST) as view:
        for n in range(3):
            await view.join(f"m{n}", _facts(n, key if n == 0 else ""))
        await wait_until(lambda: len(view.live()) == 3, timeout=15)
        where = ("--team", TEAM, "--nats", nats_server.url, "--wait", "0.5")
        done = await _run("status", *where, "--json", env=home)
        table = await _run("status", *where, env=home)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["team"] == TEAM
    members = {m["name"]: m for m in report["members"]}
    assert {n: m["state"] for n, m in members.items()} == dict.fromkeys(("m0", "m1", "m2"), "alive")
    assert members["m1"]["facts"]["device"] == "sim:dev1"
    assert members["m1"]["facts"]["in_flight"] == 1
    assert members["m0"]["facts"]["public_key"] == key and not members["m0"]["key_conflict"]
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    header = next(line for line in lines if "member" in line)
    for column in ("state", "inc", "device", "model", "tok/s", "load", "served", "roles", "key"):
        assert column in header
    m0 = next(line for line in lines if " m0 " in line)
    assert "alive" in m0 and "sim:dev0" in m0 and "12.5" in m0 and fingerprint(key) in m0
    assert "…" not in table.stdout  # nothing cut off


async def test_status_of_an_empty_team_says_so(
    nats_server: EmbeddedServer, home: dict[str, str]
) -> None:
    done = await _run(
        "status", "--team", "nobody", "--nats", nats_server.url, "--wait", "0.3", env=home
    )
    assert done.returncode == 1
    assert "no gossip members answered" in done.stderr


async def test_watch_prints_a_line_per_change_and_ctrl_c_exits_0(
    bus: Bus, nats_server: EmbeddedServer, home: dict[str, str]
) -> None:
    lines: list[dict[str, Any]] = []

    def states() -> dict[str, str]:
        last = lines[-1] if lines else {"members": []}
        return {m["name"]: m["state"] for m in last["members"]}

    async with open_membership(bus, TEAM, config=FAST) as view:
        await view.join("w0", _facts(0))
        await view.join("w1", _facts(1))
        watch = await anyio.open_process(
            [sys.executable, "-m", "lmteams", "status", "--watch", "--json", "--team", TEAM,
             "--nats", nats_server.url, "--wait", "0.3"],
            env=home,
        )  # fmt: skip
        async with watch, anyio.create_task_group() as tg:

            async def read() -> None:
                assert watch.stdout is not None
                buffer = ""
                async for chunk in TextReceiveStream(watch.stdout):
                    buffer += chunk
                    while "\n" in buffer:
                        line, buffer = buffer.split("\n", 1)
                        lines.append(json.loads(line))

            tg.start_soon(read)
            await wait_until(lambda: states() == {"w0": "alive", "w1": "alive"}, timeout=30)
            await view.leave("w1")  # the watcher shows the change without being asked again
            await wait_until(lambda: states().get("w1") == "left", timeout=30)
            watch.send_signal(signal.SIGINT)
            with anyio.fail_after(30):
                code = await watch.wait()
            tg.cancel_scope.cancel()
    assert code == 0
    assert all(line["team"] == TEAM for line in lines)
