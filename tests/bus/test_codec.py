from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmteams.bus import (
    Bus,
    Codec,
    Envelope,
    ErrorReply,
    Incoming,
    LamportClock,
    encode,
    encode_json,
    type_tag,
)
from lmteams.bus._envelope import check_envelope
from lmteams.errors import DecodeError


class Ask(msgspec.Struct, frozen=True, kw_only=True, tag="ask"):
    prompt: str
    n: int = 1
    tags: tuple[str, ...] = ()


class Tell(msgspec.Struct, frozen=True, kw_only=True, tag="tell"):
    text: str
    score: float | None = None
    meta: dict[str, int] = {}


codec: Codec[Ask | Tell] = Codec(Ask, Tell)

asks = st.builds(
    Ask,
    prompt=st.text(),
    n=st.integers(-(2**63), 2**63 - 1),
    tags=st.lists(st.text(max_size=5), max_size=5).map(tuple),
)
tells = st.builds(
    Tell,
    text=st.text(),
    score=st.none() | st.floats(allow_nan=False, allow_infinity=False),  # JSON has no inf
    meta=st.dictionaries(st.text(max_size=5), st.integers(-1000, 1000), max_size=5),
)


@given(msg=asks | tells)
def test_msgpack_round_trip(msg: Ask | Tell) -> None:
    assert codec.decode(encode(msg)) == msg


@given(msg=asks | tells)
def test_json_round_trip(msg: Ask | Tell) -> None:
    assert codec.decode(encode_json(msg), json=True) == msg


def test_tag_selects_the_type() -> None:
    assert isinstance(codec.decode(b'{"type": "tell", "text": "hi"}', json=True), Tell)
    assert type_tag(Ask(prompt="x")) == "ask"


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        ({"type": "ask", "prompt": 3}, "$.prompt", "Expected `str`, got `int`"),
        ({"type": "ask"}, "$.prompt", "missing required field `prompt`"),
        ({"type": "ask", "prompt": "x", "n": "one"}, "$.n", "Expected `int`"),
        ({"type": "nope", "prompt": "x"}, "$.type", "Invalid value 'nope'"),
        ({"prompt": "x"}, "$.type", "missing required field `type`"),
        ([1, 2], "$", "Expected `object`, got `array`"),
        ({"type": "tell", "text": "x", "meta": {"a": "b"}}, "$.meta[...]", "Expected `int`"),
    ],
)
@pytest.mark.parametrize("json", [True, False])
def test_strict_decode_names_the_field(body: Any, field: str, reason: str, json: bool) -> None:
    data = msgspec.json.encode(body) if json else msgspec.msgpack.encode(body)
    with pytest.raises(DecodeError) as info:
        codec.decode(data, json=json)
    assert info.value.field == field
    assert reason in info.value.reason
    assert field in str(info.value)


class Nested(msgspec.Struct, frozen=True, kw_only=True, tag="nested"):
    inner: Ask


lone_codec: Codec[Ask] = Codec(Ask)


@pytest.mark.parametrize("json", [True, False])
def test_a_lone_type_still_requires_its_type_tag(json: bool) -> None:
    """msgspec alone would decode a tagless body as the one type a decoder accepts."""
    encode_as = msgspec.json.encode if json else msgspec.msgpack.encode
    assert lone_codec.decode(encode_as({"type": "ask", "prompt": "x"}), json=json) == Ask(
        prompt="x"
    )
    with pytest.raises(DecodeError) as info:
        lone_codec.decode(encode_as({"prompt": "x"}), json=json)
    assert info.value.field == "$.type"
    assert "missing required field `type`" in info.value.reason
    for tag in ("tell", "\x00lmteams-none"):  # another tag, or the codec's own sentinel
        with pytest.raises(DecodeError) as info:
            lone_codec.decode(encode_as({"type": tag, "prompt": "x"}), json=json)
        assert info.value.field == "$.type"


def test_a_missing_nested_field_is_named_by_its_own_path() -> None:
    with pytest.raises(DecodeError) as info:
        Codec(Nested).decode(b'{"type": "nested", "inner": {"type": "ask"}}', json=True)
    assert info.value.field == "$.inner.prompt"


@pytest.mark.parametrize("data", [b"", b"\xc1", b"{not json", b"[1,2", b"\x92\x01"])
def test_malformed_bytes_raise_decode_error_at_the_root(data: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        codec.decode(data, json=data.startswith((b"{", b"[")))
    assert info.value.field == "$"


def test_errors_quoting_a_huge_value_stay_small() -> None:
    with pytest.raises(DecodeError) as info:
        codec.decode(msgspec.json.encode({"type": "x" * 100_000}), json=True)
    assert info.value.field == "$.type"
    assert len(info.value.reason) < 500


@given(data=st.binary(max_size=200))
def test_random_bytes_never_escape_as_other_exceptions(data: bytes) -> None:
    for json in (True, False):
        refusal: DecodeError | None = None
        try:
            codec.decode(data, json=json)
        except DecodeError as err:
            refusal = err
        assert refusal is None or refusal.field.startswith("$")  # every refusal names a path


@pytest.mark.parametrize("version", [0, 2, 7, 10**6])
def test_an_unknown_schema_version_is_refused(version: int) -> None:
    with pytest.raises(DecodeError) as info:
        check_envelope(f"{version} ask m1 a1 t1 3")
    assert info.value.reason == f"unsupported schema version {version}, this agent speaks 1"
    assert info.value.field == "Lmt"


@pytest.mark.parametrize(
    "header", ["", "1", "x ask m1 a1 t1 3", "1 ask m1 a1 t1", "1 ask m1 a1 t1 x", "1  m1 a1 t1 3"]
)
def test_a_malformed_envelope_header_is_refused(header: str) -> None:
    with pytest.raises(DecodeError) as info:
        check_envelope(header)
    assert "malformed Lmt header" in info.value.reason
    assert info.value.field == "Lmt"


def test_what_lmteams_sends_passes_the_envelope_check() -> None:
    check_envelope(Envelope(type="ask", id="m1", sender="a1", trace="t1", clock=7).header_value())


async def test_a_bus_refuses_another_schema_version(bus: Bus) -> None:
    """On a live subscription: an error reply naming the header; only version 1 is handled."""
    seen: list[Ask] = []

    async def handle(inc: Incoming[Ask]) -> None:
        seen.append(inc.body)
        await inc.respond(inc.body)

    await bus.subscribe("codec.schema", handle, codec=Codec(Ask))
    body = encode(Ask(prompt="x"))
    for header, refused in (("2 ask m1 a1 t1 3", True), ("1 ask m1 a1 t1 3", False)):
        reply = await bus.nc.request("codec.schema", body, headers={"Lmt": header}, timeout=5)
        if refused:
            error = Codec(ErrorReply).decode(reply.data)
            assert error.kind == "decode"
            assert error.field == "Lmt"
            assert error.message == "unsupported schema version 2, this agent speaks 1"
        else:
            assert Codec(Ask).decode(reply.data) == Ask(prompt="x")
    assert seen == [Ask(prompt="x")]


def test_error_reply_is_part_of_the_wire_contract() -> None:
    err = ErrorReply(kind="decode", message="bad", field="$.x")
    assert msgspec.json.decode(encode_json(err)) == {
        "type": "error",
        "kind": "decode",
        "message": "bad",
        "field": "$.x",
        "task_id": "",
    }


def test_envelope_header_round_trip() -> None:
    env = Envelope(type="ask", id="m1", sender="a1", trace="t1", clock=7, schema=1)
    assert Envelope.from_headers(env.to_headers()) == env
    as_json = Envelope(
        type="ask", id="m1", sender="a1", trace="t1", clock=7, content_type="application/json"
    )
    assert Envelope.from_headers(as_json.to_headers()).is_json


def test_plain_client_without_headers_is_taken_as_json() -> None:
    assert Envelope.from_headers(None).is_json
    assert Envelope.from_headers({}).is_json
    assert Envelope.from_headers({"Nats-Msg-Id": "x"}).id == "x"
    assert not Envelope.from_headers({"Content-Type": "application/msgpack"}).is_json


@given(st.lists(st.integers(0, 10**6), max_size=50))
def test_lamport_clock_is_monotonic_and_dominates_observed(remote: list[int]) -> None:
    clock = LamportClock()
    last = 0
    for r in remote:
        t = clock.observe(r)
        assert t > last and t > r
        last = clock.tick()
        assert last == t + 1
