"""`lmteams top`: one frame of a running team (sim agents on gossip), as JSON and as a table,
and with ``--metrics`` what a real agent process's Prometheus endpoint measured."""

from __future__ import annotations

import contextlib
import http.server
import json
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import msgspec
import pytest

from lmteams.agents import TeamClient, WorkerAgent, WorkerConfig, open_runtime
from lmteams.bus import Bus, EmbeddedServer, free_port
from lmteams.cli._scrape import AgentSeries, metrics_url, parse
from lmteams.cli._top import Frame, _Rates
from lmteams.gossip import SwimConfig, open_membership
from lmteams.hardware import BackendConfig
from lmteams.testing import stop_processes, wait_until

from .conftest import lmteams

TEAM = "tp"
FAST = SwimConfig(period_s=0.1, suspicion_mult=4.0)
SIM = WorkerConfig(
    backend=BackendConfig(kind="sim", sim_device="rtx-4090-cuda", time_scale=0.001),
    heartbeat_s=0.2,
    fetch_timeout_s=0.2,
)


@contextlib.asynccontextmanager
async def _team(bus: Bus, *names: str) -> AsyncIterator[None]:
    """Simulated worker agents that are gossip members of the team, as daemons are."""
    async with (
        open_membership(bus, TEAM, config=FAST) as view,
        open_runtime(bus, TEAM, membership=view) as rt,
    ):
        for name in names:
            await rt.spawn(lambda: WorkerAgent(SIM), actor_id=name, roles=("worker",))
        await wait_until(lambda: set(view.live()) >= set(names), timeout=30)
        yield


async def _run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return await anyio.to_thread.run_sync(lambda: lmteams(*args, env=env))


async def test_top_once_json_lists_the_members_of_a_running_team(
    bus: Bus, nats_server: EmbeddedServer, home: dict[str, str]
) -> None:
    async with _team(bus, "a1", "a2"):
        where = ("--team", TEAM, "--nats", nats_server.url, "--wait", "0.5")
        done = await _run("top", "--once", "--json", *where, env=home)
        table = await _run("top", "--once", *where, env=home)
    assert done.returncode == 0, done.stderr
    frame = json.loads(done.stdout)  # one JSON object, nothing else on stdout
    assert frame["team"] == TEAM
    members = {m["name"]: m for m in frame["members"]}
    assert set(members) == {"a1", "a2"}
    assert {m["state"] for m in members.values()} == {"alive"}
    assert members["a1"]["facts"]["device"] == "sim:rtx-4090-cuda"
    assert frame["live"] == 2
    assert frame["tasks_in_flight"] == 0
    assert frame["jobs_in_flight"] == 0 and frame["jobs"] == []
    assert frame["tokens_per_s"] == sum(m["facts"]["tokens_per_s"] for m in members.values()) > 0
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert any(f"team {TEAM}: 2 live of 2" in line for line in lines)  # the title, whole
    header = next(line for line in lines if "member" in line)
    for column in ("state", "device", "model", "tok/s", "in flight", "served", "roles"):
        assert column in header
    a1 = next(line for line in lines if " a1 " in line)
    assert "alive" in a1 and "sim:rtx-4090-cuda" in a1 and "worker" in a1
    assert "…" not in table.stdout  # piped: nothing cut off or wrapped


async def test_top_once_of_an_empty_team_says_so(
    nats_server: EmbeddedServer, home: dict[str, str]
) -> None:
    done = await _run(
        "top", "--once", "--team", "nobody", "--nats", nats_server.url, "--wait", "0.3", env=home
    )
    assert done.returncode == 1
    assert "no gossip members answered" in done.stderr


def test_help_texts_name_top_and_the_metrics_options() -> None:
    assert "top" in lmteams("--help").stdout
    top = lmteams("top", "--help").stdout
    for option in ("--once", "--json", "--every", "--team", "--nats", "--metrics"):
        assert option in top
    for verb in (("agent", "start"), ("up",)):
        text = lmteams(*verb, "--help").stdout
        assert "--metrics-port" in text and "--metrics-host" in text


class _NotMetrics(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<html>this is no exposition</html>"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def _garbage_endpoint() -> Iterator[str]:
    """An HTTP server that answers 200 with something that is not the text format."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotMetrics)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/metrics"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@contextlib.contextmanager
def _agent_process(url: str, port: int, env: dict[str, str], logs: Path) -> Iterator[None]:
    with logs.open("wb") as sink:
        agent = subprocess.Popen(
            [sys.executable, "-m", "lmteams", "agent", "start", "--team", TEAM, "--name", "p1",
             "--nats", url, "--backend", "sim", "--metrics-port", str(port)],
            env=env, stdout=sink, stderr=sink,
        )  # fmt: skip
    try:
        yield
    finally:
        stop_processes([agent])


def _top_frame(done: subprocess.CompletedProcess[str]) -> Frame:
    assert done.returncode == 0, done.stderr
    return msgspec.json.decode(done.stdout, type=Frame)  # one frame, in the documented shape


async def test_top_metrics_shows_what_a_real_agent_served_and_flags_bad_endpoints(
    bus: Bus, nats_server: EmbeddedServer, home: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    live, dead = f"http://127.0.0.1:{port}/metrics", f"127.0.0.1:{free_port()}"
    where = ("--team", TEAM, "--nats", nats_server.url, "--wait", "0.5")
    nats = nats_server.url.replace("nats://", "http://")  # answers, but not in HTTP
    with (
        _agent_process(nats_server.url, port, home, tmp_path / "agent.log"),
        _garbage_endpoint() as junk,
    ):

        async def scraped_and_member() -> bool:
            frame = _top_frame(
                await _run("top", "--once", "--json", *where, "--metrics", live, env=home)
            )
            return [s.agent for s in frame.metrics] == ["p1"] and "p1" in {
                m.name for m in frame.members
            }

        await wait_until(scraped_and_member, timeout=90, interval=0.5)
        result = await TeamClient(bus, TEAM).submit("What is 2+2?", max_tokens=8, timeout=60)
        assert result.ok and result.agent == "p1" and result.tokens_out > 0
        done = await _run(
            "top",
            "--once",
            "--json",
            *where,
            "--metrics",
            f"{live},{dead}",
            "--metrics",
            f"{junk},{nats}",
            env=home,
        )
        table = await _run("top", "--once", *where, "--metrics", f"{live},{dead}", env=home)
    frame = _top_frame(done)
    assert [(e.url, e.status) for e in frame.endpoints] == [
        (live, "ok"), (f"http://{dead}/metrics", "unreachable"), (junk, "malformed"),
        (f"{nats}/metrics", "malformed"),
    ]  # fmt: skip
    assert frame.endpoints[0].agents == ("p1",) and frame.endpoints[1].error
    (p1,) = frame.metrics
    assert p1.url == live and p1.agent == "p1"
    assert p1.tasks == {"ok": 1, "error": 0, "refused": 0, "duplicate": 0, "poisoned": 0}
    assert p1.tokens_out == result.tokens_out and p1.tokens_in == result.tokens_in
    assert p1.mailbox == 0
    # measured over --wait, in which it served nothing, beside the rate it advertises
    assert p1.tokens_per_s == 0.0 and frame.measured_tokens_per_s == 0.0
    member = next(m for m in frame.members if m.name == "p1")
    assert member.facts.tokens_per_s > 0 and frame.tokens_per_s == member.facts.tokens_per_s
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    header = next(line for line in lines if "member" in line)
    for column in ("tok/s", "adv tok/s", "queue", "tasks"):
        assert column in header
    row = next(line for line in lines if " p1 " in line)
    assert "ok 1" in row and "error" not in row  # outcomes that happened
    assert any(f"http://{dead}/metrics: unreachable" in line for line in lines)
    assert "tok/s measured" in table.stdout


async def test_top_measures_tokens_per_second_from_tasks_served_while_it_watches(
    bus: Bus, nats_server: EmbeddedServer, home: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    live = f"http://127.0.0.1:{port}/metrics"
    with _agent_process(nats_server.url, port, home, tmp_path / "agent.log"):
        client = TeamClient(bus, TEAM)
        first = await client.submit("warm up", max_tokens=8, timeout=90)  # it serves: ready
        assert first.ok
        args = ("top", "--once", "--json", "--team", TEAM, "--nats", nats_server.url,
                "--wait", "3", "--metrics", live)  # fmt: skip
        frame: Frame | None = None
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                nonlocal frame
                frame = _top_frame(await _run(*args, env=home))
                tg.cancel_scope.cancel()

            tg.start_soon(watch)
            while True:  # tasks all through top's --wait, until it has printed its frame
                assert (await client.submit("count to ten", max_tokens=32, timeout=60)).ok
    assert frame is not None
    (p1,) = frame.metrics
    assert p1.tasks["ok"] >= 2
    assert p1.tokens_per_s is not None and p1.tokens_per_s > 0
    assert frame.measured_tokens_per_s == p1.tokens_per_s


def test_measured_rate_is_the_counter_delta_over_the_interval_and_survives_a_reset() -> None:
    rates = _Rates()
    assert rates.measure(AgentSeries(agent="a", tokens_out=100), at=10.0).tokens_per_s is None
    assert rates.measure(AgentSeries(agent="a", tokens_out=160), at=12.0).tokens_per_s == 30.0
    assert rates.measure(AgentSeries(agent="b", tokens_out=5), at=12.0).tokens_per_s is None
    # the process restarted: its counter starts again from 0, what it shows is what it made
    assert rates.measure(AgentSeries(agent="a", tokens_out=20), at=14.0).tokens_per_s == 10.0


def test_parse_keeps_the_teams_agents_and_refuses_what_is_not_an_exposition() -> None:
    text = (
        'lmteams_tokens_out_total{team="tp",agent="a1"} 7.0\n'
        'lmteams_tokens_out_total{team="other",agent="x"} 9.0\n'
        'lmteams_tasks_total{team="tp",agent="a1",outcome="ok"} 2.0\n'
        'lmteams_mailbox_depth{team="tp",agent="a1"} 3.0\n'
    )
    (a1,) = parse(text, "tp", "u")
    assert (a1.agent, a1.url, a1.tokens_out, a1.tasks, a1.mailbox) == ("a1", "u", 7.0, {"ok": 2}, 3)
    assert a1.in_flight is None  # not in the scrape: unknown, not 0
    with pytest.raises(ValueError, match="invalid metric name"):
        parse("<html>no</html>", "tp")


def test_metrics_urls_take_host_port_and_refuse_other_schemes() -> None:
    assert metrics_url("127.0.0.1:9300") == "http://127.0.0.1:9300/metrics"
    assert metrics_url("http://h:1/") == "http://h:1/metrics"
    assert metrics_url("https://h/x/metrics") == "https://h/x/metrics"
    with pytest.raises(ValueError, match="not an http"):
        metrics_url("file:///etc/passwd")
    bad = lmteams("top", "--once", "--metrics", "file:///etc/passwd")
    assert bad.returncode == 2 and "--metrics" in bad.stderr
