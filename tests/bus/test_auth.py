"""Credentials given to open_bus reach nats-server: user/password and nkey seeds."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nkeys
import pytest

from lmteams.bus import ServerConfig, open_bus, run_server
from lmteams.errors import NotConnectedError


async def test_user_password_auth(log_events: list[dict[str, object]]) -> None:
    config = ServerConfig(
        extra={"authorization": {"users": [{"user": "agent", "password": "pa55-w0rd"}]}}
    )
    async with run_server(config) as server:
        with pytest.raises(NotConnectedError):
            async with open_bus(server.url, user="agent", password="wrong", connect_timeout=1):
                pass
        async with open_bus(server.url, user="agent", password="pa55-w0rd") as bus:
            await bus.flush()
    assert "pa55-w0rd" not in repr(log_events)


async def test_nkey_seed_file_auth(tmp_path: Path) -> None:
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    public = nkeys.from_seed(seed).public_key.decode()
    seed_file = tmp_path / "agent.nk"
    seed_file.write_bytes(seed)
    config = ServerConfig(extra={"authorization": {"users": [{"nkey": public}]}})
    async with run_server(config) as server:
        with pytest.raises(NotConnectedError):
            async with open_bus(server.url, connect_timeout=1):
                pass
        async with open_bus(server.url, nkey_seed=str(seed_file)) as bus:
            await bus.flush()


def test_logging_json_lines_and_redaction(capsys: pytest.CaptureFixture[str]) -> None:
    import structlog

    from lmteams.logging import configure

    configure(json=True, level="debug")  # the autouse fixture restores the old configuration
    structlog.get_logger("t").info("bus.connect", server="nats://x", password="hunter2")
    line = capsys.readouterr().err.strip().splitlines()[-1]
    event = json.loads(line)
    assert event["event"] == "bus.connect" and event["server"] == "nats://x"
    assert event["password"] == "***" and "hunter2" not in line
    assert event["level"] == "info" and "timestamp" in event
