"""An agent's signing identity: an ed25519 key pair in NATS nkey form.

Votes in a Byzantine quorum are signed so that no agent can forge or replay another's;
the payload binds task, round, agent and text, so a signature is valid for one vote only.
The team binds an agent's public key to its name on first join and refuses another one, so
an agent's key must outlive its process: a daemon reads it from its bus credential (the nkey
seed file) or from a seed file of its own, made once (``stored_identity``).
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

import nacl.exceptions
import nacl.signing
import nkeys

from lmteams.errors import ConfigError

__all__ = ("AgentIdentity", "vote_payload", "verify_vote", "identity_from_file", "stored_identity")

_DOMAIN = b"lmteams-vote/1"


def vote_payload(task_id: str, round_: int, agent: str, text: str) -> bytes:
    """The exact bytes a vote's signature covers (length-prefixed: no field can bleed)."""
    parts = [task_id.encode(), str(round_).encode(), agent.encode(), text.encode()]
    return _DOMAIN + b"".join(len(p).to_bytes(4, "big") + p for p in parts)


def _verify_key(public_key: str) -> nacl.signing.VerifyKey:
    """Decode an nkey user public key ('U…': base32 of prefix, 32-byte key, CRC16)."""
    raw = base64.b32decode(public_key.encode() + b"=" * (-len(public_key) % 8))
    if len(raw) != 35 or raw[0] != nkeys.PREFIX_BYTE_USER:
        raise ValueError("not an nkey user public key")
    if nkeys.crc16(bytearray(raw[:-2])) != int.from_bytes(raw[-2:], "little"):
        raise ValueError("nkey checksum mismatch")
    return nacl.signing.VerifyKey(bytes(raw[1:33]))


def verify_vote(public_key: str, payload: bytes, signature: str) -> bool:
    """Whether ``signature`` is ``public_key``'s signature of ``payload``."""
    try:
        _verify_key(public_key).verify(payload, base64.b64decode(signature, validate=True))
    except (nacl.exceptions.BadSignatureError, ValueError, TypeError, binascii.Error):
        return False
    return True


class AgentIdentity:
    """A key pair; the seed never leaves the process (and never reaches a log)."""

    __slots__ = ("_keypair", "public_key")

    def __init__(self, seed: bytes | None = None) -> None:
        seed = seed or nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
        self._keypair = nkeys.from_seed(bytearray(seed))
        self.public_key = self._keypair.public_key.decode()

    def __repr__(self) -> str:
        return f"AgentIdentity({self.public_key})"

    def sign(self, payload: bytes) -> str:
        return base64.b64encode(self._keypair.sign(payload)).decode()

    def sign_vote(self, task_id: str, round_: int, agent: str, text: str) -> str:
        return self.sign(vote_payload(task_id, round_, agent, text))


def identity_from_file(path: Path) -> AgentIdentity:
    """The identity whose seed (``SU...``) ``path`` holds, as ``lmteams bus up`` writes it."""
    try:
        return AgentIdentity(path.expanduser().read_bytes().strip())
    except (OSError, ValueError, nkeys.NkeysError) as exc:
        raise ConfigError(f"cannot read the nkey seed in {path}: {exc}") from exc


def stored_identity(path: Path) -> AgentIdentity:
    """The identity kept in ``path``, created there (mode 0600) on first use.

    The seed is written to a private temporary file and linked into place, which fails when
    the path exists: two processes starting at once under one name both end up with the one
    key that won, and no reader ever sees a half-written file.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.exists():
        return identity_from_file(path)
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, seed + b"\n")
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return identity_from_file(path)
    finally:
        tmp.unlink(missing_ok=True)
    return AgentIdentity(seed)
