"""Real-server fixtures: every integration test talks to a genuine nats-server on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from lmteams.bus import Bus, EmbeddedServer, LocalCluster, open_bus, run_cluster, run_server
from lmteams.testing import Secured, capture_logs, secured_team


@pytest.fixture(autouse=True)
def _isolated_logging() -> Iterator[None]:
    """Every test starts from, and leaves behind, the same structlog configuration."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.fixture
def log_events() -> Iterator[list[dict[str, Any]]]:
    """The structlog events emitted during the test."""
    with capture_logs() as events:
        yield events


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # nats-py is asyncio-only


@pytest.fixture
async def nats_server() -> AsyncIterator[EmbeddedServer]:
    async with run_server() as server:
        yield server


@pytest.fixture
async def bus(nats_server: EmbeddedServer) -> AsyncIterator[Bus]:
    async with open_bus(nats_server.url, name="test") as b:
        yield b


@pytest.fixture
async def cluster3() -> AsyncIterator[LocalCluster]:
    async with run_cluster(3) as cluster:
        yield cluster


@pytest.fixture
async def secured(tmp_path: Path) -> AsyncIterator[Secured]:
    """A secured bus of team ``sec`` (agents a1 and a2, clients client and eve), provisioned."""
    creds = tmp_path / "creds"
    async with secured_team(creds, "sec", ["a1", "a2"], clients=("client", "eve")) as team:
        yield team


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that run the real model (or many real processes) go to one xdist worker, one at a
    time: two of them side by side on a 2-core machine only slow each other down, while the
    rest (mostly waiting on leases, timeouts and failure detection) share the other worker.
    It runs first because xdist reads the group marks in its own hook of the same name."""
    for item in items:
        if item.get_closest_marker("slow") or item.nodeid.startswith("tests/hardware/"):
            item.add_marker(pytest.mark.xdist_group("model"))


def pytest_collection_finish(session: pytest.Session) -> None:
    """Fail loudly, not flakily, if a pytest or xdist upgrade stops the model group working:
    xdist marks a grouped test by suffixing its node id with ``@group``."""
    if not getattr(session.config.option, "loadgroup", False):
        return
    lost = [
        i.nodeid
        for i in session.items
        if i.get_closest_marker("xdist_group") and "@" not in i.nodeid
    ]
    if lost:
        raise pytest.UsageError(
            f"xdist's loadgroup did not group {len(lost)} tests (e.g. {lost[0]}); "
            "see pytest-xdist#1386 and the pytest pin in pyproject.toml"
        )


@pytest.fixture(autouse=True, scope="session")
def _private_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Tests never touch the user's state, and parallel test workers never share theirs."""
    patch = pytest.MonkeyPatch()
    patch.setenv("LMTEAMS_HOME", str(tmp_path_factory.mktemp("lmteams-home")))
    yield
    patch.undo()
