"""An agent's facts as a gossiped map, and back: the only place that knows the meta keys.

SWIM carries a small flat map per member (``MetaValue``: a label or a number), so the facts
travel as short keys a plain ``nats sub`` reader can still read. Rates are rounded so that
measurement noise is no news: an unchanged map is not a new version. Reading back must
survive anything a peer gossips: a value of the wrong kind reads as the default, never as
an error, since a member's map is that member's word, not this process's to refuse.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from lmteams.agents import MemberFacts
from lmteams.gossip._messages import MetaValue

__all__ = ("facts_meta", "facts_of")

_RATE_DIGITS = 1


def facts_meta(facts: MemberFacts) -> dict[str, MetaValue]:
    """The gossiped map of ``facts``."""
    return {
        "device": facts.device,
        "model": facts.model,
        "backend": facts.backend,
        "tokens_per_s": round(facts.tokens_per_s, _RATE_DIGITS),
        "prompt_tokens_per_s": round(facts.prompt_tokens_per_s, _RATE_DIGITS),
        "load": float(facts.in_flight),
        "served": float(facts.served),
        "state": facts.serving,
        "roles": ",".join(facts.roles),
        "public_key": facts.public_key,
        "host": facts.host,
        "pid": float(facts.pid),
    }


def _text(meta: Mapping[str, MetaValue], key: str) -> str:
    value = meta.get(key, "")
    return value if isinstance(value, str) else ""


def _number(meta: Mapping[str, MetaValue], key: str) -> float:
    value = meta.get(key, 0.0)
    if isinstance(value, float | int) and math.isfinite(value) and value >= 0:
        return float(value)
    return 0.0


def facts_of(meta: Mapping[str, MetaValue]) -> MemberFacts:
    """The facts a gossiped map states; a member that gossips no ``state`` is serving."""
    roles = _text(meta, "roles")
    return MemberFacts(
        device=_text(meta, "device"),
        model=_text(meta, "model"),
        backend=_text(meta, "backend"),
        tokens_per_s=_number(meta, "tokens_per_s"),
        prompt_tokens_per_s=_number(meta, "prompt_tokens_per_s"),
        in_flight=int(_number(meta, "load")),
        served=int(_number(meta, "served")),
        serving="draining" if _text(meta, "state") == "draining" else "serving",
        roles=tuple(r for r in roles.split(",") if r),
        public_key=_text(meta, "public_key"),
        host=_text(meta, "host"),
        pid=int(_number(meta, "pid")),
    )
