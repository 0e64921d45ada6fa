"""Forged gossip: anyone on the bus can publish on a member's SWIM inbox or the seed group.

A ping whose piggybacked updates name a member that is not one subject token (``bad.member``)
once entered the table, and the next probe of it raised out of the member's protocol loop and
ended the process. Now such a message is refused when decoded: the sender of a request gets an
error naming the field, a dead letter keeps it, the member counts it, and the forged name never
reaches the table, while the member keeps probing and answering.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from lmteams.bus import Bus, Codec, EmbeddedServer, ErrorReply, RawMsg, Subjects
from lmteams.gossip import MemberState, SwimConfig, SwimMember, open_member
from lmteams.testing import stop_processes, wait_until

TEAM = "forged"
S = Subjects(TEAM)
CONFIG = SwimConfig(period_s=0.1, suspicion_mult=3.0)
BAD_NAMES = ["bad.member", "*", ">", "", "fz-ü", "x" * 10_240, "a b", "$JS.API.x"]
SCRIPT = Path(__file__).with_name("member_proc.py")
HEADERS = {"Lmt": "1 swim_ping 01 forger 01 1"}


def forged_messages(target: str, bad: str) -> list[dict[str, Any]]:
    """Every shape of SWIM message, each naming ``bad`` where a member name goes."""
    update = {"member": bad, "state": "alive", "incarnation": 1}
    messages = [
        {"type": "swim_ping", "sender": "forger", "incarnation": 0, "updates": [update]},
        {"type": "swim_ping_req", "sender": "forger", "incarnation": 0, "target": bad},
        {"type": "swim_ping_req", "sender": "forger", "incarnation": 0, "target": target,
         "updates": [dict(update, state="suspect")]},
        {"type": "swim_sync", "sender": "forger", "incarnation": 0, "members": [update]},
    ]  # fmt: skip
    if bad:  # an empty sender is an observer's (``lmteams status``), and allowed
        messages.append({"type": "swim_ping", "sender": bad, "incarnation": 0})
        messages.append({"type": "swim_sync", "sender": bad, "incarnation": 0})
    return messages


async def forge(bus: Bus, subject: str, body: dict[str, Any], *, json: bool) -> ErrorReply:
    """Send one forged request as a plain client would; return the error it is answered with."""
    data = msgspec.json.encode(body) if json else msgspec.msgpack.encode(body)
    headers = {"Content-Type": "application/json"} if json else HEADERS
    reply = await bus.nc.request(subject, data, headers=headers, timeout=5)
    answer = Codec(ErrorReply).decode(reply.data, json=json)
    assert answer.kind == "decode"
    assert answer.field.startswith("$.")  # names where the bad value sits
    return answer


async def periods_pass(member: SwimMember, count: int) -> None:
    """Wait until ``member`` has run ``count`` more protocol periods (each probes a peer)."""
    target = member.statistics().periods + count
    await wait_until(lambda: member.statistics().periods >= target, timeout=30)


async def test_forged_names_never_enter_the_table(bus: Bus) -> None:
    dead: list[RawMsg] = []

    async def on_dead(msg: RawMsg) -> None:
        dead.append(msg)

    await bus.nc.subscribe(S.dead("gossip"), cb=on_dead)
    async with (
        open_member(bus, TEAM, "m1", config=CONFIG) as m1,
        open_member(bus, TEAM, "m2", config=CONFIG) as m2,
    ):
        await wait_until(lambda: "m2" in m1.alive() and "m1" in m2.alive())
        sent = 0
        for bad in BAD_NAMES:
            for body in forged_messages("m2", bad):
                for subject in (m1.inbox, S.gossip_seed):
                    if subject == S.gossip_seed and body["type"] != "swim_sync":
                        continue  # the seed group takes only syncs: others are refused as tags
                    await forge(bus, subject, body, json=sent % 2 == 0)
                    sent += 1
        # long enough for a probe of every name in the table, twice over
        await periods_pass(m1, 4 * len(m1.members()))
        await periods_pass(m2, 4 * len(m2.members()))
        for member in (m1, m2):
            assert [u.member for u in member.members()] == ["m1", "m2"]
            assert member.statistics().faults == 0
        assert m1.statistics().refused + m2.statistics().refused == sent
        assert m1.alive() == m2.alive() == ["m1", "m2"]
        await wait_until(lambda: len(dead) == sent)
        assert all(msg.headers and "Lmt-Dead-Reason" in msg.headers for msg in dead)


async def test_an_incarnation_that_would_overflow_is_refused(bus: Bus) -> None:
    async with open_member(bus, TEAM, "m1", config=CONFIG) as m1:
        accusation = {"member": "m1", "state": "suspect", "incarnation": 2**64 - 1}
        body = {"type": "swim_ping", "sender": "forger", "incarnation": 0, "updates": [accusation]}
        answer = await forge(bus, m1.inbox, body, json=False)
        assert answer.field == "$.updates[0].incarnation"
        assert m1.incarnation == 0
        assert m1.statistics().refused == 1


async def test_valid_gossip_from_a_stranger_still_counts(bus: Bus) -> None:
    """The checks refuse bad names, not strangers: a well-formed ping is answered with an ack."""
    async with open_member(bus, TEAM, "m1", config=CONFIG) as m1:
        ping = {"type": "swim_ping", "sender": "newcomer", "incarnation": 3}
        reply = await bus.nc.request(m1.inbox, msgspec.msgpack.encode(ping), headers=HEADERS)
        assert msgspec.msgpack.decode(reply.data)["type"] == "swim_ack"
        newcomer = m1.member("newcomer")
        assert newcomer is not None and newcomer.state is MemberState.ALIVE


@pytest.fixture
def member_procs(nats_server: EmbeddedServer) -> Iterator[list[subprocess.Popen[str]]]:
    procs = [
        subprocess.Popen(
            [sys.executable, str(SCRIPT), nats_server.url, TEAM, name, "0.1", "3"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for name in ("p1", "p2")
    ]
    try:
        yield procs
    finally:
        stop_processes(procs, timeout=20)
        for proc in procs:
            if proc.stdout is not None:
                proc.stdout.close()


async def test_forged_gossip_does_not_stop_member_processes(
    bus: Bus, member_procs: list[subprocess.Popen[str]]
) -> None:
    """The reviewer's case, on processes: every member of the team got the forged ping."""
    for proc in member_procs:
        assert proc.stdout is not None
        line = await anyio.to_thread.run_sync(proc.stdout.readline)
        assert line.strip() == "ready"
    pids = [proc.pid for proc in member_procs]
    pinged: dict[str, int] = {}

    async def on_witness(msg: RawMsg) -> None:  # a plain copy: the witness itself answers
        body = msgspec.msgpack.decode(msg.data)
        if body.get("type") == "swim_ping":
            pinged[body["sender"]] = pinged.get(body["sender"], 0) + 1

    async with open_member(bus, TEAM, "witness", config=CONFIG) as witness:
        await wait_until(lambda: {"p1", "p2"} <= set(witness.alive()), timeout=30)
        for name in ("p1", "p2"):
            for bad in BAD_NAMES:
                for body in forged_messages(name, bad):
                    await forge(bus, S.gossip_member(name), body, json=False)
        # the witness's inbox sees each process's probes: two full rounds after the forgery
        # means each process would have probed a forged member, were it in its table
        await bus.nc.subscribe(witness.inbox, cb=on_witness)
        await wait_until(lambda: min(pinged.get("p1", 0), pinged.get("p2", 0)) >= 6, timeout=60)
        assert [proc.poll() for proc in member_procs] == [None, None]
        assert [proc.pid for proc in member_procs] == pids
        assert {u.member for u in witness.members()} == {"p1", "p2", "witness"}
        assert set(witness.alive()) == {"p1", "p2", "witness"}
