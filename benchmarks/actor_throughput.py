"""Actor request/reply (no LLM) against raw nats-py request/reply, across two processes.

A child process hosts both responders on one embedded nats-server: an lmteams actor (runtime,
bounded mailbox, handler dispatch, envelope, strict decoding) and a raw nats-py subscriber
that decodes and encodes the same MessagePack body. The parent asks each in turn, trials
interleaved, sequentially and with 50 requests in flight; medians of requests per second.

Baselines, both stock nats-py, as in bus_overhead.py: ``wire`` sends the identical wire
message (the lmteams envelope header and body); ``bare`` sends the body with no headers.
Target: actor >= 0.85 of the ``wire`` baseline in both modes.

``--tracing``: the same actor request/reply with OpenTelemetry installed and enabled (the SDK,
no exporter attached) in both processes, over tracing absent (OpenTelemetry not importable in
the responder, off in the caller), in the same run. ``tracing_*`` figures (target >= 0.95)
send requests outside any span, as every message of an agent that is not part of a trace
goes; ``tracing_in_span_*`` figures (informational) send each request inside a client span,
so it carries ``traceparent`` and is handled in a server span: the whole cost of a traced hop.

Run: .venv/bin/python benchmarks/actor_throughput.py [--quick] [--tracing]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

if "--otel-absent" in sys.argv:  # a responder for which OpenTelemetry is not installed
    sys.modules["opentelemetry"] = None  # type: ignore[assignment]

import anyio
import msgspec
import nats

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, figure, interleaved, quiet_logs, rate
from lmteams import tracing
from lmteams.agents import Actor, ActorRef, handler, open_runtime
from lmteams.bus import Subjects, encode, open_bus, run_server

TEAM = "bench"


class Query(msgspec.Struct, frozen=True, kw_only=True, tag="query"):
    task_id: str
    prompt: str
    n: int


class Reply(msgspec.Struct, frozen=True, kw_only=True, tag="reply"):
    task_id: str
    text: str
    n: int


QUERY = Query(task_id="t-0001", prompt="What is 17 + 25? Answer with a number." * 2, n=0)
QUERY_BYTES = encode(QUERY)
QUERY_HEADERS = {"Lmt": "1 query 4a1f3c2b9d0e00001 cli 4a1f3c2b9d0e00001 17"}
REPLY_HEADERS = {"Lmt": "1 reply 4a1f3c2b9d0e00002 srv 4a1f3c2b9d0e00001 18"}


class Responder(Actor):
    mailbox_size = 256

    @handler
    async def on_query(self, msg: Query) -> Reply:
        return Reply(task_id=msg.task_id, text="42", n=msg.n + 1)


async def serve(url: str) -> None:
    """The child process: an actor and two raw responders until stdin closes."""
    quiet_logs()
    raw = await nats.connect(url)
    decoder = msgspec.msgpack.Decoder(Query)

    async def bare(msg: nats.aio.msg.Msg) -> None:
        q = decoder.decode(msg.data)
        await raw.publish(msg.reply, encode(Reply(task_id=q.task_id, text="42", n=q.n + 1)))

    async def wire(msg: nats.aio.msg.Msg) -> None:
        q = decoder.decode(msg.data)
        body = encode(Reply(task_id=q.task_id, text="42", n=q.n + 1))
        await raw.publish(msg.reply, body, headers=REPLY_HEADERS)

    await raw.subscribe("bench.bare", cb=bare)
    await raw.subscribe("bench.wire", cb=wire)
    await raw.flush()
    async with open_bus(url, name="srv") as bus, open_runtime(bus, TEAM) as runtime:
        await runtime.spawn(Responder, actor_id="responder")
        print("ready", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.read)  # until the parent closes our stdin
    await raw.close()


async def main(quick: bool) -> None:
    quiet_logs()
    seq, conc, trials = (300, 3000, 3) if quick else (1500, 15000, 7)
    async with run_server() as server:
        child = subprocess.Popen(
            [sys.executable, __file__, "--serve", server.url],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "ready"
        try:
            raw = await nats.connect(server.url)
            async with open_bus(server.url, name="cli") as bus, open_runtime(bus, TEAM) as rt:
                ref = rt.ref("responder")

                async def actor_one() -> None:
                    await ref.ask(QUERY, expect=Reply, timeout=10)

                async def wire_one() -> None:
                    r = await raw.request(
                        "bench.wire", QUERY_BYTES, timeout=10, headers=QUERY_HEADERS
                    )
                    msgspec.msgpack.decode(r.data, type=Reply)

                async def bare_one() -> None:
                    r = await raw.request("bench.bare", QUERY_BYTES, timeout=10)
                    msgspec.msgpack.decode(r.data, type=Reply)

                for warm in (actor_one, wire_one, bare_one):
                    await rate(200, 10, warm)
                figures = []
                for mode, count, k in (("sequential", seq, 1), ("concurrent", conc, 50)):
                    bases = (("wire", wire_one, 0.85), ("bare", bare_one, None))
                    for base, base_one, target in bases:
                        ours, theirs = await interleaved(
                            trials,
                            lambda c=count, k=k: rate(c, k, actor_one),
                            lambda c=count, k=k, f=base_one: rate(c, k, f),
                        )
                        figures.append(
                            figure(f"actor_request_reply_{mode}_vs_{base}", ours, theirs, target,
                                   unit="requests/s", concurrency=k, trials=trials,
                                   baseline_kind=base, processes=2)
                        )  # fmt: skip
            await raw.close()
        finally:
            child.stdin.close()
            child.wait(timeout=30)
            child.stdout.close()
    emit(figures, benchmark="actor_throughput", team=Subjects(TEAM).team)


async def serve_actor(url: str, team: str) -> None:
    """A child for ``--tracing``: the actor alone, traced as its environment says."""
    quiet_logs()
    async with open_bus(url, name="srv") as bus, open_runtime(bus, team) as runtime:
        await runtime.spawn(Responder, actor_id="responder")
        print(f"ready {tracing.enabled()}", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.read)


def responder(url: str, team: str, *, absent: bool) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "LMTEAMS_TRAC"))}
    if not absent:
        env[tracing.ENV_TRACING] = "1"  # the SDK's provider, no exporter attached
    argv = [sys.executable, __file__, "--serve", url, "--team", team]
    child = subprocess.Popen(
        argv + (["--otel-absent"] if absent else []),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert child.stdout is not None
    assert child.stdout.readline().strip() == f"ready {not absent}", "tracing state of the child"
    return child


async def main_tracing(quick: bool) -> None:
    """Tracing enabled (both processes) over tracing absent, trials interleaved."""
    from opentelemetry.sdk.trace import TracerProvider

    quiet_logs()
    seq, conc, trials = (300, 3000, 3) if quick else (1500, 15000, 7)
    provider = TracerProvider()  # no span processor: spans are made, and exported nowhere
    async with run_server() as server:
        children = [responder(server.url, team, absent=team == TEAM) for team in (TEAM, "tr")]
        try:
            async with open_bus(server.url, name="cli") as bus:
                plain = ActorRef(bus, Subjects(TEAM), "responder")
                traced = ActorRef(bus, Subjects("tr"), "responder")

                async def absent_one() -> None:
                    await plain.ask(QUERY, expect=Reply, timeout=10)

                async def enabled_one() -> None:
                    await traced.ask(QUERY, expect=Reply, timeout=10)

                async def in_span_one() -> None:
                    with tracing.span("bench.ask", kind="client"):
                        await traced.ask(QUERY, expect=Reply, timeout=10)

                async def run_with(on: bool, count: int, k: int, one: Any) -> float:
                    if on:
                        tracing.use(provider)
                    try:
                        return await rate(count, k, one)
                    finally:
                        tracing.reset()

                for warm, on in ((absent_one, False), (enabled_one, True), (in_span_one, True)):
                    await run_with(on, 200, 10, warm)
                figures = []
                otel = importlib.metadata.version("opentelemetry-sdk")
                subjects = (("tracing", enabled_one, 0.95), ("tracing_in_span", in_span_one, None))
                for mode, count, k in (("sequential", seq, 1), ("concurrent", conc, 50)):
                    for label, one, target in subjects:
                        ours, theirs = await interleaved(
                            trials,
                            lambda c=count, k=k, f=one: run_with(True, c, k, f),
                            lambda c=count, k=k: run_with(False, c, k, absent_one),
                        )
                        figures.append(
                            figure(f"actor_request_reply_{mode}_{label}", ours, theirs, target,
                                   unit="requests/s", concurrency=k, trials=trials,
                                   baseline_kind="tracing_absent", processes=3,
                                   opentelemetry_sdk=otel, exporter="none")
                        )  # fmt: skip
        finally:
            for child in children:
                assert child.stdin is not None and child.stdout is not None
                child.stdin.close()
                child.wait(timeout=30)
                child.stdout.close()
    emit(figures, benchmark="actor_throughput", mode="tracing", team=Subjects(TEAM).team)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests and trials")
    parser.add_argument(
        "--tracing", action="store_true", help="OpenTelemetry enabled over absent (ratio)"
    )
    parser.add_argument("--serve", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--team", help=argparse.SUPPRESS)
    parser.add_argument("--otel-absent", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve and args.team:
        anyio.run(serve_actor, args.serve, args.team)
    elif args.serve:
        anyio.run(serve, args.serve)
    else:
        anyio.run(main_tracing if args.tracing else main, args.quick)
