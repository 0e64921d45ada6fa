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

from lmteams.bus._subjects import (
    JOB_REPORTS_CONSUMER,
    JOB_REQUESTS_CONSUMER,
    JOBS_BUCKET,
    KEYS_BUCKET,
    TASKS_CONSUMER,
    TEAM_BUCKETS,
    ProtocolVerb,
    SubjectKind,
    Subjects,
    inbox_prefix,
    validate_token,
)
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
    "identity_of",
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
        who = self.identity
        return f"Credential(name={self.name!r}, role={self.role.value!r}, id={who!r}, ***)"

    @property
    def identity(self) -> str:
        """What the server knows this user by, and what names its inbox prefix."""
        return self.public_key or self.user

    __str__ = __repr__


def new_nkey() -> tuple[str, str]:
    """A fresh user nkey: (seed, public key). The nkeys package decodes but cannot generate."""
    seed = nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER)
    public = nkeys.from_seed(bytearray(seed)).public_key
    return seed.decode(), public.decode()


def identity_of(*, nkey_seed: str | None = None, user: str | None = None) -> str | None:
    """The identity a connection authenticates as (an nkey's public key, or the user name),
    which names its inbox prefix; None when it presents neither.

    ``nkey_seed`` is the path of a seed file, as ``open_bus`` takes it.
    """
    if nkey_seed:
        try:
            seed = Path(nkey_seed).expanduser().read_bytes().strip()
            return str(nkeys.from_seed(bytearray(seed)).public_key.decode())
        except (OSError, nkeys.NkeysError, ValueError) as exc:
            raise ConfigError(f"cannot read the nkey seed in {nkey_seed}: {exc}") from exc
    if user:
        return user
    return None


# JetStream API verbs that change or destroy state: never granted to agents or clients,
# and denied explicitly so that a later, wider allow cannot hand them out by accident
_DESTRUCTIVE = (
    "$JS.API.STREAM.CREATE.>",
    "$JS.API.STREAM.UPDATE.>",
    "$JS.API.STREAM.DELETE.>",
    "$JS.API.STREAM.PURGE.>",
    "$JS.API.STREAM.MSG.DELETE.>",
    "$JS.API.STREAM.SNAPSHOT.>",
    "$JS.API.STREAM.RESTORE.>",
    "$JS.API.STREAM.PEER.>",
    "$JS.API.STREAM.LEADER.>",
    "$JS.API.CONSUMER.DELETE.>",
    "$JS.API.CONSUMER.PAUSE.>",
    "$JS.API.CONSUMER.RESET.>",
    "$JS.API.CONSUMER.LEADER.>",
    "$JS.API.CONSUMER.DURABLE.>",
    "$JS.API.META.>",
    "$JS.API.ACCOUNT.>",
    "$JS.API.SERVER.>",
)


def _stream_reads(stream: str) -> list[str]:
    """Read one stored message (``get_last_msg``, KV ``get``): both API forms, read only."""
    return [
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.STREAM.MSG.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.>",
    ]


def _kv_reads(stream: str) -> list[str]:
    """Read and watch a bucket (``job status``, ``job list``, the live view); no writes."""
    return [
        *_stream_reads(stream),
        f"$JS.API.CONSUMER.CREATE.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}.>",
        f"$JS.API.CONSUMER.INFO.{stream}.>",
    ]


def _team_streams(subjects: Subjects) -> list[str]:
    """What ``ensure_team_streams`` needs to find the operator's streams: INFO, never CREATE."""
    streams = (
        subjects.tasks_stream,
        subjects.results_stream,
        subjects.dead_stream,
        subjects.jobs_stream,
        subjects.job_results_stream,
    )
    return ["$JS.API.INFO", *(f"$JS.API.STREAM.INFO.{s}" for s in streams)]


def _work_queue(subjects: Subjects) -> list[str]:
    """Pull tasks from the team's shared consumer and settle them; no consumer may be made,
    changed or deleted (a new consumer on a work queue would steal tasks)."""
    tasks, durable = subjects.tasks_stream, TASKS_CONSUMER
    return [
        f"$JS.API.CONSUMER.INFO.{tasks}.{durable}",
        f"$JS.API.CONSUMER.MSG.NEXT.{tasks}.{durable}",
        f"$JS.ACK.{tasks}.>",
    ]


def _kv_buckets(subjects: Subjects, agent: str) -> list[str]:
    """The team's KV buckets as nats-py's ``KeyValue`` uses them.

    ``key_value()`` reads the stream's info; ``get`` is a (direct) message get; ``create``,
    ``update``, ``put`` and ``delete`` are publishes on ``$KV.<bucket>.<key>``; ``keys`` and
    ``watch`` make an ephemeral ordered consumer and read its info. Creating or deleting a
    bucket is not here. In the keys bucket the agent writes only its own name: the binding
    of its public key is then the credential's word, not anyone's.
    """
    allow: list[str] = []
    for name in TEAM_BUCKETS:
        bucket = subjects.kv_bucket(name)
        stream = f"KV_{bucket}"
        writes = f"$KV.{bucket}.{agent}" if name == KEYS_BUCKET else f"$KV.{bucket}.>"
        allow += [writes, *_stream_reads(stream)]
        allow += [f"$JS.API.CONSUMER.CREATE.{stream}", f"$JS.API.CONSUMER.CREATE.{stream}.>"]
        allow += [f"$JS.API.CONSUMER.INFO.{stream}.>"]
    return allow


def _jobs(subjects: Subjects) -> list[str]:
    """An agent's part in jobs: take requests and reports from the shared consumers (which
    the operator made), publish assignments, renewals, reports and results."""
    stream = subjects.jobs_stream
    allow = [
        f"{subjects.root}.jobs.agent.*",
        subjects.job_leases,
        subjects.job_reports,
        f"{subjects.root}.jobs.result.>",
        *_stream_reads(subjects.job_results_stream),
        f"$JS.ACK.{stream}.>",
    ]
    for durable in (JOB_REQUESTS_CONSUMER, JOB_REPORTS_CONSUMER):
        allow += [
            f"$JS.API.CONSUMER.INFO.{stream}.{durable}",
            f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}",
        ]
    return allow


def _own_inbox(identity: str) -> str:
    return f"{inbox_prefix(identity)}.>"


# --- the Synadia Agent Protocol (lmteams.interop.protocol_service) ----------------------

_MICRO_SERVICE = "agents"
"""The NATS micro service name every protocol agent registers under."""

STREAMED_REPLY_MAX = 100_000
"""Replies an agent may send to one request it received (nats-server ``allow_responses.max``).

A protocol prompt is answered by a stream on the caller's reply subject: an ack, keep-alive
acks every 30 s, ``response`` chunks and an empty terminator; ``allow_responses: true`` means
one reply within 2 minutes (nats-server's defaults), which cuts a stream after its ack. The
server takes any positive count (negative means unlimited, 0 its default of 1): 100 000
covers one chunk per token at 160 tokens/s for the whole of ``STREAMED_REPLY_TTL``, and keeps
a bound on what one request can make an agent send back. nats-server has no per-subject
response limit, so the same bound holds for the agent's replies to asks and SWIM probes.
"""

STREAMED_REPLY_TTL = "10m"
"""How long after a request an agent may still reply to it (``allow_responses.expires``):
the caller SDKs' longest wait for a whole answer (``DEFAULT_PROMPT_MAX_WAIT_S``, 600 s), past
which no caller listens. nats-server takes a Go duration (negative: unlimited, 0: 2m)."""


def _micro_discovery() -> list[str]:
    """What nats-py's micro service subscribes to: ``$SRV.<verb>[.agents[.<instance>]]``.

    Only the ``agents`` service's own subjects; answers go back as replies.
    """
    allow: list[str] = []
    for verb in ("PING", "INFO", "STATS"):
        allow += [
            f"$SRV.{verb}",
            f"$SRV.{verb}.{_MICRO_SERVICE}",
            f"$SRV.{verb}.{_MICRO_SERVICE}.*",
        ]
    return allow


def _discover_agents() -> list[str]:
    """What a caller publishes to find protocol agents (``$SRV.PING/INFO.agents[.<id>]``)."""
    return [
        f"$SRV.{verb}.{_MICRO_SERVICE}{suffix}"
        for verb in ("PING", "INFO")
        for suffix in ("", ".*")
    ]


_CALLER_INBOX = "_INBOX.agents.>"
"""Where the caller SDK takes every protocol reply (discovery answers, prompt streams). The
SDK fixes this prefix for all its users, so it cannot be one identity's: a client holding it
may read protocol answers meant for another caller (never prompts, never task bodies)."""

_HEARTBEATS = "agents.hb.*.*.*"
"""The caller SDK watches every protocol heartbeat before it discovers (protocol §8.5); a
heartbeat is a public presence announcement by design."""


def agent_permissions(subjects: Subjects, agent: str, *, identity: str = "") -> dict[str, Any]:
    """What agent ``agent`` may do: serve its inbox, roles and control; publish results.

    Everything not listed is refused. Publishing on control subjects and every JetStream
    verb that changes a stream or consumer are also denied explicitly (a deny wins over any
    allow). Subscriptions allow only the agent's own inbox, control and SWIM subjects and
    its own reply prefix; replies to others' requests go through ``allow_responses``.
    """
    validate_token(agent, "agent name")
    prompt, status = (
        subjects.protocol(v, agent) for v in (ProtocolVerb.PROMPT, ProtocolVerb.STATUS)
    )
    return {
        "publish": {
            "allow": [
                subjects.all(SubjectKind.RESULTS),
                subjects.all(SubjectKind.PROGRESS),
                subjects.all(SubjectKind.STREAM),  # streamed answers' chunks
                subjects.all(SubjectKind.GOSSIP),
                subjects.all(SubjectKind.DEAD),
                subjects.all(SubjectKind.VOTE),
                subjects.all(SubjectKind.AGENT),  # asks to peers
                subjects.all(SubjectKind.ROLE),
                *_team_streams(subjects),
                *_stream_reads(subjects.results_stream),  # "already answered?" before work
                *_work_queue(subjects),
                *_kv_buckets(subjects, agent),
                *_jobs(subjects),
                subjects.protocol(ProtocolVerb.HEARTBEAT, agent),  # its own heartbeats only
            ],
            "deny": [subjects.all(SubjectKind.CONTROL), subjects.job_requests, *_DESTRUCTIVE],
        },
        "subscribe": {
            "allow": [
                subjects.agent(agent),
                subjects.all(SubjectKind.ROLE),
                subjects.control(agent),
                subjects.gossip_member(agent),
                subjects.gossip_seed,
                subjects.job_agent(agent),
                subjects.job_leases,  # the coordinator's: any agent may hold the lease
                subjects.all(SubjectKind.VOTE),
                _own_inbox(identity or agent),
                prompt,  # a protocol agent serves its own prompt and status subjects only
                status,
                *_micro_discovery(),
            ],
        },
        # replies to asks, SWIM probes and protocol requests, whatever the asker's inbox; a
        # protocol answer is a stream of replies (see STREAMED_REPLY_MAX)
        "allow_responses": {"max": STREAMED_REPLY_MAX, "expires": STREAMED_REPLY_TTL},
    }


def client_permissions(subjects: Subjects, *, identity: str = "client") -> dict[str, Any]:
    """What a client may do: submit tasks, read results and progress, nothing of agents.

    A client never sees another client's prompts: it may not subscribe to the tasks
    subject, read the tasks stream, pull from its consumer or listen on any inbox but its
    own (the agents' inboxes carry the task bodies they pull). It reads the membership as
    an observer (a sync on the seed subject) and the key bindings, and writes neither.

    As a protocol caller it may discover agents and prompt or ask the status of the team's
    (``agents.prompt|status.lmteams.<team>.*``), never serve on those subjects or beat as an
    agent; it reads replies on the caller SDK's shared inbox (see ``_CALLER_INBOX``).
    """
    return {
        "publish": {
            "allow": [
                subjects.tasks,
                subjects.job_requests,  # submit and cancel jobs
                subjects.gossip_seed,  # `lmteams status` asks a member for its view
                *_team_streams(subjects),
                *_stream_reads(subjects.results_stream),
                *_stream_reads(f"KV_{subjects.kv_bucket(KEYS_BUCKET)}"),
                *_stream_reads(subjects.job_results_stream),
                *_kv_reads(f"KV_{subjects.kv_bucket(JOBS_BUCKET)}"),
                *_discover_agents(),
                subjects.protocol(ProtocolVerb.PROMPT),
                subjects.protocol(ProtocolVerb.STATUS),
            ],
            "deny": [*_DESTRUCTIVE],
        },
        "subscribe": {
            "allow": [
                subjects.all(SubjectKind.RESULTS),
                subjects.all(SubjectKind.PROGRESS),
                subjects.all(SubjectKind.STREAM),
                f"{subjects.root}.jobs.result.>",
                _own_inbox(identity),
                _CALLER_INBOX,
                _HEARTBEATS,
            ],
        },
    }


def admin_permissions() -> dict[str, Any]:
    """The operator (``lmteams up``, ``lmteams bus up --team``, tests): everything,
    including creating the team's streams, consumer and buckets."""
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
            return agent_permissions(subjects, cred.name, identity=cred.identity)
        if cred.role is Role.CLIENT:
            return client_permissions(subjects, identity=cred.identity)
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
    # escaped, two names could share a protocol subject, and each would read the other's prompts
    prompts = {Subjects(team).protocol(ProtocolVerb.PROMPT, a) for a in agent_names}
    if len(prompts) != len(agent_names):
        raise ConfigError(
            f"agent names {list(agent_names)} collide as protocol subject tokens "
            "(a name with capitals is written base64-encoded there): rename one"
        )

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
