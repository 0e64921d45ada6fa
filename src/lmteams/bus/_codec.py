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
_MAX_REASON = 300
_MISSING = re.compile(r"^Object missing required field `([^`]*)`$")


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


class _NoMessage(msgspec.Struct, frozen=True, tag="\x00lmteams-none"):
    """A tag no sender uses, joined to a lone type's decoder to make its ``type`` required.

    msgspec requires the tag only of members of a union; a lone tagged Struct would decode
    a body without ``type`` (or with any other object) as if it were of that type.
    """


class Codec(Generic[T]):
    """Decode bytes into one of a fixed set of Struct types, strictly.

    Built from the types a subscriber accepts; ``ErrorReply`` can be added so request
    callers see a remote failure as a value rather than a decode error. Tagged Structs must
    carry their ``type`` tag, even when the codec accepts only one type.
    """

    __slots__ = ("_json", "_msgpack", "types")

    def __init__(self, *types: type[Any]) -> None:
        if not types:
            raise ValueError("a Codec needs at least one type")
        self.types = types
        target: Any = types[0] if len(types) == 1 else Union[types]  # noqa: UP007 - runtime union
        if len(types) == 1 and _tag_field(types[0]) == _tag_field(_NoMessage):
            target = Union[types[0], _NoMessage]  # noqa: UP007 - runtime union
        self._msgpack: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(target)
        self._json: msgspec.json.Decoder[Any] = msgspec.json.Decoder(target)

    def decode(self, data: bytes, *, json: bool = False) -> T:
        """Decode strictly; raise ``DecodeError`` naming the field (a JSON path) and the reason.

        The path is ``$`` when the body as a whole is unusable (malformed, not an object).
        """
        try:
            result: T = (self._json if json else self._msgpack).decode(data)
        except msgspec.ValidationError as exc:
            reason, field = _split_path(str(exc))
            raise DecodeError(reason, field=field) from None
        except msgspec.DecodeError as exc:
            raise DecodeError(_clip(str(exc)), field="$") from None
        except RecursionError:
            # msgspec skips unknown fields recursively: hostile nesting must be refused like
            # any other bad body, not escape as an exception that crashes the receiver
            raise DecodeError("the message is nested too deeply to decode", field="$") from None
        if isinstance(result, _NoMessage):
            raise DecodeError(f"Invalid value {_NoMessage.__struct_config__.tag!r}", field="$.type")
        return result


def _tag_field(cls: type[Any]) -> str | None:
    """The tag field of a tagged Struct type, None for anything else."""
    if not (isinstance(cls, type) and issubclass(cls, msgspec.Struct)):
        return None
    config = cls.__struct_config__
    return config.tag_field if config.tag is not None else None


def _split_path(text: str) -> tuple[str, str]:
    """msgspec's message and path; a missing field's path is the field's own, not its parent's."""
    match = _AT_PATH.search(text)
    reason, path = (text, "$") if match is None else (text[: match.start()], match.group(1))
    missing = _MISSING.match(reason)
    if missing is not None:
        path = f"{path}.{missing.group(1)}"
    return _clip(reason), _clip(path)


def _clip(text: str) -> str:
    """msgspec quotes offending values (an unknown tag of a megabyte): an error reply and
    its log line must stay small whatever was sent."""
    return text if len(text) <= _MAX_REASON else f"{text[:_MAX_REASON]}... ({len(text)} chars)"
