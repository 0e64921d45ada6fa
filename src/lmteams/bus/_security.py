"""Authentication and per-role permissions for a team's bus, derived from its subject tree.

A bus left open lets anyone publish tasks, read results or tell an agent to stop. Because
every subject of a team hangs off ``lmt.<team>.`` (see ``Subjects``), each role's rights are a
short list of subtrees: an agent serves its own inbox and control subject and publishes
results, a client submits tasks and reads results, an admin may do anything. The server
config is a pure function of (team, agent names); nothing here talks to a server.

nkeys are the default (the server stores only public keys, a seed never crosses the wire);
user/password accounts are offered for clients that cannot sign nonces.
"""

from __future__ import annotations

import os
import secrets
import ssl
from collections.abc import Iterable, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any

import msgspec
import nkeys

from lmteams.bus._subjects import SubjectKind, Subjects, validate_token
from lmteams.errors import ConfigError

__all__ = (
    "Role",
    "Credential",
    "TeamSecurity",
    "BusAuth",
    "team_security",
    "agent_permissions",
    "client_permissions",
    "admin_permissions",
    "write_credentials",
    "load_security",
    "new_nkey",
    "SECURITY_FILE",
    "ENV_NKEY_SEED",
    "ENV_USER",
    "ENV_PASSWORD",
)

SECURITY_FILE = "security.json"
ENV_NKEY_SEED = "LMTEAMS_NKEY_SEED"
ENV_USER = "LMTEAMS_NATS_USER"
ENV_PASSWORD = "LMTEAMS_NATS_PASSWORD"  # an env var, so the password never shows in `ps`


class Role(StrEnum):
    AGENT = "agent"
    CLIENT = "client"
    ADMIN = "admin"


class Credential(msgspec.Struct, frozen=True, kw_only=True):
    """One user of the bus. ``repr`` hides the secrets so a logged Credential leaks nothing."""

    name: str
    role: Role
    public_key: str = ""  # nkey users: the U... key the server checks signatures against
    nkey_seed: str = ""  # nkey users: the S... seed (secret)
    user: str = ""  # password users
    password: str = ""  # password users (secret)

    def __repr__(self) -> str:
        who = self.public_key or self.user
        return f"Credential(name={self.name!r}, role={self.role.value!r}, id={who!r}, ***)"

    __str__ = __repr__


def new_nkey() -> tuple[str, str]:
    """A fresh user nkey: (seed, public key). The nkeys package decodes but cannot generate."""
    seed = nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER)
    public = nkeys.from_seed(bytearray(seed)).public_key
    return seed.decode(), public.decode()


def _jetstream_api(subjects: Subjects, *, consumer: bool, create: bool) -> list[str]:
    """The JetStream API subjects a member of the team needs, narrowed to the team's streams."""
    streams = (subjects.tasks_stream, subjects.results_stream, subjects.dead_stream)
    allow = ["$JS.API.INFO"]
    verbs = ("INFO", "CREATE", "UPDATE") if create else ("INFO",)
    allow += [f"$JS.API.STREAM.{verb}.{s}" for verb in verbs for s in streams]
    allow += [f"$JS.API.STREAM.MSG.GET.{subjects.results_stream}"]
    allow += [f"$JS.API.DIRECT.GET.{subjects.results_stream}.>"]
    allow += [f"$JS.API.DIRECT.GET.{subjects.results_stream}"]
    if consumer:
        tasks = subjects.tasks_stream
        allow += [
            f"$JS.API.CONSUMER.INFO.{tasks}.>",
            f"$JS.API.CONSUMER.CREATE.{tasks}.>",
            f"$JS.API.CONSUMER.DURABLE.CREATE.{tasks}.>",
            f"$JS.API.CONSUMER.MSG.NEXT.{tasks}.>",
            f"$JS.ACK.{tasks}.>",
        ]
    return allow


def agent_permissions(subjects: Subjects, agent: str) -> dict[str, Any]:
    """What agent ``agent`` may do: serve its inbox, roles and control; publish results.

    Everything not listed is refused. Publishing on control subjects is also denied
    explicitly (a deny wins over any allow), so a later, wider allow cannot hand an agent
    the power to stop its peers. Subscriptions allow only the agent's own control subject.
    """
    validate_token(agent, "agent name")
    return {
        "publish": {
            "allow": [
                subjects.all(SubjectKind.RESULTS),
                subjects.all(SubjectKind.PROGRESS),
                subjects.all(SubjectKind.GOSSIP),
                subjects.all(SubjectKind.DEAD),
                subjects.all(SubjectKind.AGENT),  # asks to peers
                subjects.all(SubjectKind.ROLE),
                *_jetstream_api(subjects, consumer=True, create=True),
            ],
            "deny": [subjects.all(SubjectKind.CONTROL)],
        },
        "subscribe": {
            "allow": [
                subjects.agent(agent),
                subjects.all(SubjectKind.ROLE),
                subjects.control(agent),
                subjects.all(SubjectKind.GOSSIP),
                "_INBOX.>",
            ],
        },
        "allow_responses": True,  # replies to asks, whatever the asker's inbox
    }


def client_permissions(subjects: Subjects) -> dict[str, Any]:
    """What a client may do: submit tasks, read results and progress, nothing of agents."""
    return {
        "publish": {
            "allow": [subjects.tasks, *_jetstream_api(subjects, consumer=False, create=True)],
        },
        "subscribe": {
            "allow": [
                subjects.all(SubjectKind.RESULTS),
                subjects.all(SubjectKind.PROGRESS),
                subjects.all(SubjectKind.GOSSIP),
                "_INBOX.>",
            ],
        },
    }


def admin_permissions() -> dict[str, Any]:
    """The operator (``lmteams up``, ``lmteams down``, tests): everything."""
    return {"publish": {"allow": [">"]}, "subscribe": {"allow": [">"]}}


class TeamSecurity(msgspec.Struct, frozen=True, kw_only=True):
    """The users of one team's bus; ``server_config()`` goes into ``ServerConfig.extra``."""

    team: str
    agents: tuple[str, ...]
    credentials: tuple[Credential, ...]

    def __repr__(self) -> str:
        return f"TeamSecurity(team={self.team!r}, users={[c.name for c in self.credentials]})"

    def credential(self, name: str) -> Credential:
        for cred in self.credentials:
            if cred.name == name:
                return cred
        raise ConfigError(
            f"no credential named {name!r}; known: {', '.join(c.name for c in self.credentials)}"
        )

    def permissions(self, cred: Credential) -> dict[str, Any]:
        subjects = Subjects(self.team)
        if cred.role is Role.AGENT:
            return agent_permissions(subjects, cred.name)
        if cred.role is Role.CLIENT:
            return client_permissions(subjects)
        return admin_permissions()

    def server_config(self) -> dict[str, Any]:
        """The ``authorization`` block for nats-server.

        nkey users appear by public key only; password users carry their password, so the
        rendered server config is itself a secret (written 0600 by ``write_credentials``).
        """
        users: list[dict[str, Any]] = []
        for cred in self.credentials:
            entry: dict[str, Any] = {"permissions": self.permissions(cred)}
            if cred.public_key:
                entry["nkey"] = cred.public_key
            else:
                entry |= {"user": cred.user, "password": cred.password}
            users.append(entry)
        return {"authorization": {"users": users, "timeout": 5}}


def team_security(
    team: str,
    agents: Iterable[str],
    *,
    clients: Sequence[str] = ("client",),
    admins: Sequence[str] = ("admin",),
    mode: str = "nkey",
) -> TeamSecurity:
    """Fresh credentials for every agent, client and admin of ``team``.

    ``mode`` is ``nkey`` (preferred: the server keeps public keys only) or ``password``.
    """
    if mode not in ("nkey", "password"):
        raise ConfigError(f"mode must be 'nkey' or 'password', got {mode!r}")
    validate_token(team, "team name")
    agent_names = tuple(validate_token(a, "agent name") for a in agents)
    names = [*agent_names, *clients, *admins]
    if len(set(names)) != len(names):
        raise ConfigError(f"credential names must be distinct, got {names}")

    def make(name: str, role: Role) -> Credential:
        validate_token(name, "credential name")
        if mode == "nkey":
            seed, public = new_nkey()
            return Credential(name=name, role=role, public_key=public, nkey_seed=seed)
        return Credential(name=name, role=role, user=name, password=secrets.token_urlsafe(24))

    creds = [make(a, Role.AGENT) for a in agent_names]
    creds += [make(c, Role.CLIENT) for c in clients]
    creds += [make(a, Role.ADMIN) for a in admins]
    return TeamSecurity(team=team, agents=agent_names, credentials=tuple(creds))


def _write_private(path: Path, data: bytes) -> None:
    """Create the file 0600 from the start: a chmod after writing leaves a readable window."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)


def write_credentials(security: TeamSecurity, directory: str | Path) -> dict[str, Path]:
    """Write one file per credential (``<name>.nk`` seed or ``<name>.password``) and the
    whole set (``security.json``, to restart the server with the same users) into
    ``directory``: mode 0700 for the directory, 0600 for every file. Returns name -> path.
    """
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o700)
    paths: dict[str, Path] = {}
    for cred in security.credentials:
        if cred.nkey_seed:
            path = root / f"{cred.name}.nk"
            _write_private(path, cred.nkey_seed.encode() + b"\n")
        else:
            path = root / f"{cred.name}.password"
            _write_private(path, cred.password.encode() + b"\n")
        paths[cred.name] = path
    _write_private(root / SECURITY_FILE, msgspec.json.encode(security))
    return paths


def load_security(directory: str | Path) -> TeamSecurity:
    """Read back what ``write_credentials`` wrote."""
    path = Path(directory) / SECURITY_FILE
    try:
        return msgspec.json.decode(path.read_bytes(), type=TeamSecurity)
    except (OSError, msgspec.DecodeError) as exc:
        raise ConfigError(f"cannot read credentials from {path}: {exc}") from exc


class BusAuth(msgspec.Struct, frozen=True, kw_only=True):
    """How to authenticate to a secured bus, as daemon configs carry it.

    Files are named by path (seed, creds, TLS material), so the config itself holds no key;
    a password or token, when used, is hidden from ``repr``.
    """

    token: str | None = None
    user: str | None = None
    password: str | None = None
    nkey_seed: str | None = None  # path to a seed file (``lmteams bus up --secure`` writes them)
    creds: str | None = None  # path to a JWT .creds file (operator mode)
    tls_ca: str | None = None  # CA bundle that signed the server's certificate
    tls_cert: str | None = None  # client certificate, for servers that verify clients
    tls_key: str | None = None

    def __repr__(self) -> str:
        shown = {f: getattr(self, f) for f in ("user", "nkey_seed", "creds", "tls_ca")}
        given = ", ".join(f"{k}={v!r}" for k, v in shown.items() if v)
        hidden = ", ***" if self.password or self.token else ""
        return f"BusAuth({given}{hidden})"

    __str__ = __repr__

    @classmethod
    def from_env(cls, **given: str | None) -> BusAuth:
        """The arguments given, completed from ``$LMTEAMS_NKEY_SEED``, ``$LMTEAMS_NATS_USER``
        and ``$LMTEAMS_NATS_PASSWORD`` (a password belongs in the environment, not argv)."""
        env = {
            "nkey_seed": os.environ.get(ENV_NKEY_SEED),
            "user": os.environ.get(ENV_USER),
            "password": os.environ.get(ENV_PASSWORD),
        }
        merged = {k: v for k, v in env.items() if v} | {k: v for k, v in given.items() if v}
        return cls(**merged)

    def tls_context(self) -> ssl.SSLContext | None:
        if not (self.tls_ca or self.tls_cert):
            return None
        context = ssl.create_default_context(cafile=self.tls_ca)
        if self.tls_cert:
            context.load_cert_chain(self.tls_cert, self.tls_key)
        return context

    def options(self) -> dict[str, Any]:
        """Keyword arguments for ``open_bus``."""
        opts: dict[str, Any] = {
            "token": self.token,
            "user": self.user,
            "password": self.password,
            "nkey_seed": self.nkey_seed,
            "creds": self.creds,
            "tls": self.tls_context(),
        }
        return {k: v for k, v in opts.items() if v is not None}
