"""The `lmteams` command: help, clear errors, and an up / publish / down round on sim agents."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmteams.bus import EmbeddedServer, free_port


def lmteams(*args: str, env: dict[str, str] | None = None, timeout: float = 60):
    return subprocess.run(
        [sys.executable, "-m", "lmteams", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "LMTEAMS_HOME": str(tmp_path / "home"), "LMTEAMS_NATS_URL": ""}


def test_help_lists_every_verb() -> None:
    done = lmteams("--help")
    assert done.returncode == 0
    for verb in ("demo", "up", "down", "bus", "agent", "task", "hardware", "model", "study"):
        assert verb in done.stdout
    assert lmteams("--version").stdout.strip() == "0.1.0"
    sub = lmteams("task", "publish", "--help")
    assert "--wait" in sub.stdout and "--json" in sub.stdout


async def test_bus_up_on_a_taken_port_is_a_clear_error(nats_server: EmbeddedServer) -> None:
    done = lmteams("bus", "up", "--port", str(nats_server.config.port))
    assert done.returncode == 1
    assert "already in use" in done.stderr and "Traceback" not in done.stderr


def test_down_without_a_running_team(home: dict[str, str]) -> None:
    done = lmteams("down", "--team", "nobody", env=home)
    assert done.returncode == 1 and "no `lmteams up` is running" in done.stderr


def test_publish_without_a_bus_says_how_to_get_one(home: dict[str, str]) -> None:
    done = lmteams("task", "publish", "hi", "--team", "nobody", env=home)
    assert done.returncode == 1
    assert "lmteams up --team nobody" in done.stderr and "Traceback" not in done.stderr


def test_agent_with_a_missing_model_fails_fast(home: dict[str, str], tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    done = lmteams("agent", "start", "--name", "a1", "--model", str(missing), env=home)
    assert done.returncode == 2 and str(missing) in done.stderr


def test_invalid_task_is_refused_before_the_bus(home: dict[str, str], tmp_path: Path) -> None:
    done = lmteams(
        "task", "publish", "hi", "--agents", "0", "--nats", "nats://127.0.0.1:1", env=home
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr


def test_up_publish_down_on_simulated_agents(home: dict[str, str]) -> None:
    port = free_port()
    up = subprocess.Popen(
        [sys.executable, "-m", "lmteams", "up", "--agents", "2", "--team", "cli",
         "--backend", "sim", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=home,
    )  # fmt: skip
    try:
        state = Path(home["LMTEAMS_HOME"]) / "up-cli.json"
        deadline = time.monotonic() + 30
        while not state.exists():
            assert up.poll() is None, up.stderr.read() if up.stderr else ""
            assert time.monotonic() < deadline, "lmteams up never recorded its state"
            time.sleep(0.1)
        done = lmteams(
            "task", "publish", "What is 2+2?", "--team", "cli", "--wait", "--json", env=home
        )
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert result["ok"] and result["device"].startswith("sim:")
        assert result["agent"] in {"agent-1", "agent-2"}
        _status_shows_both_agents(home)
        down = lmteams("down", "--team", "cli", env=home)
        assert down.returncode == 0, down.stderr
        assert up.wait(timeout=30) == 0
        assert not state.exists()
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        for stream in (up.stdout, up.stderr):
            if stream:
                stream.close()


def _status_shows_both_agents(home: dict[str, str]) -> None:
    """`lmteams status` reads members, devices and load from gossip (agents refresh it)."""
    deadline = time.monotonic() + 30
    while True:
        done = lmteams("status", "--team", "cli", "--json", env=home)
        members = {m["member"]: m for m in json.loads(done.stdout or "{}").get("members", [])}
        ready = [members.get(a, {}).get("meta", {}) for a in ("agent-1", "agent-2")]
        if all(str(meta.get("device", "")).startswith("sim:") for meta in ready):
            break
        assert time.monotonic() < deadline, f"status never showed the agents: {done.stdout}"
        time.sleep(0.5)
    assert all(members[a]["state"] == "alive" for a in ("agent-1", "agent-2"))
    assert all("load" in meta and "tokens_per_s" in meta for meta in ready)
    table = lmteams("status", "--team", "cli", env=home)
    assert table.returncode == 0 and "agent-1" in table.stdout and "sim:" in table.stdout


def test_error_messages_keep_their_square_brackets(capsys: pytest.CaptureFixture[str]) -> None:
    from lmteams.cli._common import fail
    from lmteams.errors import ConfigError

    exit_ = fail(ConfigError("needs pyarrow: pip install 'lmteams[study]'"))
    assert exit_.exit_code == 1
    assert "pip install 'lmteams[study]'" in capsys.readouterr().err
