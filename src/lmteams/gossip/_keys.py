"""Which public key belongs to which member name: bound once, in the team's ``keys`` bucket.

Gossip is hearsay: any member may gossip any map, so a key learned from it proves nothing.
A binding is made with create-if-absent in JetStream KV, so the first key written for a name
is the name's key for as long as the bucket keeps it, and a later, different key is refused
rather than replacing it; the bucket's stream refuses any write to a bound name
(``write_once``), so not even a plain publish on ``$KV.<bucket>.<name>`` changes a binding.
On a secured bus only the agent's own credential may write its
own name there (``agent_permissions``), which ties the key to the credential. Bindings never
change once made, so each is read once and cached.
"""

from __future__ import annotations

import structlog

from lmteams.bus import KEYS_BUCKET, KV, Bus, Subjects, open_kv
from lmteams.errors import LmteamsError, RevisionMismatchError

__all__ = ("KeyBindings", "open_key_bindings", "fingerprint")

log = structlog.get_logger(__name__)


def fingerprint(public_key: str) -> str:
    """Enough of a key for a person to tell two apart (nkeys share their first letter)."""
    return public_key[1:9] if len(public_key) > 9 else public_key


class KeyBindings:
    """The bindings this process has read or made; ``kv`` None when the bucket is out of
    reach (no JetStream, or a credential that may not read it): then nothing is bound."""

    def __init__(self, kv: KV | None) -> None:
        self._kv = kv
        self._bound: dict[str, str] = {}

    def bound(self, name: str) -> str:
        """The key bound to ``name`` as far as this process knows; "" when none is."""
        return self._bound.get(name, "")

    async def bind(self, name: str, key: str) -> str:
        """Bind ``key`` to ``name`` unless some key already is; return the bound key.

        A different key already bound is kept, and the refusal is logged.
        """
        if not key or self._kv is None:
            return self.bound(name)
        try:
            await self._kv.create(name, key.encode())
        except RevisionMismatchError:
            bound = await self.lookup(name)
            if bound != key:
                log.warning(
                    "membership.key_refused",
                    member=name,
                    bound=fingerprint(bound),
                    announced=fingerprint(key),
                )
            return bound
        except LmteamsError as err:
            log.warning("membership.key_unbound", member=name, error=str(err))
            return self.bound(name)
        self._bound[name] = key
        return key

    async def lookup(self, name: str) -> str:
        """The key bound to ``name``, read from the bucket when not known yet."""
        if name in self._bound or self._kv is None:
            return self.bound(name)
        try:
            entry = await self._kv.get(name)
        except LmteamsError as err:
            log.debug("membership.key_lookup_failed", member=name, error=str(err))
            return ""
        if entry is not None and entry.value:
            try:
                self._bound[name] = entry.value.decode()
            except UnicodeDecodeError:
                log.warning("membership.key_unreadable", member=name)
        return self.bound(name)


async def open_key_bindings(bus: Bus, team: str) -> KeyBindings:
    """The team's bindings; a bucket that cannot be opened leaves every name unbound."""
    try:
        kv = await open_kv(bus, Subjects(team).kv_bucket(KEYS_BUCKET), write_once=True)
    except LmteamsError as err:
        log.warning("membership.keys_unavailable", team=team, error=repr(err))
        return KeyBindings(None)
    return KeyBindings(kv)
