"""Request/reply through ``lmteams.bus`` against raw nats-py, same server, same payload.

Both sides run on one embedded nats-server in one process: a responder connection and a
requester connection for each. "sequential" is one request at a time (latency-bound);
"concurrent" keeps 100 requests in flight (throughput-bound).

Two baselines, both stock nats-py:
- ``wire``: raw nats-py sending the identical wire message, the lmteams envelope header and
  the same MessagePack body, decoding the body on each side. This is the headline ratio
  (target >= 0.90): it measures what lmteams adds over nats-py for the same bytes.
- ``bare``: raw nats-py with the body and no headers at all. Its ratio shows what carrying
  an envelope in NATS headers costs: stock nats-py encodes and parses headers in Python, and
  under CPU-bound concurrency that alone is ~15% of a round trip on this machine.

Run: .venv/bin/python benchmarks/bus_overhead.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import anyio
import msgspec
import nats

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, figure, interleaved, quiet_logs, rate
from lmteams.bus import Codec, encode, open_bus, run_server


class Query(msgspec.Struct, frozen=True, kw_only=True, tag="query"):
    task_id: str
    prompt: str
    n: int


class Answer(msgspec.Struct, frozen=True, kw_only=True, tag="answer"):
    task_id: str
    text: str
    n: int


QUERY = Query(task_id="t-0001", prompt="What is 17 + 25? Answer with a number." * 2, n=0)
ANSWER = Answer(task_id="t-0001", text="42", n=1)
QUERY_BYTES = encode(QUERY)
ANSWER_BYTES = encode(ANSWER)
# The envelope lmteams puts on the wire, sent verbatim by the "wire" baseline.
QUERY_HEADERS = {"Lmt": "1 query 4a1f3c2b9d0e00001 cli 4a1f3c2b9d0e00001 17"}
ANSWER_HEADERS = {"Lmt": "1 answer 4a1f3c2b9d0e00002 srv 4a1f3c2b9d0e00001 18"}


async def main(quick: bool) -> None:
    quiet_logs()
    seq_count, conc_count, trials = (500, 5000, 3) if quick else (2000, 20000, 7)
    async with run_server() as server:
        # raw nats-py pair
        raw_srv = await nats.connect(server.url)
        raw_cli = await nats.connect(server.url)

        async def raw_handler(msg: nats.aio.msg.Msg) -> None:
            query = msgspec.msgpack.decode(msg.data, type=Query)
            await msg.respond(encode(Answer(task_id=query.task_id, text="42", n=query.n + 1)))

        async def wire_handler(msg: nats.aio.msg.Msg) -> None:
            query = msgspec.msgpack.decode(msg.data, type=Query)
            body = encode(Answer(task_id=query.task_id, text="42", n=query.n + 1))
            await raw_srv.publish(msg.reply, body, headers=ANSWER_HEADERS)

        await raw_srv.subscribe("bench.raw", cb=raw_handler)
        await raw_srv.subscribe("bench.wire", cb=wire_handler)
        await raw_srv.flush()

        async def raw_one() -> None:
            reply = await raw_cli.request("bench.raw", QUERY_BYTES, timeout=10)
            msgspec.msgpack.decode(reply.data, type=Answer)

        async def wire_one() -> None:
            reply = await raw_cli.request(
                "bench.wire", QUERY_BYTES, timeout=10, headers=QUERY_HEADERS
            )
            msgspec.msgpack.decode(reply.data, type=Answer)

        async with open_bus(server.url, name="srv") as srv, open_bus(server.url, name="cli") as cli:

            async def lmt_handler(inc: object) -> None:
                query = inc.body  # type: ignore[attr-defined]
                await inc.respond(Answer(task_id=query.task_id, text="42", n=query.n + 1))  # type: ignore[attr-defined]

            await srv.subscribe("bench.lmt", lmt_handler, codec=Codec(Query))

            async def lmt_one() -> None:
                await cli.request("bench.lmt", QUERY, expect=Answer, timeout=10)

            for warm in (raw_one, wire_one, lmt_one):
                await rate(200, 10, warm)
            figures = []
            for mode, count, conc in (
                ("sequential", seq_count, 1),
                ("concurrent", conc_count, 100),
            ):
                for base_name, base_one, target in (
                    ("wire", wire_one, 0.90),
                    ("bare", raw_one, None),
                ):
                    ours, theirs = await interleaved(
                        trials,
                        lambda c=count, k=conc: rate(c, k, lmt_one),
                        lambda c=count, k=conc, f=base_one: rate(c, k, f),
                    )
                    figures.append(
                        figure(
                            f"bus_request_reply_{mode}_vs_{base_name}",
                            ours,
                            theirs,
                            target,
                            unit="requests/s",
                            concurrency=conc,
                            trials=trials,
                            baseline_kind=base_name,
                        )
                    )
        await raw_srv.close()
        await raw_cli.close()
    emit(figures, benchmark="bus_overhead", payload_bytes=len(QUERY_BYTES))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests and trials")
    anyio.run(main, parser.parse_args().quick)
