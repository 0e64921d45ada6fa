from __future__ import annotations

import anyio
import msgspec
import pytest

from lmteams.bus import Bus, Subjects, ensure_team_streams, open_kv, publish_durable
from lmteams.errors import RevisionMismatchError
from lmteams.testing import wait_until


class Job(msgspec.Struct, frozen=True, kw_only=True, tag="job"):
    prompt: str


async def test_tasks_stream_dedupes_by_message_id(bus: Bus) -> None:
    s = Subjects("js1")
    await ensure_team_streams(bus, s)
    await ensure_team_streams(bus, s)  # idempotent
    first = await publish_durable(bus, s.tasks, Job(prompt="a"), msg_id="task-1")
    again = await publish_durable(bus, s.tasks, Job(prompt="a"), msg_id="task-1")
    other = await publish_durable(bus, s.tasks, Job(prompt="b"), msg_id="task-2")
    assert not first.duplicate and again.duplicate and again.seq == first.seq
    assert other.seq == first.seq + 1
    info = await bus.js.stream_info(s.tasks_stream)
    assert info.state.messages == 2


async def test_results_stream_keeps_the_first_result_per_task(bus: Bus) -> None:
    s = Subjects("js2")
    await ensure_team_streams(bus, s)
    await publish_durable(bus, s.results("t1"), Job(prompt="0"), msg_id="r-0")
    for i in (1, 2):  # later results for the same task, any msg id: refused by the stream
        with pytest.raises(RevisionMismatchError, match="written once"):
            await publish_durable(bus, s.results("t1"), Job(prompt=str(i)), msg_id=f"r-{i}")
    # a retry of the stored publish inside the dedupe window is acked as a duplicate
    assert (await publish_durable(bus, s.results("t1"), Job(prompt="0"), msg_id="r-0")).duplicate
    last = await bus.js.get_last_msg(s.results_stream, s.results("t1"))
    assert msgspec.msgpack.decode(last.data, type=Job).prompt == "0"
    assert (await bus.js.stream_info(s.results_stream)).state.messages == 1


async def test_kv_create_if_absent_and_compare_and_set(bus: Bus) -> None:
    kv = await open_kv(bus, Subjects("js3").kv_bucket("claims"))
    rev = await kv.create("task-1", b"agent-a")
    with pytest.raises(RevisionMismatchError):
        await kv.create("task-1", b"agent-b")
    rev2 = await kv.update("task-1", b"agent-a2", revision=rev)
    assert rev2 > rev
    with pytest.raises(RevisionMismatchError):
        await kv.update("task-1", b"agent-b", revision=rev)  # stale revision loses
    entry = await kv.get("task-1")
    assert entry is not None and (entry.value, entry.revision) == (b"agent-a2", rev2)
    await kv.delete("task-1")
    assert await kv.get("task-1") is None
    assert await kv.create("task-1", b"again") > rev2  # a deleted key can be created anew
    assert await kv.keys() == ["task-1"]


async def test_kv_per_key_ttl_expires_and_renewal_extends(bus: Bus) -> None:
    """The server's own expiry is the clock: a twin key written just after the renewed one,
    and never renewed, expires first; only then may the renewed one stop and expire."""
    ttl = 2.0
    kv = await open_kv(bus, Subjects("js4").kv_bucket("leases"))
    rev = await kv.create("leader", b"a", ttl=ttl)
    await kv.create("twin", b"t", ttl=ttl)  # without renewal, leader would expire no later
    with anyio.fail_after(30):
        while await kv.get("twin") is not None:
            rev = await kv.update("leader", b"a", revision=rev, ttl=ttl)  # renew
            await anyio.sleep(ttl / 4)  # the renewal period: a quarter of the TTL
    assert await kv.get("leader") is not None  # outlived its twin thanks to renewal

    async def leader_gone() -> bool:
        return await kv.get("leader") is None

    await wait_until(leader_gone, timeout=30, interval=0.1)  # renewals stopped: it expires
    assert await kv.create("leader", b"b", ttl=ttl) > rev  # expired: another may take it
