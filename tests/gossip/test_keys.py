"""Key bindings against an outsider: a plain nats-py client cannot rebind a bound name."""

from __future__ import annotations

import nats
import pytest
from nats.js.errors import APIError

from lmteams.agents import AgentIdentity
from lmteams.bus import KEYS_BUCKET, Bus, EmbeddedServer, Subjects
from lmteams.gossip import open_key_bindings

TEAM = "kb"


async def test_a_bound_key_survives_a_plain_publish_on_its_kv_subject(
    nats_server: EmbeddedServer, bus: Bus
) -> None:
    first, second = AgentIdentity().public_key, AgentIdentity().public_key
    bindings = await open_key_bindings(bus, TEAM)
    assert await bindings.bind("a1", first) == first
    bucket = Subjects(TEAM).kv_bucket(KEYS_BUCKET)
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        with pytest.raises(APIError):  # a put, not a create: the stream itself refuses it
            await js.publish(f"$KV.{bucket}.a1", second.encode())
        with pytest.raises(APIError):  # nor may a delete marker unbind it
            await js.publish(f"$KV.{bucket}.a1", b"", headers={"KV-Operation": "DEL"})
    finally:
        await nc.close()
    fresh = await open_key_bindings(bus, TEAM)  # a view that reads the binding anew
    assert await fresh.lookup("a1") == first
    assert await fresh.bind("a1", second) == first


async def test_the_operator_can_unbind_a_name_by_purging_its_subject(bus: Bus) -> None:
    first, second = AgentIdentity().public_key, AgentIdentity().public_key
    assert await (await open_key_bindings(bus, TEAM)).bind("a2", first) == first
    bucket = Subjects(TEAM).kv_bucket(KEYS_BUCKET)
    await bus.js.purge_stream(f"KV_{bucket}", subject=f"$KV.{bucket}.a2")  # the README's way
    assert await (await open_key_bindings(bus, TEAM)).bind("a2", second) == second
