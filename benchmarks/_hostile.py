"""Hostile input for benchmarks: what an outsider can publish on a team's subjects.

Random bytes, malformed JSON, deep nesting, big bodies, and well-formed messages with hostile
ids and values, under wrong ``Lmt`` headers and content types, on the tasks subject, agent
inboxes, roles, control, gossip (SWIM and announcements) and vote subjects. Deterministic
for a seed. Never a valid ``stop`` (a legitimate operator command) and never an id of the
``c<digits>`` form the chaos run's real tasks use (its dedupe must not be poisoned).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import msgspec

from lmteams.bus import KEYS_BUCKET, Subjects

__all__ = ("hostile_inputs",)

BAD_IDS = [
    "hx.dot", "../../hx/passwd", "$JS.API.STREAM.DELETE.hx", "hx-ü", "", "*", ">", "hx id",
    "x" * 10_240, "_INBOX.hx",
]  # fmt: skip
BAD_NUMBERS: list[Any] = [-1, 0, 2**63 - 1, -(2**63), 1e308, -1e308, 2**53 + 1]
LMT = [
    "2 task 01 hx 01 1", "0 task 01 hx 01 1", "7 swim_ping 01 hx 01 1", "garbage", "1 task",
    "1 task 01 hx 01 99999999999999999999999", "",
]  # fmt: skip
DEEP = 3000


def _shaped(rng: random.Random, agents: list[str]) -> dict[str, Any]:
    bad, num = rng.choice(BAD_IDS), rng.choice(BAD_NUMBERS)
    update = {"member": bad, "state": rng.choice(["alive", "suspect", "dead", "zombie"]),
              "incarnation": num}  # fmt: skip
    return rng.choice(
        [
            {"type": "task", "id": bad, "prompt": "hostile"},
            {"type": "task", "id": f"hx{rng.randrange(10**6)}", "prompt": "p", "max_tokens": num},
            {"id": f"hx{rng.randrange(10**6)}", "prompt": "no type tag"},
            {"type": "prompt", "task_id": bad, "prompt": "p", "max_tokens": rng.randint(-3, 16)},
            {"type": "ping"},
            {"type": "cancel", "task_id": bad},
            {"type": "agent_info", "agent": bad, "team": "x", "tokens_per_s": num},
            {"type": "heartbeat", "agent": bad, "seq": num, "in_flight": num},
            {"type": "leave", "agent": bad},
            {"type": "swim_ping", "sender": "hx", "incarnation": 0, "updates": [update]},
            {"type": "swim_ping_req", "sender": "hx", "incarnation": 0, "target": bad},
            {"type": "swim_sync", "sender": bad, "incarnation": 0, "members": [update]},
            {"type": "answer", "task_id": bad, "agent": rng.choice(agents or ["hx"]),
             "text": "forged", "signature": "!!", "public_key": "U" * 56, "round": 0},
        ]
    )  # fmt: skip


def _body(rng: random.Random, agents: list[str], as_json: bool) -> bytes:
    kind = rng.randrange(6)
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 256))
    if kind == 1:
        return b"[" * DEEP + b"]" * DEEP if as_json else b"\x91" * DEEP + b"\x90"
    if kind == 2:
        return b'{"type": "task", "id": "hx-big", "prompt": "' + b"x" * 200_000 + b'"}'
    if kind == 3:
        return b'{"type": "task", "id": ' if as_json else b"\x82\xa4type"  # truncated
    value = _shaped(rng, agents)
    try:
        return msgspec.json.encode(value) if as_json else msgspec.msgpack.encode(value)
    except (OverflowError, TypeError):
        return b"\xc1"


def _subjects(subjects: Subjects, agents: list[str]) -> list[str]:
    out = [subjects.tasks, subjects.role("worker"), subjects.gossip_seed, subjects.vote("hx1")]
    keys = subjects.kv_bucket(KEYS_BUCKET)  # bindings are write-once: every try is refused
    for agent in agents:
        out += [subjects.agent(agent), subjects.control(agent), subjects.gossip_member(agent)]
        out.append(f"$KV.{keys}.{agent}")
    return out


def hostile_inputs(
    subjects: Subjects, agents: list[str], *, seed: int
) -> Iterator[tuple[str, bytes, dict[str, str]]]:
    """(subject, body, headers) without end; the same sequence for the same seed."""
    rng = random.Random(seed)
    targets = _subjects(subjects, agents)
    while True:
        as_json = rng.random() < 0.5
        body = _body(rng, agents, as_json)
        if b'"stop"' in body or b"\xa4stop" in body:
            continue
        headers: dict[str, str] = {}
        if rng.random() < 0.6:
            headers["Lmt"] = rng.choice(LMT) or "1 task 01 hx 01 1"
        if as_json:
            headers["Content-Type"] = rng.choice(["application/json", "text/plain"])
        yield rng.choice(targets), body, headers
