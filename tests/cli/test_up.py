"""`lmteams up` on simulated agents: the banner says sim, publish answers, status, down."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from lmteams.bus import free_port

from .conftest import lmteams


def test_up_publish_down_on_simulated_agents(home: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    banner = tmp_path / "up.out"
    with banner.open("w") as stdout:
        up = subprocess.Popen(
            [sys.executable, "-m", "lmteams", "up", "--agents", "2", "--team", "cli",
             "--backend", "sim", "--port", str(port)],
            stdout=stdout, stderr=subprocess.DEVNULL, text=True, env=home,
        )  # fmt: skip
    try:
        state = Path(home["LMTEAMS_HOME"]) / "up-cli.json"
        deadline = time.monotonic() + 60
        said = ""
        while not (state.exists() and said):  # the state file and the banner, in either order
            assert up.poll() is None, "lmteams up exited early"
            assert time.monotonic() < deadline, "lmteams up never recorded its state and banner"
            time.sleep(0.1)
            said = next((x for x in banner.read_text().splitlines() if "up" in x), "")
        assert "simulated cpu-x86" in said and "smollm2" not in said, said
        assert said.endswith(f"bus nats://127.0.0.1:{port}")  # one whole line when piped
        done = lmteams(
            "task", "publish", "What is 2+2?", "--team", "cli", "--wait", "--json", env=home
        )
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert result["ok"] and result["device"].startswith("sim:")
        assert result["agent"] in {"agent-1", "agent-2"}
        _debate_reports_its_rounds(home)
        _status_shows_both_agents(home)
        down = lmteams("down", "--team", "cli", env=home)
        assert down.returncode == 0, down.stderr
        assert up.wait(timeout=60) == 0
        assert not state.exists()
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()


def _debate_reports_its_rounds(home: dict[str, str]) -> None:
    done = lmteams(
        "task", "publish", "Name a colour.", "--team", "cli", "--strategy", "debate",
        "--agents", "2", "--rounds", "2", "--temperature", "1.0", "--wait", "--json", env=home,
    )  # fmt: skip
    result = json.loads(done.stdout)
    # simulated agents agree in round 1; the stream read-back test proves rounds=2 is sent
    assert result["ok"] and result["strategy"] == "debate" and 1 <= result["rounds"] <= 2


def _status_shows_both_agents(home: dict[str, str]) -> None:
    """`lmteams status` reads members, devices, load and keys from the membership view."""
    deadline = time.monotonic() + 30
    while True:
        done = lmteams("status", "--team", "cli", "--json", env=home)
        members = {m["name"]: m for m in json.loads(done.stdout or "{}").get("members", [])}
        ready = [members.get(a, {}).get("facts", {}) for a in ("agent-1", "agent-2")]
        if all(str(facts.get("device", "")).startswith("sim:") for facts in ready):
            break
        assert time.monotonic() < deadline, f"status never showed the agents: {done.stdout}"
        time.sleep(0.5)
    assert all(members[a]["state"] == "alive" for a in ("agent-1", "agent-2"))
    assert all(facts["tokens_per_s"] > 0 and facts["public_key"] for facts in ready)
    assert not any(members[a]["key_conflict"] for a in ("agent-1", "agent-2"))
    table = lmteams("status", "--team", "cli", env=home)
    assert table.returncode == 0 and "agent-1" in table.stdout and "sim:" in table.stdout
