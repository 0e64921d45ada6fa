"""Strict msgspec codecs over tagged unions of Structs.

One cached encoder and decoder per union (msgspec's own advice: building them is the slow
part). MessagePack is the default body; JSON is accepted and produced for plain clients.
"""

from __future__ import annotations

import re
from typing import Any, Generic, TypeVar, Union

import msgspec

from lmteams.errors import DecodeError, EncodeError

__all__ = ("Codec", "ErrorReply", "type_tag", "encode", "encode_json")

T = TypeVar("T")

_msgpack_encoder = msgspec.msgpack.Encoder()
_json_encoder = msgspec.json.Encoder()
_AT_PATH = re.compile(r" - at `(\$[^`]*)`$")


class ErrorReply(msgspec.Struct, frozen=True, kw_only=True, tag="error"):
    """The reply to any request that failed: bad input, a raising handler, a refused task.

    ``kind`` is a stable machine-readable name (``decode``, ``handler``, ``timeout`` ...);
    ``field`` names the offending JSON path for decode errors.
    """

    kind: str
    message: str
    field: str = ""
    task_id: str = ""


_TAGS: dict[type[Any], str] = {}


def type_tag(msg: msgspec.Struct) -> str:
    """The msgspec tag of a Struct instance, or its class name when it is untagged."""
    cls = type(msg)
    tag = _TAGS.get(cls)
    if tag is None:
        cfg = msg.__struct_config__
        tag = _TAGS[cls] = str(cfg.tag) if cfg.tag is not None else cls.__name__
    return tag


def encode(msg: Any) -> bytes:
    """Encode any msgspec-supported value as MessagePack."""
    try:
        return _msgpack_encoder.encode(msg)
    except (TypeError, OverflowError) as exc:
        raise EncodeError(f"cannot encode {type(msg).__name__}: {exc}") from exc


def encode_json(msg: Any) -> bytes:
    """Encode any msgspec-supported value as JSON (for plain NATS clients)."""
    try:
        return _json_encoder.encode(msg)
    except (TypeError, OverflowError) as exc:
        raise EncodeError(f"cannot encode {type(msg).__name__}: {exc}") from exc


class Codec(Generic[T]):
    """Decode bytes into one of a fixed set of Struct types, strictly.

    Built from the types a subscriber accepts; ``ErrorReply`` can be added so request
    callers see a remote failure as a value rather than a decode error.
    """

    __slots__ = ("_json", "_msgpack", "types")

    def __init__(self, *types: type[Any]) -> None:
        if not types:
            raise ValueError("a Codec needs at least one type")
        self.types = types
        target: Any = types[0] if len(types) == 1 else Union[types]  # noqa: UP007 - runtime union
        self._msgpack: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(target)
        self._json: msgspec.json.Decoder[Any] = msgspec.json.Decoder(target)

    def decode(self, data: bytes, *, json: bool = False) -> T:
        """Decode strictly; raise ``DecodeError`` naming the field and the reason."""
        try:
            result: T = (self._json if json else self._msgpack).decode(data)
        except msgspec.ValidationError as exc:
            reason, field = _split_path(str(exc))
            raise DecodeError(reason, field=field) from None
        except msgspec.DecodeError as exc:
            raise DecodeError(str(exc)) from None
        except RecursionError:
            # msgspec skips unknown fields recursively: hostile nesting must be refused like
            # any other bad body, not escape as an exception that crashes the receiver
            raise DecodeError("the message is nested too deeply to decode") from None
        return result


def _split_path(text: str) -> tuple[str, str]:
    match = _AT_PATH.search(text)
    if match is None:
        return text, ""
    return text[: match.start()], match.group(1)
