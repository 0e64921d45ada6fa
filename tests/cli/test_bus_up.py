"""`lmteams bus up`: a taken port, cluster ports from --port, whole URL lines, dead nodes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio

from lmteams.bus import EmbeddedServer, free_port, open_bus
from lmteams.errors import LmteamsError
from lmteams.testing import wait_until

from .conftest import lmteams


async def test_bus_up_on_a_taken_port_is_a_clear_error(nats_server: EmbeddedServer) -> None:
    done = await anyio.to_thread.run_sync(
        lambda: lmteams("bus", "up", "--port", str(nats_server.config.port))
    )
    assert done.returncode == 1
    assert "already in use" in done.stderr and "Traceback" not in done.stderr


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _node_pid(parent: int, port: int) -> int | None:
    """The nats-server child of ``parent`` whose config listens on ``port``."""
    for child in _children(parent):
        try:
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            conf = Path(argv[argv.index(b"-c") + 1].decode()).read_text()
        except (OSError, ValueError, IndexError):
            continue
        if f'"port":{port},' in conf:
            return child
    return None


async def _answers(url: str) -> bool:
    try:
        async with open_bus(url, name="probe", connect_timeout=1.0):
            return True
    except LmteamsError:
        return False


async def test_cluster_uses_the_port_prints_whole_urls_and_restarts_a_dead_node(
    home: dict[str, str], tmp_path: Path
) -> None:
    base = free_port()  # three consecutive ports from here; taken ones fail the start loudly
    urls = [f"nats://127.0.0.1:{base + i}" for i in range(3)]
    stdout, stderr = tmp_path / "out", tmp_path / "err"
    with stdout.open("w") as out, stderr.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lmteams", "bus", "up", "--cluster", "3",
             "--port", str(base), "--team", "c3"],
            stdout=out, stderr=err, env=home,
        )  # fmt: skip
    try:
        await wait_until(lambda: "cluster of 3 up" in stdout.read_text(), timeout=60)
        line = next(x for x in stdout.read_text().splitlines() if "cluster of 3 up" in x)
        assert line.endswith(",".join(urls))  # the whole --nats value on one line, piped
        for url in urls:
            assert await _answers(url)
        victim = _node_pid(proc.pid, base + 1)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        await wait_until(lambda: "is back" in stderr.read_text(), timeout=60)
        said = stderr.read_text()
        assert f"({urls[1]}) died: restarting it" in said
        assert await _answers(urls[1])
        assert proc.poll() is None  # the command kept serving
        proc.send_signal(signal.SIGTERM)
        assert await anyio.to_thread.run_sync(lambda: proc.wait(timeout=60)) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
