from __future__ import annotations

import contextlib
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmteams.bus import Codec, Envelope, ErrorReply, LamportClock, encode, encode_json, type_tag
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
        ({"type": "ask"}, "", "missing required field `prompt`"),
        ({"type": "ask", "prompt": "x", "n": "one"}, "$.n", "Expected `int`"),
        ({"type": "nope", "prompt": "x"}, "$.type", "Invalid value 'nope'"),
        ({"prompt": "x"}, "", "missing required field `type`"),
        ({"type": "tell", "text": "x", "meta": {"a": "b"}}, "$.meta[...]", "Expected `int`"),
    ],
)
@pytest.mark.parametrize("json", [True, False])
def test_strict_decode_names_the_field(
    body: dict[str, Any], field: str, reason: str, json: bool
) -> None:
    data = msgspec.json.encode(body) if json else msgspec.msgpack.encode(body)
    with pytest.raises(DecodeError) as info:
        codec.decode(data, json=json)
    assert info.value.field == field
    assert reason in info.value.reason
    assert (field or "cannot decode") in str(info.value)


@pytest.mark.parametrize("data", [b"", b"\xc1", b"{not json", b"[1,2", b"\x92\x01"])
def test_malformed_bytes_raise_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError):
        codec.decode(data, json=data.startswith((b"{", b"[")))


@given(data=st.binary(max_size=200))
def test_random_bytes_never_escape_as_other_exceptions(data: bytes) -> None:
    for json in (True, False):
        with contextlib.suppress(DecodeError):
            codec.decode(data, json=json)


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
