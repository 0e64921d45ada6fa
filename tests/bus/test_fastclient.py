"""FastClient must be indistinguishable from nats-py on the wire and in parsed headers."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from nats.aio.client import Client

from lmteams.bus._fastclient import FastClient, parse_header_lines

header_names = st.from_regex(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,12}", fullmatch=True)
header_values = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
raw_lines = st.lists(
    st.binary(max_size=30)
    | st.builds(lambda k, v: k + b":" + v, st.binary(max_size=8), st.binary(max_size=20)),
    max_size=8,
)


@given(lines=raw_lines)
def test_header_parse_matches_nats_py(lines: list[bytes]) -> None:
    raw = b"\r\n".join(lines) + b"\r\n\r\n"
    assert parse_header_lines(raw) == Client._parse_header_lines(raw)


async def _written(client: Client, headers: dict[str, str]) -> bytes:
    sent: list[bytes] = []

    async def capture(cmd: bytes, priority: bool = False) -> None:
        sent.append(bytes(cmd))

    client._send_command = capture  # type: ignore[method-assign]
    client._flush_queue = None
    await client._send_publish("subj.a", "reply.b", b"payload", 7, headers)
    return b"".join(sent)


@given(headers=st.dictionaries(header_names, header_values, min_size=1, max_size=6))
async def test_header_encoding_is_byte_identical(headers: dict[str, str]) -> None:
    assert await _written(FastClient(), headers) == await _written(Client(), headers)


async def test_ping_queues_behind_pending_commands() -> None:
    """A PONG must mean the server processed everything sent before the PING."""
    client = FastClient()
    written: list[bytes] = []

    class Transport:
        def write(self, data: bytes) -> None:
            written.append(bytes(data))

    async def no_flush(force_flush: bool = False) -> None:
        return None

    client._transport = Transport()
    client._flush_pending = no_flush  # type: ignore[method-assign]
    await client._send_command(b"SUB calc.add 1\r\n")
    await client._send_ping()
    assert written == []  # nothing jumped the queue
    assert client._pending == [b"SUB calc.add 1\r\n", b"PING\r\n"]


envelope_values = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


@given(value=envelope_values, more=st.lists(st.binary(max_size=20), max_size=2))
def test_envelope_fast_path_matches_nats_py(value: str, more: list[bytes]) -> None:
    """The one-line fast path and the general parse agree, with and without extra lines."""
    raw = b"\r\n".join([b"Lmt: " + value.encode(), *more]) + b"\r\n\r\n"
    assert parse_header_lines(raw) == Client._parse_header_lines(raw)


@given(value=envelope_values)
async def test_enveloped_publish_is_byte_identical(value: str) -> None:
    """``publish_enveloped`` writes what nats-py writes for the same single header."""
    ours = FastClient()
    sent: list[bytes] = []

    async def capture(cmd: bytes, priority: bool = False) -> None:
        sent.append(bytes(cmd))

    ours._send_command = capture  # type: ignore[method-assign]
    ours._flush_queue = None
    ours._status = Client.CONNECTED
    ours._max_payload = 1 << 20
    await ours.publish_enveloped("subj.a", b"payload", envelope=value, reply="reply.b")
    assert b"".join(sent) == await _written(Client(), {"Lmt": value})
