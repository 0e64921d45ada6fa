"""Wire types of the agents layer: tasks, results, progress, membership, direct prompts.

These Structs are the public contract with any NATS client (see the README's wire section):
fields are only ever added with defaults, never retyped, so old agents read new messages.
"""

from __future__ import annotations

from enum import StrEnum

import msgspec

__all__ = (
    "Task",
    "Result",
    "Stage",
    "Progress",
    "Chunk",
    "AgentAnswer",
    "Prompt",
    "Answer",
    "Ping",
    "Pong",
    "Stop",
    "Cancel",
    "STRATEGIES",
)

STRATEGIES = ("single", "vote", "weighted", "debate", "quorum")
"""Answer strategies of the wire contract. ``single`` is built into every agent; the others
run where ``load_strategies()`` registered them (every agent daemon does)."""
NORMALIZERS = ("auto", "number", "yesno", "choice", "text", "exact")


class Task(msgspec.Struct, frozen=True, kw_only=True, tag="task"):
    """A prompt for the team. ``id`` names the result subject ``lmt.<team>.results.<id>``."""

    id: str
    prompt: str
    system: str | None = None
    max_tokens: int = 128
    temperature: float = 0.0
    seed: int | None = None
    agents: int = 1
    strategy: str = "single"
    submitted_at: float = 0.0  # unix seconds, set by the submitter; for queueing time
    normalizer: str = "auto"  # how votes are compared: see NORMALIZERS
    rounds: int = 3  # debate: most rounds before giving up on agreement
    stream: bool = False
    """Publish the answer's text as it is generated, as ``chunk`` messages on
    ``lmt.<team>.stream.<id>`` (strategy ``single`` only); the result is unchanged."""


class AgentAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """One agent's contribution to a result (a vote, or one turn of a debate)."""

    agent: str
    text: str
    device: str = ""
    model: str = ""
    tokens_in: int = 0
    tokens_out: int = 0
    seconds: float = 0.0
    round: int = 0
    normalized: str = ""  # the answer as the tally counted it
    weight: float = 1.0
    public_key: str = ""
    signature: str = ""  # kept so any client can re-verify a quorum


class Result(msgspec.Struct, frozen=True, kw_only=True, tag="result"):
    """The one answer to a task: ``ok`` with ``answer``, or not ok with ``error``."""

    task_id: str
    ok: bool
    answer: str = ""
    error: str = ""
    error_kind: str = ""  # decode | invalid | backend | timeout | ...
    agent: str = ""
    device: str = ""
    model: str = ""
    strategy: str = "single"
    tokens_in: int = 0
    tokens_out: int = 0
    queue_s: float = 0.0
    prompt_s: float = 0.0
    generation_s: float = 0.0
    total_s: float = 0.0
    deliveries: int = 1  # how many times JetStream handed this task out
    answers: tuple[AgentAnswer, ...] = ()
    rounds: int = 1
    messages: int = 0  # bus messages the strategy cost (requests and replies)
    tally: dict[str, float] = {}  # normalized answer -> votes (or weight)
    flagged: tuple[str, ...] = ()  # agents caught equivocating or forging votes


class Stage(StrEnum):
    """Progress stages; on the wire they are plain strings."""

    CLAIMED = "claimed"
    """Taken from the queue and being answered (the detail says which delivery)."""
    DONE = "done"
    FAILED = "failed"
    HANDED_BACK = "handed_back"


class Progress(msgspec.Struct, frozen=True, kw_only=True, tag="progress"):
    """What an agent is doing with a task, published on ``lmt.<team>.progress.<task>``."""

    task_id: str
    agent: str
    stage: Stage
    detail: str = ""
    at: float = 0.0


class Chunk(msgspec.Struct, frozen=True, kw_only=True, tag="chunk"):
    """A piece of a streamed answer, on ``lmt.<team>.stream.<task>``: core NATS, not kept.

    ``seq`` counts from 0 within one try, named by ``agent`` and ``delivery``: a task handed
    to another agent after a crash streams again from the start under its own pair. The
    texts of one try, joined in ``seq`` order, are its answer; ``last`` marks its final chunk.
    """

    task_id: str
    agent: str
    delivery: int = 1
    seq: int = 0
    text: str = ""
    last: bool = False


class Prompt(msgspec.Struct, frozen=True, kw_only=True, tag="prompt"):
    """A direct request to one agent's model (coordinators fan these out)."""

    task_id: str
    prompt: str
    system: str | None = None
    max_tokens: int = 128
    temperature: float = 0.0
    seed: int | None = None
    logprobs: bool = False
    round: int = 0  # debate round (0 for one-shot strategies)
    sign: bool = False  # sign the answer with the agent's key (quorum votes)


class Answer(msgspec.Struct, frozen=True, kw_only=True, tag="answer"):
    task_id: str
    agent: str
    text: str
    device: str = ""
    model: str = ""
    tokens_in: int = 0
    tokens_out: int = 0
    prompt_s: float = 0.0
    generation_s: float = 0.0
    mean_logprob: float | None = None
    round: int = 0
    public_key: str = ""  # the agent's ed25519 (nkeys) public key, when signed
    signature: str = ""  # base64 signature over vote_payload(task_id, round, agent, text)


class Ping(msgspec.Struct, frozen=True, kw_only=True, tag="ping"):
    pass


class Pong(msgspec.Struct, frozen=True, kw_only=True, tag="pong"):
    """An agent's answer to a ``Ping``: alive and serving, with the facts it publishes."""

    agent: str
    state: str = "serving"
    served: int = 0
    mailbox: int = 0
    device: str = ""
    tokens_per_s: float = 0.0
    prompt_tokens_per_s: float = 0.0
    in_flight: int = 0  # tasks this agent is answering now: its load
    model: str = ""
    restarts: int = 0  # times the agent's actor was restarted in this process


class Stop(msgspec.Struct, frozen=True, kw_only=True, tag="stop"):
    """A control message: drain and leave (sent on ``lmt.<team>.control.<agent>``)."""

    reason: str = "requested"


class Cancel(msgspec.Struct, frozen=True, kw_only=True, tag="cancel"):
    """A control message: stop generating for ``task_id`` (a hedged request's loser).

    Sent on ``lmt.<team>.control.<agent>`` rather than to the inbox, because the inbox is a
    mailbox that the very prompt to cancel keeps busy.
    """

    task_id: str
    reason: str = "hedge_lost"
