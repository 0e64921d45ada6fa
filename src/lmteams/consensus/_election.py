"""Leader election and leases on JetStream KV, with the lease revision as a fencing token.

A candidate becomes leader by creating the role's key with a TTL (create-if-absent), and stays
leader by renewing it with compare-and-set on the revision it holds at about 3/4 of the TTL.
If it dies, the key expires and another candidate's create succeeds within the TTL. Every
write the leader makes to shared state carries its revision; a store that has seen a higher
token refuses the write, so a paused old leader that wakes up cannot clobber its successor.
KV reads may be stale (no read-your-writes): decisions are taken by CAS outcomes, never by
re-reading what was just written.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable

import anyio
import msgspec
import structlog
from anyio.abc import TaskStatus

from lmteams.bus import KV, Bus, Subjects, open_kv, validate_token
from lmteams.errors import BusError, ConfigError, FencedOutError, RevisionMismatchError

__all__ = ("LeaderElection", "FencedStore", "Leadership")

log = structlog.get_logger(__name__)


class Leadership(msgspec.Struct, frozen=True, kw_only=True):
    role: str
    leader: str  # "" when nobody holds the role (as far as this candidate knows)
    token: int  # the lease revision the leader holds; 0 if unknown


class LeaderElection:
    """One candidate for one role. Run ``run`` in a task group; read ``is_leader``/``token``."""

    def __init__(
        self,
        bus: Bus,
        team: str,
        *,
        candidate: str,
        role: str = "coordinator",
        ttl_s: float = 5.0,
        on_change: Callable[[Leadership], None] | None = None,
    ) -> None:
        self.bus = bus
        self.subjects = Subjects(team)
        self.candidate = validate_token(candidate, "candidate")
        self.role = validate_token(role, "role")
        self.ttl_s = ttl_s
        self.on_change = on_change
        self.token = 0
        self.leader = ""
        self.terms = 0  # how many times this candidate became leader
        self._kv: KV | None = None

    @property
    def is_leader(self) -> bool:
        return self.leader == self.candidate and self.token > 0

    def _announce(self, leader: str, token: int) -> None:
        if (leader, token) == (self.leader, self.token):
            return
        was = self.is_leader
        self.leader, self.token = leader, token
        if self.is_leader and not was:
            self.terms += 1
            log.info("election.won", role=self.role, candidate=self.candidate, token=token)
        elif was and not self.is_leader:
            log.warning("election.lost", role=self.role, candidate=self.candidate)
        if self.on_change is not None:
            self.on_change(Leadership(role=self.role, leader=leader, token=token))

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self._kv = await open_kv(self.bus, self.subjects.kv_bucket("leases"))
        task_status.started()
        renewed_at = 0.0
        while True:
            if self.is_leader:
                await anyio.sleep(self.ttl_s * 0.75)
                try:
                    token = await self._kv.update(
                        self.role, self.candidate.encode(), revision=self.token, ttl=self.ttl_s
                    )
                    renewed_at = time.monotonic()
                    self._announce(self.candidate, token)
                except RevisionMismatchError:
                    self._announce("", 0)  # the lease expired and someone else took it
                except BusError:
                    if time.monotonic() - renewed_at > self.ttl_s:
                        self._announce("", 0)  # cannot prove we still hold it: step down
                continue
            try:
                token = await self._kv.create(self.role, self.candidate.encode(), ttl=self.ttl_s)
                renewed_at = time.monotonic()
                self._announce(self.candidate, token)
                continue
            except RevisionMismatchError:
                entry = await self._kv.get(self.role)
                holder = _holder(entry.value) if entry else ""
                if entry is not None and holder == self.candidate and entry.revision != self.token:
                    # our name, but not our write: a predecessor of ours (this agent restarted
                    # before its old lease ran out). Adopting that revision would make us
                    # leader on a lease that expires before our first renewal, while another
                    # candidate creates the key; so take it over by a write of our own.
                    with contextlib.suppress(RevisionMismatchError, BusError):
                        token = await self._kv.update(
                            self.role, self.candidate.encode(), revision=entry.revision,
                            ttl=self.ttl_s,
                        )  # fmt: skip
                        renewed_at = time.monotonic()
                        self._announce(self.candidate, token)
                        continue
                    holder = ""  # someone else moved it first: retry from a fresh read
                self._announce(holder, entry.revision if entry and holder else 0)
            except BusError as err:
                log.warning("election.error", error=str(err))
            await anyio.sleep(self.ttl_s * random.uniform(0.2, 0.35))

    async def resign(self) -> None:
        """Give the role up now rather than at expiry (a clean shutdown)."""
        if self.is_leader and self._kv is not None:
            with contextlib.suppress(RevisionMismatchError, BusError):
                await self._kv.delete(self.role, revision=self.token)
            self._announce("", 0)


def _holder(value: bytes) -> str:
    """The lease holder a KV entry names; anything else that wrote the key names nobody.

    Who holds the lease is decided by the create and compare-and-set outcomes, never by
    this name, so a stranger's bytes in the key must not crash the candidate either.
    """
    try:
        return validate_token(value.decode(), "candidate")
    except (UnicodeDecodeError, ConfigError):
        log.warning("election.foreign_value", size=len(value))
        return ""


class _Fenced(msgspec.Struct, frozen=True):
    token: int
    value: bytes


class FencedStore:
    """Shared state that only the newest leader may change."""

    def __init__(self, kv: KV) -> None:
        self.kv = kv

    @classmethod
    async def open(cls, bus: Bus, team: str, name: str = "state") -> FencedStore:
        return cls(await open_kv(bus, Subjects(team).kv_bucket(name)))

    async def read(self, key: str) -> tuple[int, bytes] | None:
        entry = await self.kv.get(key)
        if entry is None:
            return None
        stored = msgspec.msgpack.decode(entry.value, type=_Fenced)
        return stored.token, stored.value

    async def write(self, key: str, value: bytes, *, token: int) -> None:
        """Write unless a newer leader (a higher token) has written; CAS makes it atomic."""
        payload = msgspec.msgpack.encode(_Fenced(token, value))
        for _ in range(10):
            entry = await self.kv.get(key)
            if entry is not None:
                stored = msgspec.msgpack.decode(entry.value, type=_Fenced)
                if token < stored.token:
                    raise FencedOutError(
                        f"{key}: token {token} is older than {stored.token}; "
                        "a newer leader writes now"
                    )
            if await self._try_write(key, payload, entry.revision if entry else None):
                return
        raise FencedOutError(f"{key}: too much contention to write")

    async def _try_write(self, key: str, payload: bytes, revision: int | None) -> bool:
        """One compare-and-set attempt; False when someone else wrote first."""
        try:
            if revision is None:
                await self.kv.create(key, payload)
            else:
                await self.kv.update(key, payload, revision=revision)
        except RevisionMismatchError:
            return False
        return True
