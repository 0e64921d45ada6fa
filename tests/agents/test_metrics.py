"""Prometheus metrics of a real agent: scraped over HTTP and parsed as Prometheus would."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from lmteams.agents import (
    Supervisor,
    SupervisorConfig,
    TeamClient,
    WorkerAgent,
    WorkerConfig,
    open_runtime,
)
from lmteams.agents._metrics import serve_metrics
from lmteams.bus import (
    Bus,
    EmbeddedServer,
    Subjects,
    WorkQueueSettings,
    ensure_team_streams,
    free_port,
)
from lmteams.hardware import Backend, DeviceClass, SimulatedBackend
from lmteams.testing import stop_processes, wait_until

TEAM = "mt"
STEADY = DeviceClass(
    name="steady", prompt_tokens_per_s=5000.0, generation_tokens_per_s=2000.0, load_s=0.0,
    jitter=0.0, straggler_prob=0.0, straggler_factor=1.0, failure_prob=0.0,
    description="a fault-free device for functional tests",
)  # fmt: skip
QUEUE = WorkQueueSettings(ack_wait_s=10.0, retry_delay_s=0.05)


class SimWorker(WorkerAgent):
    """A worker on a fault-free simulated device; ``crash_first`` makes its first try raise."""

    def __init__(self, *, crash_first: bool = False) -> None:
        super().__init__(WorkerConfig(queue=QUEUE, heartbeat_s=0.2, fetch_timeout_s=0.2))
        self.crash_first = crash_first

    @contextlib.asynccontextmanager
    async def open_backend(self) -> AsyncIterator[Backend]:  # type: ignore[override]
        backend = SimulatedBackend(STEADY, seed=1, time_scale=0.001)
        await backend.load()
        try:
            yield backend
        finally:
            await backend.aclose()

    async def _generate(self, request):  # type: ignore[no-untyped-def]
        if self.crash_first:
            self.crash_first = False
            raise RuntimeError("a bug in the first try")  # handed back: a redelivery
        return await super()._generate(request)


def _scrape(host: str, port: int) -> dict[str, list[Sample]]:
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def _value(families: dict[str, list[Sample]], sample: str, **labels: str) -> float | None:
    family = families.get(sample.removesuffix("_total").removesuffix("_count"), [])
    for s in family:
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    return None


async def _scraped(where: tuple[str, int]) -> dict[str, list[Sample]]:
    return await anyio.to_thread.run_sync(_scrape, *where)


async def _scraped_once_counted(
    where: tuple[str, int], labels: dict[str, str]
) -> dict[str, list[Sample]]:
    """A scrape once the agent has counted its answered task. It counts after storing the
    result, so a client can hold the result first (seen in CI, with the agent in a process
    of its own)."""
    families: dict[str, list[Sample]] = {}

    async def counted() -> bool:
        nonlocal families
        families = await _scraped(where)
        return _value(families, "lmteams_tasks_total", outcome="ok", **labels) >= 1

    await wait_until(counted, timeout=30, interval=0.1)
    return families


def _server_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if "serve_forever" in t.name]


async def test_a_scrape_shows_the_task_the_agent_just_served(bus: Bus) -> None:
    async with open_runtime(bus, TEAM) as rt:
        await rt.spawn(SimWorker, actor_id="m1", roles=("worker",))
        async with serve_metrics(rt.metrics.registry, port=0) as where:
            result = await TeamClient(bus, TEAM).submit("What is 2+2?", max_tokens=16, timeout=30)
            assert result.ok
            me = {"team": TEAM, "agent": "m1"}
            families = await _scraped_once_counted(where, me)
            assert _value(families, "lmteams_tasks_total", outcome="ok", **me) == 1
            assert _value(families, "lmteams_tasks_total", outcome="error", **me) == 0
            assert _value(families, "lmteams_task_duration_seconds_count", **me) == 1
            assert _value(families, "lmteams_queue_wait_seconds_count", **me) == 1
            assert _value(families, "lmteams_tokens_in_total", **me) == result.tokens_in > 0
            assert _value(families, "lmteams_tokens_out_total", **me) == result.tokens_out > 0
            assert _value(families, "lmteams_redeliveries_total", **me) == 0
            assert _value(families, "lmteams_mailbox_depth", **me) == 0
            assert _value(families, "lmteams_members", team=TEAM, state="alive") == 1
            assert _value(families, "lmteams_members", team=TEAM, state="dead") == 0
            await wait_until(  # its facts reach the view at its next heartbeat
                lambda: rt.membership.member("m1") is not None, timeout=20
            )
            families = await _scraped(where)
            assert _value(families, "lmteams_tasks_in_flight", **me) == 0
            assert (_value(families, "lmteams_tokens_per_second", **me) or 0) > 0
            assert _server_threads()
    assert not _server_threads()  # the exposition server's thread ended with the block


async def test_metric_names_follow_prometheus_conventions(bus: Bus) -> None:
    async with open_runtime(bus, TEAM) as rt:
        await rt.spawn(SimWorker, actor_id="m1")
        async with serve_metrics(rt.metrics.registry, port=0) as where:
            assert (await TeamClient(bus, TEAM).submit("hi", max_tokens=8, timeout=30)).ok
            text = await anyio.to_thread.run_sync(_raw, *where)
    families = list(text_string_to_metric_families(text))
    # prometheus_client's text format adds a `_created` gauge beside each counter family
    kinds = {f.name: f.type for f in families if not f.name.endswith("_created")}
    assert {n for n, k in kinds.items() if k == "counter"} == {
        "lmteams_tasks", "lmteams_tokens_in", "lmteams_tokens_out", "lmteams_redeliveries",
        "lmteams_dead_letters",
    }  # fmt: skip
    assert {n for n, k in kinds.items() if k == "histogram"} == {
        "lmteams_task_duration_seconds",
        "lmteams_queue_wait_seconds",
    }
    assert {n for n, k in kinds.items() if k == "gauge"} == {
        "lmteams_tasks_in_flight", "lmteams_tokens_per_second", "lmteams_mailbox_depth",
        "lmteams_members",
    }  # fmt: skip
    typed = [line.split()[2:] for line in text.splitlines() if line.startswith("# TYPE")]
    assert all(name.endswith("_total") for name, kind in typed if kind == "counter")
    assert all(name.endswith("_seconds") for name, kind in typed if kind == "histogram")


def _raw(host: str, port: int) -> str:
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as reply:
        return str(reply.read().decode())


async def test_a_redelivered_task_counts_in_redeliveries(bus: Bus) -> None:
    async with open_runtime(bus, TEAM) as rt:
        await rt.spawn(lambda: SimWorker(crash_first=True), actor_id="m1")
        async with serve_metrics(rt.metrics.registry, port=0) as where:
            result = await TeamClient(bus, TEAM).submit("again?", max_tokens=8, timeout=30)
            assert result.ok and result.deliveries == 2
            me = {"team": TEAM, "agent": "m1"}
            families = await _scraped_once_counted(where, me)
    assert _value(families, "lmteams_redeliveries_total", **me) == 1
    assert _value(families, "lmteams_tasks_total", outcome="ok", **me) == 1


async def test_refused_and_malformed_tasks_count_as_dead_letters(bus: Bus) -> None:
    subjects = Subjects(TEAM)
    await ensure_team_streams(bus, subjects)
    async with open_runtime(bus, TEAM) as rt:
        await rt.spawn(SimWorker, actor_id="m1")
        async with serve_metrics(rt.metrics.registry, port=0) as where:
            await bus.publish_raw(subjects.tasks, b"\xc1 not a task", {})
            await bus.publish_raw(
                subjects.tasks,
                b'{"type": "task", "id": "empty-1", "prompt": "  "}',
                {"Content-Type": "application/json"},
            )
            me = {"team": TEAM, "agent": "m1"}

            async def both_counted() -> bool:
                families = await _scraped(where)
                return _value(families, "lmteams_tasks_total", outcome="refused", **me) == 2

            await wait_until(both_counted, timeout=30)
            families = await _scraped(where)
    assert _value(families, "lmteams_dead_letters_total", kind="decode", **me) == 1
    assert _value(families, "lmteams_dead_letters_total", kind="invalid", **me) == 1
    assert _value(families, "lmteams_tasks_total", outcome="ok", **me) == 0


async def test_an_agent_process_serves_its_metrics_on_metrics_port(
    bus: Bus, nats_server: EmbeddedServer, tmp_path: Path
) -> None:
    port = free_port()
    env = {**os.environ, "LMTEAMS_HOME": str(tmp_path / "home"), "LMTEAMS_NATS_URL": ""}
    logs = tmp_path / "agent.log"
    with logs.open("wb") as sink:
        agent = subprocess.Popen(
            [sys.executable, "-m", "lmteams", "agent", "start", "--team", TEAM, "--name", "p1",
             "--nats", nats_server.url, "--backend", "sim", "--metrics-port", str(port)],
            env=env, stdout=sink, stderr=sink,
        )  # fmt: skip
    where = ("127.0.0.1", port)
    me = {"team": TEAM, "agent": "p1"}
    try:

        async def serving() -> bool:
            with contextlib.suppress(OSError):
                families = await _scraped(where)
                return _value(families, "lmteams_tasks_total", outcome="ok", **me) == 0
            return False

        await wait_until(serving, timeout=60, interval=0.2)
        result = await TeamClient(bus, TEAM).submit("What is 2+2?", max_tokens=8, timeout=60)
        assert result.ok and result.agent == "p1"
        families = await _scraped_once_counted(where, me)
        assert _value(families, "lmteams_tasks_total", outcome="ok", **me) == 1
        assert _value(families, "lmteams_tokens_out_total", **me) == result.tokens_out
        assert _value(families, "lmteams_task_duration_seconds_count", **me) == 1
        agent.send_signal(signal.SIGTERM)
        code = await anyio.to_thread.run_sync(lambda: agent.wait(timeout=60))
        assert code == 0, logs.read_text()
    finally:
        stop_processes([agent])
    with pytest.raises(OSError, match="refused"):  # the server went with the process
        _scrape(*where)


async def test_up_gives_each_agent_process_its_own_metrics_port() -> None:
    config = SupervisorConfig(team=TEAM, agents=3, metrics_port=9300, metrics_host="0.0.0.0")
    async with anyio.create_task_group() as tg:
        supervisor = Supervisor(config, "nats://127.0.0.1:4222", tg)
        argv = {name: supervisor.argv(name, "m") for name in supervisor.agent_names()}
    for i, name in enumerate(supervisor.agent_names()):
        at = argv[name].index("--metrics-port")
        assert argv[name][at : at + 4] == [
            "--metrics-port",
            str(9300 + i),
            "--metrics-host",
            "0.0.0.0",
        ]
    quiet = Supervisor(SupervisorConfig(team=TEAM), "nats://127.0.0.1:4222", tg)
    assert "--metrics-port" not in quiet.argv("agent-1", "m")
