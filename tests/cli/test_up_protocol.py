"""`lmteams up` agents are Synadia Agent Protocol agents, and `lmteams agent attach` takes a
protocol agent into that team: real processes, driven by the protocol's own SDKs."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import nats
from synadia_ai.agent_service import AgentService, PromptStream
from synadia_ai.agents import Agent, Agents, DiscoverFilter, Envelope, ResponseChunk

from lmteams.agents import TeamClient
from lmteams.bus import free_port, open_bus
from lmteams.testing import stop_processes

from .conftest import lmteams

TEAM = "protoup"


async def _discover(caller: Agents, want: set[str], owner: str) -> dict[str, Agent]:
    """Poll discovery until the agents ``want`` answer (processes start at their own pace)."""
    with anyio.fail_after(60):
        while True:
            found = await caller.discover(filter=DiscoverFilter(owner=owner))
            by_name = {a.session_name: a for a in found}
            if want <= set(by_name):
                return by_name
            await anyio.sleep(0.3)


async def test_up_agents_are_discovered_prompted_and_joined_by_an_attached_agent(
    home: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    up = subprocess.Popen(
        [sys.executable, "-m", "lmteams", "up", "--agents", "2", "--team", TEAM,
         "--backend", "sim", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=home,
    )  # fmt: skip
    procs = [up]
    try:
        state = Path(home["LMTEAMS_HOME"]) / f"up-{TEAM}.json"
        with anyio.fail_after(60):
            while not state.exists():
                assert up.poll() is None, "lmteams up exited early"
                await anyio.sleep(0.1)
        nc = await nats.connect(url)
        caller = Agents(nc=nc)
        adder = AgentService(agent="adder", owner="tests", session_name="s1", nc=nc)

        async def add(envelope: Envelope, stream: PromptStream) -> None:
            await stream.send(str(sum(int(n) for n in re.findall(r"\d+", envelope.prompt))))

        adder.on_prompt(add)
        await adder.start()
        try:
            agents = await _discover(caller, {"agent-1", "agent-2"}, TEAM)
            with anyio.fail_after(30):
                chunks = [c async for c in agents["agent-1"].prompt("What is 2+2?", timeout=20)]
            assert "".join(c.text for c in chunks if isinstance(c, ResponseChunk)).strip()

            attached = subprocess.Popen(
                [sys.executable, "-m", "lmteams", "agent", "attach", "--agent", "adder",
                 "--name", "helper", "--team", TEAM, "--nats", url],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=home,
            )  # fmt: skip
            procs.append(attached)
            async with open_bus(url, name="client") as bus:
                client = TeamClient(bus, TEAM)
                with anyio.fail_after(90):
                    while True:  # until the member is in the team's view, the vote has two
                        result = await client.submit(
                            "What is 12+30?", strategy="vote", agents=3, timeout=60
                        )
                        voters = {a.agent: a.text for a in result.answers}
                        if "helper" in voters:
                            break
                        assert attached.poll() is None, "lmteams agent attach exited"
                        await anyio.sleep(0.5)
            assert voters["helper"] == "42" and set(voters) == {"agent-1", "agent-2", "helper"}
            attached.send_signal(signal.SIGTERM)
            assert attached.wait(timeout=60) == 0
        finally:
            await adder.stop()
            await caller.close()
            await nc.close()
        down = lmteams("down", "--team", TEAM, env=home)
        assert down.returncode == 0, down.stderr
        assert up.wait(timeout=60) == 0
    finally:
        stop_processes(p for p in procs if p.poll() is None)
