"""Traces: W3C context in headers, spans where work happens, and nothing at all when off.

The cross-process test runs a real team (three `lmteams agent start` processes and the
`lmteams task publish` client, each exporting OTLP/HTTP to a receiver in this test) and
checks that one vote task's spans from all four processes form one trace, parent by parent.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from lmteams import tracing
from lmteams.agents import Actor, ActorRef, handler, open_runtime
from lmteams.bus import Bus, EmbeddedServer, encode, open_bus
from lmteams.gossip import open_membership
from lmteams.testing import stop_processes, wait_until


class Ask(msgspec.Struct, frozen=True, kw_only=True, tag="trace-ask"):
    task_id: str
    round: int = 0


class Told(msgspec.Struct, frozen=True, kw_only=True, tag="trace-told"):
    task_id: str


class Echo(Actor):
    @handler
    async def on_ask(self, msg: Ask) -> Told:
        return Told(task_id=msg.task_id)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on in this process with an in-memory exporter (no global provider), then off."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use(provider)
    try:
        yield exporter
    finally:
        tracing.reset()
        provider.shutdown()


@contextlib.asynccontextmanager
async def _echo(bus: Bus) -> AsyncIterator[tuple[ActorRef, list[dict[str, str]]]]:
    """An ``Echo`` actor, and a raw subscriber's record of every header block sent to it."""
    seen: list[dict[str, str]] = []

    async def record(msg: Any) -> None:
        seen.append(dict(msg.headers or {}))

    async with open_runtime(bus, "tr") as runtime:
        await runtime.spawn(Echo, actor_id="echo")
        ref = runtime.ref("echo")
        await bus.nc.subscribe(ref.subject, cb=record)
        await bus.nc.flush()
        yield ref, seen


async def test_a_request_in_a_span_carries_its_context_to_the_handler(
    bus: Bus, spans: InMemorySpanExporter
) -> None:
    async with _echo(bus) as (echo, seen):
        with tracing.span("caller", kind="client"):
            told = await echo.ask(Ask(task_id="t-1", round=2), expect=Told)
        assert told.task_id == "t-1"
        await wait_until(lambda: len(spans.get_finished_spans()) >= 2 and len(seen) == 1)
    by_name = {s.name: s for s in spans.get_finished_spans()}
    caller, served = by_name["caller"], by_name["process trace-ask"]
    assert served.context.trace_id == caller.context.trace_id
    assert served.parent is not None and served.parent.span_id == caller.context.span_id
    assert served.attributes is not None
    assert served.attributes["lmteams.agent"] == "echo"
    assert served.attributes["lmteams.task"] == "t-1"
    assert served.attributes["lmteams.round"] == 2
    (headers,) = seen
    trace_id, span_id = headers[tracing.TRACEPARENT].split("-")[1:3]
    assert (int(trace_id, 16), int(span_id, 16)) == (
        caller.context.trace_id,
        caller.context.span_id,
    )


async def test_messages_outside_any_span_carry_no_context_and_start_no_span(
    bus: Bus, spans: InMemorySpanExporter
) -> None:
    async with _echo(bus) as (echo, seen):
        await echo.ask(Ask(task_id="t-2"), expect=Told)
        await bus.publish(echo.subject, Ask(task_id="t-3"))
        await wait_until(lambda: len(seen) == 2)
    assert [set(h) for h in seen] == [{"Lmt"}, {"Lmt"}]
    assert spans.get_finished_spans() == ()


_ZERO_IDS = "00-" + "0" * 32 + "-" + "0" * 16 + "-01"  # well-formed, but invalid ids


@pytest.mark.parametrize("bad", ["not-a-trace", _ZERO_IDS, "x" * 5000])
async def test_a_malformed_traceparent_is_ignored_not_fatal(
    bus: Bus, spans: InMemorySpanExporter, bad: str
) -> None:
    body = Ask(task_id="t-bad")
    async with _echo(bus) as (echo, _seen):
        headers = bus.headers_for(body) | {tracing.TRACEPARENT: bad}
        reply = await bus.nc.request(echo.subject, encode(body), headers=headers, timeout=10)
        assert msgspec.msgpack.decode(reply.data, type=Told).task_id == "t-bad"
        assert (await echo.ask(Ask(task_id="t-next"), expect=Told)).task_id == "t-next"
    (served,) = [s for s in spans.get_finished_spans() if s.name == "process trace-ask"]
    assert served.parent is None  # nothing to continue: a trace of its own


async def test_with_opentelemetry_absent_nothing_is_traced_and_nothing_breaks(
    bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    tracing.reset()
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # every import of it fails
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")  # asked for, but not installed
    assert tracing.configure() is False
    assert tracing.headers() is None and tracing.ids() is None
    async with _echo(bus) as (echo, seen):
        with tracing.span("ignored") as current:
            current.set({"a": 1})
            told = await echo.ask(Ask(task_id="t-4"), expect=Told)
        assert told.task_id == "t-4"
        await wait_until(lambda: len(seen) == 1)
    assert [set(h) for h in seen] == [{"Lmt"}]
    assert not tracing.enabled()


def test_not_asked_for_means_not_imported() -> None:
    """Off costs no import: a process that does not ask never loads OpenTelemetry."""
    code = (
        "import sys; from lmteams import tracing; import lmteams.agents, lmteams.jobs; "
        "print(tracing.configure(), any(m.startswith('opentelemetry') for m in sys.modules))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "LMTEAMS_TRAC"))}
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


def test_the_sdk_disabled_variable_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    tracing.reset()
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert tracing.configure() is False


# --- one trace across processes --------------------------------------------------------------


class _Receiver(ThreadingHTTPServer):
    """An OTLP/HTTP trace receiver: every exported span, flattened, as the test reads it."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _OtlpHandler)
        self.spans: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1/traces"

    def snapshot(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.spans)


class _OtlpHandler(BaseHTTPRequestHandler):
    server: _Receiver

    def do_POST(self) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )

        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = ExportTraceServiceRequest.FromString(body)
        found = []
        for rs in request.resource_spans:
            pid = {a.key: _value(a.value) for a in rs.resource.attributes}.get("process.pid")
            for scope in rs.scope_spans:
                found += [_flat(s, pid) for s in scope.spans]
        with self.server.lock:
            self.server.spans.extend(found)
        reply = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *_args: Any) -> None:  # quiet
        pass


def _flat(s: Any, pid: int | None) -> dict[str, Any]:
    return {
        "trace": s.trace_id.hex(),
        "span": s.span_id.hex(),
        "parent": s.parent_span_id.hex(),
        "name": s.name,
        "kind": s.kind,
        "pid": pid,
        "attributes": {a.key: _value(a.value) for a in s.attributes},
    }


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    server = _Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
async def traced_team(
    nats_server: EmbeddedServer, receiver: _Receiver, tmp_path: Path
) -> AsyncIterator[dict[str, str]]:
    """Three agent processes exporting OTLP to ``receiver``; yields the env a client needs."""
    home = tmp_path / "home"
    (home / "logs").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env |= {
        "LMTEAMS_HOME": str(home),
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # export within a tenth of a second
    }
    procs: dict[str, subprocess.Popen[bytes]] = {}
    logs = []
    names = ("a1", "a2", "a3")
    for name in names:
        log = (home / "logs" / f"{name}.log").open("ab")
        logs.append(log)
        argv = [
            sys.executable, "-m", "lmteams", "agent", "start", "--team", "traced",
            "--name", name, "--nats", nats_server.url, "--backend", "sim",
            "--sim-device", "h100-cuda", "--json-logs",
        ]  # fmt: skip
        procs[name] = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log, env=env)

    def tail(name: str) -> str:
        return (home / "logs" / f"{name}.log").read_text(errors="replace")[-3000:]

    try:
        async with (
            open_bus(nats_server.url, name="watch") as bus,
            open_membership(bus, "traced") as view,
        ):

            def serving() -> bool:
                for name, proc in procs.items():
                    assert proc.poll() is None, f"agent {name} exited:\n{tail(name)}"
                return {m.name for m in view.members() if m.available} >= set(names)

            await wait_until(serving, timeout=90, interval=0.2)
        yield env | {"LMTEAMS_NATS_URL": nats_server.url}
    finally:
        stop_processes(procs.values(), timeout=30)
        for log in logs:
            log.close()


async def test_one_vote_task_is_one_trace_across_the_client_and_three_agents(
    traced_team: dict[str, str], receiver: _Receiver
) -> None:
    argv = [
        sys.executable, "-m", "lmteams", "task", "publish", "What is 6 times 7?",
        "--team", "traced", "--agents", "3", "--strategy", "vote", "--wait", "--json",
        "--id", "traced-task-1", "--timeout", "60",
    ]  # fmt: skip
    done = await anyio.run_process(argv, env=traced_team, check=False)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    assert json.loads(done.stdout)["ok"] is True

    def task_spans() -> list[dict[str, Any]]:
        found = receiver.snapshot()
        roots = [s for s in found if s["name"] == "lmteams.task run"]
        if not roots:
            return []
        return [s for s in found if s["trace"] == roots[0]["trace"]]

    def complete() -> bool:
        names = [s["name"] for s in task_spans()]
        return names.count("process prompt") == 3 and names.count("chat smollm2-135m") == 3

    try:
        await wait_until(complete, timeout=60, interval=0.1)
    except TimeoutError:
        seen = [(s["name"], s["pid"], s["trace"][:8]) for s in receiver.snapshot()]
        pytest.fail(f"the trace is incomplete; spans received: {seen}")
    everything = receiver.snapshot()
    trace = task_spans()
    trace_id = trace[0]["trace"]
    by_id = {s["span"]: s for s in trace}
    # the task's spans, whoever made them, are all in this trace
    assert all(
        s["trace"] == trace_id
        for s in everything
        if s["attributes"].get("lmteams.task") == "traced-task-1"
    )
    (root,) = [s for s in trace if not s["parent"]]
    assert root["name"] == "lmteams.task run"
    for s in trace:  # every other span's parent is in the same trace
        assert s is root or s["parent"] in by_id, s["name"]

    def parent(s: dict[str, Any]) -> dict[str, Any]:
        return by_id[s["parent"]]

    (sent,) = [s for s in trace if s["name"] == "send lmteams.task"]
    (taken,) = [s for s in trace if s["name"] == "process lmteams.task"]
    assert parent(sent) is root and parent(taken) is sent  # across the JetStream queue
    assert taken["attributes"]["lmteams.strategy"] == "vote"
    assert taken["attributes"]["lmteams.team"] == "traced"
    (coordinating,) = [s for s in trace if s["name"] == "coordinate vote"]
    assert parent(coordinating) is taken
    asks = [s for s in trace if s["name"].startswith("ask ")]
    assert {s["attributes"]["lmteams.peer"] for s in asks} == {"a1", "a2", "a3"}
    assert all(parent(s) is coordinating for s in asks)
    prompts = [s for s in trace if s["name"] == "process prompt"]
    assert all(parent(s) in asks for s in prompts)
    assert {s["attributes"]["lmteams.agent"] for s in prompts} == {"a1", "a2", "a3"}
    calls = [s for s in trace if s["name"] == "chat smollm2-135m"]
    for call in calls:  # each voter's model call, in the voter's process
        assert parent(call) in prompts and call["pid"] == parent(call)["pid"]
        attributes = call["attributes"]
        assert attributes["gen_ai.operation.name"] == "chat"
        assert attributes["gen_ai.request.model"] == "smollm2-135m"
        assert attributes["gen_ai.provider.name"] == "lmteams.sim"
        assert attributes["gen_ai.usage.input_tokens"] > 0
        assert attributes["gen_ai.usage.output_tokens"] > 0
    # four processes: the client and three agents, each with its own spans in the trace
    assert root["pid"] == sent["pid"]
    agent_pids = {s["pid"] for s in prompts}
    assert len(agent_pids) == 3 and root["pid"] not in agent_pids
    assert {s["pid"] for s in trace} == agent_pids | {root["pid"]}


@pytest.mark.parametrize("architecture", ["centralized", "decentralized"])
async def test_every_subtask_attempt_joins_the_jobs_trace(
    bus: Bus, spans: InMemorySpanExporter, architecture: str
) -> None:
    from lmteams.agents import WorkerAgent, WorkerConfig
    from lmteams.bus import Subjects, ensure_team_streams
    from lmteams.hardware import BackendConfig
    from lmteams.jobs import JobClient, JobStatus, job_service
    from lmteams.jobs._graph import Subtask, TaskGraph

    sim = WorkerConfig(
        backend=BackendConfig(kind="sim", sim_device="h100-cuda", time_scale=0.01),
        fetch_timeout_s=0.2,
        heartbeat_s=0.5,
    )
    graph = TaskGraph(
        name="chain",
        subtasks=(
            Subtask(id="a", title="first", work_tokens=10),
            Subtask(id="b", title="second", deps=("a",), work_tokens=10),
        ),
    )
    await ensure_team_streams(bus, Subjects("tjobs"))
    async with open_runtime(bus, "tjobs", worker_services=[job_service()]) as runtime:
        for i in range(2):
            await runtime.spawn(lambda: WorkerAgent(sim), actor_id=f"w{i}", roles=("worker",))
        result = await JobClient(bus, "tjobs").run_job(
            graph,
            timeout=60,
            architecture=architecture,  # type: ignore[arg-type]
            lease_s=3.0,
        )
    assert result.status is JobStatus.DONE, result.error
    finished = spans.get_finished_spans()
    (run,) = [s for s in finished if s.name == "lmteams.job run"]
    attempts = [s for s in finished if s.name == "attempt lmteams.subtask"]
    assert sorted(s.attributes["lmteams.subtask"] for s in attempts if s.attributes) == [0, 1]
    assert all(s.context.trace_id == run.context.trace_id for s in attempts)
    ids = {s.context.span_id for s in finished if s.context.trace_id == run.context.trace_id}
    calls = [s for s in finished if s.name.startswith("chat ")]
    in_attempts = {s.context.span_id for s in attempts}
    assert sum(1 for c in calls if c.parent and c.parent.span_id in in_attempts) >= 2
    assert all(s.parent is None or s.parent.span_id in ids for s in attempts)
