"""Rules for tasks that do not depend on who runs them: validation and salvaging an id.

Shared by the worker (which refuses bad tasks with a clear error result) and the client
(which refuses them before they reach the bus).
"""

from __future__ import annotations

from typing import Any

import msgspec

from lmteams.agents._messages import NORMALIZERS, STRATEGIES, Task
from lmteams.bus import validate_token
from lmteams.errors import ConfigError

__all__ = ("task_problem", "salvage_task_id", "MAX_TOKENS_LIMIT")

MAX_TOKENS_LIMIT = 8192
MAX_ROUNDS = 10
MAX_AGENTS = 64


def task_problem(task: Task) -> str:
    """Why this task cannot be run, or "" when it can."""
    try:
        validate_token(task.id, "task id")
    except ConfigError as err:
        return str(err)
    checks = (
        (not task.prompt.strip(), "the prompt is empty"),
        (
            not 1 <= task.max_tokens <= MAX_TOKENS_LIMIT,
            f"max_tokens must be between 1 and {MAX_TOKENS_LIMIT}, got {task.max_tokens}",
        ),
        (
            not 0.0 <= task.temperature <= 2.0,
            f"temperature must be between 0 and 2, got {task.temperature}",
        ),
        (task.agents < 1, f"agents must be at least 1, got {task.agents}"),
        (
            task.strategy not in STRATEGIES,
            f"unknown strategy {task.strategy!r}: use one of {', '.join(STRATEGIES)}",
        ),
        (
            task.normalizer not in NORMALIZERS,
            f"unknown normalizer {task.normalizer!r}: use one of {', '.join(NORMALIZERS)}",
        ),
        (not 1 <= task.rounds <= MAX_ROUNDS, f"rounds must be between 1 and {MAX_ROUNDS}"),
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
