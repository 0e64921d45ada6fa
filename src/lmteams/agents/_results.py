"""What a worker writes for a task: the request it runs and the one ``Result`` it stores.

Kept apart from the task path so the answer, the coordinator and every refusal build their
result the same way (same agent name, same timing fields, same facts from a completion).
"""

from __future__ import annotations

import math
import time
from typing import TypedDict

import msgspec

from lmteams.agents._messages import Prompt, Result, Task
from lmteams.bus import Codec, Delivery
from lmteams.hardware import Completion, GenerateRequest

__all__ = ("TASKS", "Facts", "facts", "request_of", "result_of", "refusal")

TASKS: Codec[Task] = Codec(Task)


class Facts(TypedDict):
    device: str
    model: str
    tokens_in: int
    tokens_out: int
    prompt_s: float
    generation_s: float


def facts(completion: Completion) -> Facts:
    """What a completion tells about where and how fast it was made (answers and results)."""
    return {
        "device": completion.device,
        "model": completion.model,
        "tokens_in": completion.tokens_in,
        "tokens_out": completion.tokens_out,
        "prompt_s": completion.timings.prompt_s,
        "generation_s": completion.timings.generation_s,
    }


def request_of(task: Task | Prompt) -> GenerateRequest:
    """What the model is asked, from a queued task or a direct prompt (same fields)."""
    return GenerateRequest(
        prompt=task.prompt,
        system=task.system,
        max_tokens=task.max_tokens,
        temperature=task.temperature,
        seed=task.seed,
    )


def _queue_s(submitted_at: float, started: float) -> float:
    """Seconds the task waited; 0 for a missing or impossible (future, non-finite) stamp."""
    if not math.isfinite(submitted_at) or not 0 < submitted_at <= started:
        return 0.0
    return started - submitted_at


def result_of(
    task: Task,
    agent: str,
    delivery: Delivery,
    started: float,
    *,
    completion: Completion | None = None,
    error: tuple[str, str] | None = None,
) -> Result:
    """The result of one try that ran: the completion's answer, or ``error`` (kind, text)."""
    base = Result(
        task_id=task.id,
        ok=False,
        agent=agent,
        strategy=task.strategy,
        queue_s=_queue_s(task.submitted_at, started),
        total_s=time.time() - started,
        deliveries=delivery.deliveries,
    )
    if completion is None:
        assert error is not None
        return msgspec.structs.replace(base, error_kind=error[0], error=error[1])
    return msgspec.structs.replace(base, ok=True, answer=completion.text, **facts(completion))


def refusal(task_id: str, agent: str, kind: str, reason: str, deliveries: int = 1) -> Result:
    """The error result of a task (or message) that never ran the model."""
    return Result(
        task_id=task_id,
        ok=False,
        error_kind=kind,
        error=reason,
        agent=agent,
        deliveries=deliveries,
    )
