"""The one place that knows the subject tree and the JetStream names derived from it.

Every subject lmteams uses is built here, so permissions can be granted by subtree
(``lmt.<team>.role.>``) and a plain NATS client can be told exactly where to publish.
"""

from __future__ import annotations

import base64
import re
from enum import StrEnum

import msgspec

from lmteams.errors import ConfigError

__all__ = (
    "Subjects",
    "SubjectKind",
    "ProtocolVerb",
    "PROTOCOL_AGENT",
    "ParsedSubject",
    "validate_token",
    "inbox_prefix",
    "is_reply_address",
    "TEAM_BUCKETS",
    "KEYS_BUCKET",
    "JOBS_BUCKET",
    "JOB_REQUESTS_CONSUMER",
    "JOB_REPORTS_CONSUMER",
    "TASKS_CONSUMER",
)

PREFIX = "lmt"
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_INBOX = "_INBOX"

KEYS_BUCKET = "keys"
"""The KV bucket binding each member name to its public key (first binding wins); on a
secured bus each agent may write only its own name in it."""

JOBS_BUCKET = "jobs"
"""The KV bucket holding every job's record and its subtasks' states (see ``lmteams.jobs``)."""

TEAM_BUCKETS = ("leases", "state", "claims", KEYS_BUCKET, JOBS_BUCKET)
"""KV buckets agents read and write: election leases, fenced leader state, claims, keys, jobs."""

JOB_REQUESTS_CONSUMER = "admit"
"""The durable consumer on the jobs stream from which agents take job requests in turn."""

JOB_REPORTS_CONSUMER = "coordinator"
"""The durable consumer on the jobs stream from which each coordinator in turn takes reports."""

TASKS_CONSUMER = "workers"
"""The durable pull consumer on the tasks stream that every agent of a team shares."""

PROTOCOL_AGENT = "lmteams"
"""The ``agent`` token of every lmteams agent's Synadia Agent Protocol subjects, as
``claude-code`` is Claude Code's: ``agents.<verb>.lmteams.<team>.<agent-id>``."""

_PROTOCOL_ROOT = "agents"
_PROTOCOL_PLAIN = re.compile(r"^[a-z0-9_-]+$")


class ProtocolVerb(StrEnum):
    """The verbs of the protocol's subjects that an lmteams agent serves or beats on."""

    PROMPT = "prompt"
    STATUS = "status"
    HEARTBEAT = "hb"


def _protocol_token(value: str) -> str:
    """A name as the protocol SDKs write it in a subject token (``AgentSubject.new``).

    Lowercase names pass as they are; any other (an lmteams name may hold capitals) becomes
    its base64-url encoding without padding, so ``Alice`` is ``QWxpY2U``. Kept here, not
    taken from the SDK, so the bus (and its permissions) never imports the protocol's
    packages; a test pins it to the SDK's escaping.
    """
    if _PROTOCOL_PLAIN.match(value):
        return value
    return base64.urlsafe_b64encode(value.encode()).rstrip(b"=").decode("ascii")


def is_reply_address(subject: str) -> bool:
    """Whether an agent may answer a request on ``subject``.

    A request names its own reply subject, so an outsider could point an agent's reply at a
    team subject (a task's result subject, stored by the results stream) or at the server's
    API. Replies go to inboxes; never into the team tree or to ``$``-subjects.
    """
    return bool(subject) and not subject.startswith((f"{PREFIX}.", "$"))


def validate_token(value: str, what: str) -> str:
    """A team, agent, role or task id must be one NATS subject token (no dots or wildcards)."""
    if not _TOKEN.match(value):
        raise ConfigError(
            f"invalid {what} {value!r}: use 1-128 letters, digits, '_' or '-' "
            "(no dots, spaces or wildcards: it becomes one NATS subject token)"
        )
    return value


def inbox_prefix(identity: str) -> str:
    """The reply-subject prefix of one bus identity, ``_INBOX_<identity>``.

    nats-py puts every reply (requests, JetStream API answers, pull deliveries) under its
    inbox prefix; one prefix per identity lets a secured bus allow each user only its own
    replies, where the shared ``_INBOX.>`` would let any client read every agent's tasks.
    """
    return f"{_INBOX}_{validate_token(identity, 'inbox identity')}"


class SubjectKind(StrEnum):
    """The branches of a team's subject tree."""

    TASKS = "tasks"
    AGENT = "agent"
    ROLE = "role"
    RESULTS = "results"
    PROGRESS = "progress"
    STREAM = "stream"
    GOSSIP = "gossip"
    CONTROL = "control"
    DEAD = "dead"
    VOTE = "vote"
    JOBS = "jobs"


class ParsedSubject(msgspec.Struct, frozen=True, kw_only=True):
    """A subject taken apart: ``lmt.<team>.<kind>[.<name>]``."""

    team: str
    kind: SubjectKind
    name: str = ""


class Subjects(msgspec.Struct, frozen=True):
    """Subject and stream names for one team."""

    team: str

    def __post_init__(self) -> None:
        validate_token(self.team, "team name")

    @property
    def root(self) -> str:
        return f"{PREFIX}.{self.team}"

    # --- core subjects ---------------------------------------------------------------------
    @property
    def tasks(self) -> str:
        return f"{self.root}.tasks"

    def agent(self, agent_id: str) -> str:
        return f"{self.root}.agent.{validate_token(agent_id, 'agent id')}"

    def role(self, role: str) -> str:
        return f"{self.root}.role.{validate_token(role, 'role')}"

    def results(self, task_id: str) -> str:
        return f"{self.root}.results.{validate_token(task_id, 'task id')}"

    def progress(self, task_id: str) -> str:
        return f"{self.root}.progress.{validate_token(task_id, 'task id')}"

    def stream(self, task_id: str) -> str:
        """A streamed task's chunks (core NATS: no stream keeps them)."""
        return f"{self.root}.stream.{validate_token(task_id, 'task id')}"

    def gossip(self, topic: str) -> str:
        return f"{self.root}.gossip.{validate_token(topic, 'gossip topic')}"

    def gossip_member(self, member: str) -> str:
        """A gossip member's SWIM inbox, ``lmt.<team>.gossip.swim.<member>``.

        Two tokens under ``gossip`` so ``lmt.<team>.gossip.swim.>`` watches all SWIM traffic
        and no member name can collide with another gossip topic (``swim-seed``).
        """
        return f"{self.root}.gossip.swim.{validate_token(member, 'gossip member')}"

    @property
    def gossip_seed(self) -> str:
        """Where a joining gossip member finds any current member (a queue group)."""
        return f"{self.root}.gossip.swim-seed"

    def control(self, agent_id: str) -> str:
        return f"{self.root}.control.{validate_token(agent_id, 'agent id')}"

    def vote(self, task_id: str) -> str:
        """Where agents broadcast their signed votes on a task, so conflicting ones show."""
        return f"{self.root}.vote.{validate_token(task_id, 'task id')}"

    # --- jobs (lmteams.jobs): requests, reports and results live in the jobs stream --------
    @property
    def job_requests(self) -> str:
        """Where anyone submits or cancels a job (stream-backed; the job id dedupes)."""
        return f"{self.root}.jobs.request"

    def job_agent(self, agent_id: str) -> str:
        """An agent's job inbox: assignments and cancels from the coordinator (core NATS)."""
        return f"{self.root}.jobs.agent.{validate_token(agent_id, 'agent id')}"

    def job_lease(self, job_id: str) -> str:
        """Where an agent working on a centralized job says it still is (lease renewals)."""
        return f"{self.root}.jobs.lease.{validate_token(job_id, 'job id')}"

    @property
    def job_reports(self) -> str:
        """Every job's reports (the coordinator's consumer filter)."""
        return f"{self.root}.jobs.report.>"

    @property
    def job_leases(self) -> str:
        """Every job's lease renewals (what the coordinator listens to)."""
        return f"{self.root}.jobs.lease.>"

    def job_report(self, job_id: str) -> str:
        """Where an agent reports a finished attempt to the coordinator (stream-backed)."""
        return f"{self.root}.jobs.report.{validate_token(job_id, 'job id')}"

    def job_result(self, job_id: str) -> str:
        """The job's one result, kept in the jobs stream."""
        return f"{self.root}.jobs.result.{validate_token(job_id, 'job id')}"

    @property
    def jobs_stream(self) -> str:
        """Job requests and attempt reports: what must outlive a coordinator."""
        return f"LMT_{self.team}_JOBS"

    @property
    def job_results_stream(self) -> str:
        """One result per job, the first kept (as task results are)."""
        return f"LMT_{self.team}_JOBRESULTS"

    # --- the Synadia Agent Protocol (lmteams.interop): agents.<verb>.lmteams.<team>.<id> ---
    def protocol(self, verb: ProtocolVerb, agent_id: str | None = None) -> str:
        """Agent ``agent_id``'s protocol subject for ``verb`` (owner = team, session = agent
        id, escaped as the SDKs escape them); with no agent, every agent of the team's."""
        session = "*" if agent_id is None else _protocol_token(validate_token(agent_id, "agent id"))
        owner = _protocol_token(self.team)
        return f"{_PROTOCOL_ROOT}.{verb.value}.{PROTOCOL_AGENT}.{owner}.{session}"

    def dead(self, reason: str) -> str:
        return f"{self.root}.dead.{validate_token(reason, 'dead-letter reason')}"

    def all(self, kind: SubjectKind) -> str:
        """The wildcard covering one branch, e.g. ``lmt.t.results.>``."""
        return f"{self.root}.{kind.value}.>" if kind is not SubjectKind.TASKS else self.tasks

    # --- JetStream names -------------------------------------------------------------------
    @property
    def tasks_stream(self) -> str:
        return f"LMT_{self.team}_TASKS"

    @property
    def results_stream(self) -> str:
        return f"LMT_{self.team}_RESULTS"

    @property
    def dead_stream(self) -> str:
        return f"LMT_{self.team}_DEAD"

    def kv_bucket(self, name: str) -> str:
        return f"lmt_{self.team}_{validate_token(name, 'bucket name')}"

    # --- parsing ---------------------------------------------------------------------------
    @staticmethod
    def parse(subject: str) -> ParsedSubject:
        """Take an lmteams subject apart; raise ``ConfigError`` for anything outside the tree."""
        parts = subject.split(".")
        if len(parts) < 3 or parts[0] != PREFIX:
            raise ConfigError(f"not an lmteams subject: {subject!r} (expected {PREFIX}.<team>.…)")
        try:
            kind = SubjectKind(parts[2])
        except ValueError:
            raise ConfigError(f"unknown subject branch {parts[2]!r} in {subject!r}") from None
        name = ".".join(parts[3:])
        if kind is SubjectKind.TASKS and name:
            raise ConfigError(f"the tasks subject takes no suffix: {subject!r}")
        if kind is not SubjectKind.TASKS and not name:
            raise ConfigError(f"subject {subject!r} lacks its {kind.value} name")
        return ParsedSubject(team=parts[1], kind=kind, name=name)
