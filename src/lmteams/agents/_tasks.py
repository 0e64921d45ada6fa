"""Rules for tasks that do not depend on who runs them: making, validating, salvaging an id.

Shared by the worker (which refuses bad tasks with a clear error result), the client and the
CLI (which build every task with ``new_task`` and so refuse bad ones before they reach the bus).
"""

from __future__ import annotations

import time
from typing import Any, TypedDict, Unpack

import msgspec

from lmteams.agents._messages import NORMALIZERS, STRATEGIES, Prompt, Task
from lmteams.bus import new_id, validate_token
from lmteams.errors import ConfigError

__all__ = (
    "TaskOptions",
    "new_task",
    "check_task",
    "task_problem",
    "generation_problem",
    "salvage_task_id",
    "MAX_TOKENS_LIMIT",
)

MAX_TOKENS_LIMIT = 8192
MAX_PROMPT_BYTES = 128 * 1024  # prompt + system, UTF-8; an agent may set its own limit
MAX_ROUNDS = 10
MAX_AGENTS = 64


class TaskOptions(TypedDict, total=False):
    """What a submitter may choose about a task; anything left out takes ``Task``'s default."""

    system: str | None
    max_tokens: int
    temperature: float
    seed: int | None
    agents: int
    strategy: str
    normalizer: str
    rounds: int
    stream: bool


def new_task(prompt: str, *, task_id: str | None = None, **options: Unpack[TaskOptions]) -> Task:
    """The one way a submitter makes a task: a fresh id unless given, the submission time, and
    validation, so the Python client and the CLI cannot drift apart on what they send."""
    task = Task(id=task_id or f"t{new_id()}", prompt=prompt, submitted_at=time.time(), **options)
    return check_task(task)


def check_task(task: Task) -> Task:
    """``task`` unchanged, or ``ConfigError`` saying which field is wrong and why."""
    problem = task_problem(task)
    if problem:
        raise ConfigError(f"task {task.id!r} is invalid: {problem}")
    return task


def generation_problem(
    msg: Task | Prompt, *, max_prompt_bytes: int = MAX_PROMPT_BYTES, what: str = "task id"
) -> str:
    """Why a model must not be asked this (a task, or a coordinator's direct prompt), or "".

    The bounds keep one message from occupying an agent: its id must name a subject, its
    prompt fit the byte limit, its answer at most ``MAX_TOKENS_LIMIT`` tokens.
    """
    ident = msg.id if isinstance(msg, Task) else msg.task_id
    try:
        validate_token(ident, what)
    except ConfigError as err:
        return str(err)
    text = msg.prompt + (msg.system or "")
    prompt_bytes = len(text.encode("utf-8", "surrogatepass"))  # never raises
    checks = (
        (not msg.prompt.strip(), "the prompt is empty"),
        (
            prompt_bytes > max_prompt_bytes,
            f"the prompt is {prompt_bytes} bytes with the system prompt, over the limit of "
            f"{max_prompt_bytes} bytes (max_prompt_bytes)",
        ),
        (
            not 1 <= msg.max_tokens <= MAX_TOKENS_LIMIT,
            f"max_tokens must be between 1 and {MAX_TOKENS_LIMIT}, got {msg.max_tokens}",
        ),
        (
            not 0.0 <= msg.temperature <= 2.0,
            f"temperature must be between 0 and 2, got {msg.temperature}",
        ),
    )
    return next((message for failed, message in checks if failed), "")


def task_problem(task: Task, *, max_prompt_bytes: int = MAX_PROMPT_BYTES) -> str:
    """Why this task cannot be run, or "" when it can."""
    problem = generation_problem(task, max_prompt_bytes=max_prompt_bytes)
    if problem:
        return problem
    checks = (
        (task.agents < 1, f"agents must be at least 1, got {task.agents}"),
        (
            task.strategy not in STRATEGIES,
            f"unknown strategy {task.strategy!r}: use one of {', '.join(STRATEGIES)}",
        ),
        (
            task.normalizer not in NORMALIZERS,
            f"unknown normalizer {task.normalizer!r}: use one of {', '.join(NORMALIZERS)}",
        ),
        (
            not 1 <= task.rounds <= MAX_ROUNDS,
            f"rounds must be between 1 and {MAX_ROUNDS}, got {task.rounds}",
        ),
        (task.agents > MAX_AGENTS, f"agents must be at most {MAX_AGENTS}, got {task.agents}"),
        (
            task.strategy == "single" and task.agents != 1,
            f"strategy 'single' answers with one agent, got agents={task.agents}",
        ),
    )
    return next((message for failed, message in checks if failed), "")


def salvage_task_id(data: bytes, *, json: bool) -> str:
    """Best effort: the ``id`` of a task that failed strict decoding, so its caller hears why."""
    try:
        loose: Any = msgspec.json.decode(data) if json else msgspec.msgpack.decode(data)
    except (msgspec.DecodeError, ValueError, RecursionError):  # hostile nesting: no id
        return ""
    task_id = loose.get("id") if isinstance(loose, dict) else None
    if not isinstance(task_id, str):
        return ""
    try:
        return validate_token(task_id, "task id")
    except ConfigError:
        return ""
