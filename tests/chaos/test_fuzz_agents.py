"""Fuzzing live agent processes: hostile input on every subject an outsider can reach.

Two real ``lmteams agent start --backend sim`` processes on a real nats-server get random
bytes, random JSON and MessagePack values, valid-shaped messages with hostile ids and values,
deep nesting and near-max-payload bodies, under random ``Lmt`` and ``Content-Type`` headers,
on the tasks subject, their inboxes, the worker role, their control subjects, the gossip
seed and member subjects (SWIM updates carrying hostile membership facts) and the vote
subjects, from a plain nats-py client. Afterwards each process is still
the one that was started (never exited, so never restarted), logged no crash or restart, and
both answer a normal task. The examples are drawn up front, derandomized (CI sees the same).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import strategies as st
from test_hostile import DEEP_MARK, _encode, hostile_payloads, json_values

from lmteams.agents import Ping, Pong, Stop, TeamClient
from lmteams.bus import Bus, Codec, EmbeddedServer, Subjects, open_bus
from lmteams.errors import DecodeError
from lmteams.gossip import observe_members, open_member
from lmteams.testing import draw_examples, stop_processes, wait_until

TEAM = "fuzz"
S = Subjects(TEAM)
AGENTS = ("a1", "a2")
HOSTILE_IDS = [
    "m-dot.x", "../../etc/passwd", "$JS.API.STREAM.DELETE.x", "fz-ü", "", "*", ">", "a b",
    "x" * 10_240, "_INBOX.x", "a1", "\x00", "lmt.fuzz.results.t1",
]  # fmt: skip
CRASH_EVENTS = ("actor.crashed", "actor.restarting", "actor.gave_up", "gossip.fault", "Traceback")
_STOP: Codec[Stop] = Codec(Stop)

ids = st.sampled_from(HOSTILE_IDS) | st.text(max_size=40)
numbers = st.integers(-(2**63), 2**64 - 1) | st.floats() | st.sampled_from([0, -1, 2**53])


def _shaped(tag: str, **fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({"type": st.just(tag)}, optional=fields)


# a member's facts as gossip carries them (its meta map), with hostile values
facts = st.fixed_dictionaries(
    {},
    optional={
        key: st.text() | numbers | json_values
        for key in (
            "device",
            "model",
            "backend",
            "tokens_per_s",
            "prompt_tokens_per_s",
            "load",
            "served",
            "state",
            "roles",
            "public_key",
            "host",
            "pid",
        )
    },
)

# valid-shaped messages of every type an outsider can send, with hostile values
shaped = st.one_of(
    _shaped("task", id=ids, prompt=st.text() | st.just(DEEP_MARK), max_tokens=numbers,
            temperature=numbers, agents=numbers, strategy=st.text(max_size=10), rounds=numbers),
    _shaped("prompt", task_id=ids, prompt=st.text(), max_tokens=st.integers(-5, 64),
            temperature=numbers, seed=numbers, round=numbers),
    _shaped("ping"),
    _shaped("cancel", task_id=ids),
    _shaped("answer", task_id=ids, agent=ids, text=st.text(), signature=st.text(),
            public_key=st.text(), round=numbers),
    _shaped("swim_ping", sender=ids, incarnation=numbers,
            updates=st.lists(st.fixed_dictionaries(
                {"member": ids, "state": st.text(max_size=8) | st.just("suspect"),
                 "incarnation": numbers}, optional={"meta": json_values | facts}), max_size=3)),
    _shaped("swim_ping_req", sender=ids, incarnation=numbers, target=ids),
    _shaped("swim_sync", sender=ids, incarnation=numbers, observer=st.booleans(),
            members=st.lists(st.fixed_dictionaries({"member": ids, "state": st.just("dead"),
                                                    "incarnation": numbers}), max_size=3)),
)  # fmt: skip

# header values a NATS client can send: printable ASCII (a server drops a client that sends
# a malformed header block, which tests the client, not the agents)
printable = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60)
lmt_headers = st.one_of(
    printable,
    st.builds(
        lambda v, t, c: f"{v} {t} 01 fuzz 01 {c}",
        st.sampled_from(["1", "0", "2", "7", "x", "-1"]),
        st.sampled_from(["task", "prompt", "swim_ping", "ping", ""]),
        numbers,
    ),
)
content_types = st.sampled_from(["application/json", "application/msgpack", "text/plain", ""])


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[str, bytes, dict[str, str]]:
    """One hostile message: a subject an outsider can reach, a body and headers."""
    subject = draw(
        st.sampled_from(
            [S.tasks, S.role("worker"), S.gossip_seed, S.vote("t1")]
            + [f(a) for a in AGENTS for f in (S.agent, S.control, S.gossip_member)]
        )
        | ids.filter(lambda i: len(i) < 200 and i.isascii() and i.replace("-", "_").isidentifier())
        .map(lambda i: f"{S.root}.vote.{i}")
    )  # fmt: skip
    as_json = draw(st.booleans())
    body = draw(shaped.map(lambda m: _encode(m, as_json)) | hostile_payloads().map(lambda p: p[0]))
    headers: dict[str, str] = {}
    if draw(st.booleans()):
        headers["Lmt"] = draw(lmt_headers)
    if as_json or draw(st.booleans()):
        headers["Content-Type"] = "application/json" if as_json else draw(content_types)
    if subject == S.tasks and draw(st.booleans()):
        headers["Nats-Msg-Id"] = draw(printable.filter(lambda v: v.strip() != ""))
    return subject, body, headers


def is_stop(body: bytes, headers: dict[str, str]) -> bool:
    """A valid ``stop`` is a legitimate command (the control subtree is for operators)."""
    for as_json in (True, False):
        try:
            _STOP.decode(body, json=as_json)
        except DecodeError:
            continue
        return True
    return False


class Agents(msgspec.Struct, kw_only=True):
    procs: dict[str, subprocess.Popen[bytes]]
    logs: dict[str, Path]
    pids: dict[str, int]


@pytest.fixture
async def agents(nats_server: EmbeddedServer, tmp_path: Path) -> AsyncIterator[Agents]:
    procs: dict[str, subprocess.Popen[bytes]] = {}
    logs = {name: tmp_path / f"{name}.log" for name in AGENTS}
    try:
        for name in AGENTS:
            argv = [sys.executable, "-m", "lmteams", "agent", "start", "--team", TEAM]
            argv += ["--name", name, "--backend", "sim", "--nats", nats_server.url]
            argv += ["--json-logs", "--ack-wait", "3", "--drain-timeout", "5"]
            with logs[name].open("wb") as log:
                procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        async with open_bus(nats_server.url, name="fuzz-probe") as bus:
            for name in AGENTS:
                await wait_until(lambda n=name: _answers(bus, n), timeout=60)
        yield Agents(procs=procs, logs=logs, pids={n: p.pid for n, p in procs.items()})
    finally:
        stop_processes(procs.values())


async def _answers(bus: Bus, name: str) -> bool:
    try:
        pong = await bus.request(S.agent(name), Ping(), expect=Pong, timeout=1)
    except Exception:  # not up yet: no responders, timeout
        return False
    return pong.agent == name


async def assert_team_unharmed(bus: Bus, agents: Agents) -> None:
    """Every process is the one started and still runs, logged no crash, and serves."""
    for name, proc in agents.procs.items():
        assert proc.poll() is None, f"{name} exited with {proc.returncode}"
        assert proc.pid == agents.pids[name]
    for name in AGENTS:
        # it may still be working off the hostile prompts in its bounded mailbox: wait for it
        await wait_until(lambda n=name: _answers(bus, n), timeout=90)
    client = TeamClient(bus, TEAM)
    for _ in AGENTS:
        result = await client.submit("What is 2 + 2?", max_tokens=4, timeout=60)
        assert result.ok, result.error
    for name, path in agents.logs.items():
        text = path.read_text(errors="replace")
        found = [event for event in CRASH_EVENTS if event in text]
        assert not found, f"{name} logged {found}"


async def publish_all(bus: Bus, messages: list[tuple[str, bytes, dict[str, str]]]) -> int:
    """Publish what the server accepts; half of the messages ask for a reply."""
    sent = 0
    inbox = bus.nc.new_inbox()
    await bus.nc.subscribe(f"{inbox}.>", cb=_ignore)
    for i, (subject, body, headers) in enumerate(messages):
        if is_stop(body, headers) or len(body) > bus.nc.max_payload - 4096:
            continue
        reply = f"{inbox}.{i}" if i % 2 else ""
        await bus.nc.publish(subject, body, reply=reply, headers=headers or None)
        sent += 1
    await bus.nc.flush()
    return sent


async def _ignore(_msg: Any) -> None:
    return None


HOSTILE = draw_examples(deliveries(), 400)


async def test_hostile_input_on_every_subject_kills_no_agent(
    nats_server: EmbeddedServer, agents: Agents
) -> None:
    async with open_bus(nats_server.url, name="fuzzer") as bus:
        big = b'{"type":"task","id":"big","prompt":"' + b"x" * 900_000 + b'"}'
        huge = [(s, big, {"Content-Type": "application/json"}) for s in (S.tasks, S.agent("a1"))]
        sent = await publish_all(bus, HOSTILE + huge)
        assert sent > 300
        await assert_team_unharmed(bus, agents)


async def test_forged_gossip_names_stop_no_agent(
    nats_server: EmbeddedServer, agents: Agents
) -> None:
    """The reviewer's case: pings whose updates name bad members, to every agent's SWIM inbox."""
    async with open_bus(nats_server.url, name="forger") as bus:
        for bad in ["bad.member", "*", ">", "", "fz-ü", "x" * 10_240]:
            update = {"member": bad, "state": "alive", "incarnation": 1}
            ping = {"type": "swim_ping", "sender": "forger", "incarnation": 0, "updates": [update]}
            sync = {"type": "swim_sync", "sender": "forger", "incarnation": 0, "members": [update]}
            for name in AGENTS:
                for body in (ping, sync):
                    reply = await bus.nc.request(
                        S.gossip_member(name),
                        msgspec.msgpack.encode(body),
                        headers={"Lmt": "1 swim_ping 01 forger 01 1"},
                        timeout=10,
                    )
                    error = msgspec.msgpack.decode(reply.data)
                    assert error["type"] == "error"
                    assert error["field"].endswith(".member")  # refused for the name
        # each agent probes every member of its table within a round of N periods: once the
        # witness has been probed twice by both, a forged member would have been probed too
        pings: dict[str, int] = {}

        async def on_probe(msg: Any) -> None:
            sender = msgspec.msgpack.decode(msg.data).get("sender", "")
            pings[sender] = pings.get(sender, 0) + 1

        await bus.nc.subscribe(S.gossip_member("witness"), cb=on_probe)
        async with open_member(bus, TEAM, "witness"):
            await wait_until(lambda: min(pings.get(a, 0) for a in AGENTS) >= 6, timeout=60)
        # a full anti-entropy sample of both members' tables: the forged names are in neither
        members = {u.member for u in await observe_members(bus, TEAM, samples=4)}
        assert members <= {*AGENTS, "witness"}
        assert set(AGENTS) <= members
        await assert_team_unharmed(bus, agents)
