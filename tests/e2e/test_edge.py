"""examples/edge_agent.py: an agent embedded in a user's program, through a leaf node."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from lmteams.agents import TeamClient
from lmteams.bus import ServerConfig, Subjects, ensure_team_streams, open_bus, run_server

EXAMPLE = Path(__file__).parents[2] / "examples" / "edge_agent.py"


@pytest.mark.slow
async def test_edge_agent_serves_the_hub_team_through_a_leaf_node(model_path: str) -> None:
    async with run_server(ServerConfig(leaf_port=0, js_domain="hub")) as hub:
        assert hub.leaf_url is not None
        proc = subprocess.Popen(
            [sys.executable, str(EXAMPLE), "--hub", hub.leaf_url, "--team", "edge",
             "--name", "edge-1", "--model", model_path, "--threads", "1"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            line = await anyio.to_thread.run_sync(proc.stdout.readline)
            assert "edge agent edge-1 serving team edge" in line
            async with open_bus(hub.url, name="hub-client") as bus:
                await ensure_team_streams(bus, Subjects("edge"))
                client = TeamClient(bus, "edge")
                result = await client.submit("Say hello.", max_tokens=8, timeout=120)
            assert result.ok and result.agent == "edge-1" and result.answer.strip()
        finally:
            proc.send_signal(signal.SIGINT)
            code = await anyio.to_thread.run_sync(lambda: proc.wait(timeout=60))
            if proc.stdout:
                proc.stdout.close()
        assert code == 0
