"""nats-py's client with a faster header-line parser.

nats-py parses every header block with a per-character generator to reject whitespace in
names; on a request/reply round trip that was a large share of lmteams' overhead. This
subclass keeps nats-py's exact semantics (a property test compares the two on arbitrary
header blocks) with work per line instead of per character. Nothing else is changed.
"""

from __future__ import annotations

import re
from typing import Any

from nats.aio.client import Client
from nats.errors import BadHeaderError
from nats.protocol.command import hpub_cmd

__all__ = ("FastClient", "parse_header_lines", "encode_header_block")

_CRLF = b"\r\n"
_WHITESPACE = re.compile(r"\s")
_HEADER_KEY = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # nats-py's rule for names
_NEWLINES = str.maketrans({"\r": " ", "\n": " "})
_valid_keys: set[str] = set()


def encode_header_block(headers: dict[str, str]) -> bytearray:
    """Byte for byte what nats-py's ``_send_publish`` writes, with one encode per block."""
    lines = ["NATS/1.0\r\n"]
    for k, v in headers.items():
        key = k.strip()
        if not key:
            continue
        if key not in _valid_keys:
            if not _HEADER_KEY.fullmatch(key):
                raise BadHeaderError(key)
            _valid_keys.add(key)
        lines.append(f"{key}: {v.strip().translate(_NEWLINES)}\r\n")
    lines.append("\r\n")
    return bytearray("".join(lines).encode())


def parse_header_lines(raw: bytes) -> dict[str, str]:
    """Same result as ``nats.aio.client.Client._parse_header_lines`` for every input."""
    out: dict[str, str] = {}
    for line in raw.split(_CRLF):
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        try:
            key = name.strip().decode("ascii")
        except UnicodeDecodeError:
            continue
        if _WHITESPACE.search(key):
            continue
        out[key] = value.strip().decode("utf-8", "replace")
    return out


class FastClient(Client):
    """A nats-py ``Client`` whose header encoding and parsing are cheaper."""

    _parse_header_lines = staticmethod(parse_header_lines)

    async def _send_publish(
        self,
        subject: str,
        reply: str,
        payload: bytes,
        payload_size: int,
        headers: dict[str, Any] | None,
    ) -> None:
        if headers is None or not subject:
            await super()._send_publish(subject, reply, payload, payload_size, headers)
            return
        command = hpub_cmd(subject, reply, encode_header_block(headers), payload)
        self.stats["out_msgs"] += 1
        self.stats["out_bytes"] += payload_size
        await self._send_command(command)
        if self._flush_queue is not None and self._flush_queue.empty():
            await self._flush_pending()
