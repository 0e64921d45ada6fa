"""`lmteams task publish --strategy debate --rounds N` runs N rounds, end to end.

The CLI once dropped ``--rounds`` (a 2-round debate reported "no majority after 3 rounds"):
here three agents that never agree take the task from the CLI process, so the reported
round count can only come from what the CLI sent.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import anyio

from lmteams.agents import open_runtime
from lmteams.bus import Bus, EmbeddedServer

from .conftest import ScriptedAgent, says, spawn_team


async def test_cli_debate_reports_the_rounds_it_was_given(
    bus: Bus, nats_server: EmbeddedServer, team_name: str, tmp_path: Path
) -> None:
    env = {**os.environ, "LMTEAMS_HOME": str(tmp_path), "NO_COLOR": "1"}
    async with open_runtime(bus, team_name) as rt:
        stubborn = {n: ScriptedAgent(says(n), coordinates=n == "x") for n in ("x", "y", "z")}
        await spawn_team(rt, stubborn)
        for rounds in (2, 4):
            done = await anyio.run_process(
                [sys.executable, "-m", "lmteams", "task", "publish", "Pick one.",
                 "--team", team_name, "--nats", nats_server.url, "--strategy", "debate",
                 "--agents", "3", "--rounds", str(rounds), "--wait", "--json"],
                env=env, check=False,
            )  # fmt: skip
            result = json.loads(done.stdout)
            assert result["rounds"] == rounds, done.stderr
            assert result["error"] == f"no majority after {rounds} rounds"
