"""Placement by capacity and hedging of stragglers: pure policy, no bus.

A dispatcher (``lmteams.agents.open_dispatcher``) keeps the load of every agent it knows and
asks a :class:`Placement` which agent gets the next task, and a :class:`HedgePolicy` when a
task has run long enough to be worth a second copy. Keeping the rules here, free of I/O,
lets them be tested exhaustively and reused by a study's offline simulator.

Work is counted in tokens: an agent's expected finish for a task is the generation tokens
already assigned to it plus the task's, over its generation rate, plus the same for prompt
tokens over its prompt rate. Rates come from what agents advertise (a simulated device's
class, a llama.cpp profile); an agent that advertises none is assumed to run at the median
of those that do, so it is neither starved nor flooded until it is known.
"""

from __future__ import annotations

import itertools
import math
import random
import statistics
from collections.abc import Sequence
from typing import ClassVar, Protocol, runtime_checkable

import msgspec

from lmteams.errors import ConfigError
from lmteams.hardware._detect import physical_cores
from lmteams.hardware._profile import cached_profiles, profile_key
from lmteams.hardware._sim import SimulatedBackend
from lmteams.hardware._types import Backend, BackendConfig

__all__ = (
    "AgentLoad",
    "Placement",
    "LeastExpectedCompletion",
    "RoundRobin",
    "RandomPlacement",
    "HedgePolicy",
    "expected_finish",
    "stand_in_rates",
    "advertised_rates",
)

_FALLBACK_RATE = 1.0  # tokens/s when no agent advertises any rate: only the order matters then


class AgentLoad(msgspec.Struct, frozen=True, kw_only=True):
    """What a dispatcher knows of one agent when it places a task.

    ``queued_tokens`` / ``queued_prompt_tokens`` count work already assigned to the agent and
    not yet finished (waiting or running); ``in_flight`` is how many tasks that is. Rates of
    0 mean unknown.
    """

    agent: str
    device: str = ""
    tokens_per_s: float = 0.0
    prompt_tokens_per_s: float = 0.0
    queued_tokens: float = 0.0
    queued_prompt_tokens: float = 0.0
    in_flight: int = 0


def stand_in_rates(loads: Sequence[AgentLoad]) -> tuple[float, float]:
    """(generation, prompt) rates to assume for agents among ``loads`` that advertise none."""
    gen = [load.tokens_per_s for load in loads if load.tokens_per_s > 0]
    pp = [load.prompt_tokens_per_s for load in loads if load.prompt_tokens_per_s > 0]
    return (
        statistics.median(gen) if gen else _FALLBACK_RATE,
        statistics.median(pp) if pp else 0.0,
    )


def expected_finish(
    load: AgentLoad,
    task_tokens: float,
    prompt_tokens: float = 0.0,
    *,
    default_rates: tuple[float, float] = (_FALLBACK_RATE, 0.0),
) -> float:
    """Seconds until ``load``'s agent would finish a new task appended to its queue.

    Prompt tokens count only when a prompt rate is known (else prompt time is taken as small
    next to generation, as it is for every device in ``DEVICE_CLASSES``).
    """
    gen = load.tokens_per_s if load.tokens_per_s > 0 else default_rates[0]
    pp = load.prompt_tokens_per_s if load.prompt_tokens_per_s > 0 else default_rates[1]
    seconds = (load.queued_tokens + task_tokens) / gen
    if pp > 0:
        seconds += (load.queued_prompt_tokens + prompt_tokens) / pp
    return seconds


def _check(loads: Sequence[AgentLoad], task_tokens: float) -> None:
    if not loads:
        raise ConfigError("no agents to place a task on: wait until at least one has joined")
    if not (task_tokens >= 0 and math.isfinite(task_tokens)):
        raise ConfigError(f"task_tokens must be a finite number >= 0, got {task_tokens!r}")


@runtime_checkable
class Placement(Protocol):
    """Chooses the agent for a task; called with every agent that may take work.

    ``rebalance`` tells the dispatcher whether it may move a task that waits (not yet sent)
    to an agent that runs dry, when that agent would finish it sooner: the late correction
    that capacity-aware placement needs and the baselines deliberately do without.
    """

    rebalance: ClassVar[bool]

    def choose(
        self, loads: Sequence[AgentLoad], task_tokens: float, prompt_tokens: float = 0.0
    ) -> str: ...


class LeastExpectedCompletion:
    """The agent whose queue plus this task would finish first at its advertised rate.

    Ties go to the agent whose name sorts first, so the same loads always give the same
    choice (reproducible studies, testable dispatchers).
    """

    rebalance: ClassVar[bool] = True

    def choose(
        self, loads: Sequence[AgentLoad], task_tokens: float, prompt_tokens: float = 0.0
    ) -> str:
        _check(loads, task_tokens)
        defaults = stand_in_rates(loads)
        best = min(
            loads,
            key=lambda load: (
                expected_finish(load, task_tokens, prompt_tokens, default_rates=defaults),
                load.agent,
            ),
        )
        return best.agent

    def __repr__(self) -> str:
        return "LeastExpectedCompletion()"


class RoundRobin:
    """Each agent in turn by name, blind to speed and load: the first baseline."""

    rebalance: ClassVar[bool] = False

    def __init__(self) -> None:
        self._counter = itertools.count()

    def choose(
        self, loads: Sequence[AgentLoad], task_tokens: float, prompt_tokens: float = 0.0
    ) -> str:
        _check(loads, task_tokens)
        names = sorted(load.agent for load in loads)
        return names[next(self._counter) % len(names)]

    def __repr__(self) -> str:
        return "RoundRobin()"


class RandomPlacement:
    """A uniformly random agent from a seeded generator: the second baseline."""

    rebalance: ClassVar[bool] = False

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self._rng = random.Random(seed)

    def choose(
        self, loads: Sequence[AgentLoad], task_tokens: float, prompt_tokens: float = 0.0
    ) -> str:
        _check(loads, task_tokens)
        names = sorted(load.agent for load in loads)  # sorted: the seed alone fixes the run
        return self._rng.choice(names)

    def __repr__(self) -> str:
        return f"RandomPlacement(seed={self.seed})"


class HedgePolicy(msgspec.Struct, frozen=True, kw_only=True):
    """When to send a second copy of a task that is taking too long (at most one copy).

    A task is hedged once it has run ``max(factor, q-quantile of observed slowness)`` times
    its expected time, and never sooner than ``min_delay_s``. Slowness is observed latency
    over expected latency, so one pooled sample serves fast and slow devices alike; until
    ``min_samples`` are in, ``factor`` alone decides. Hedging at a high quantile bounds the
    extra load to about ``1 - quantile`` of tasks.
    """

    factor: float = 2.0
    quantile: float = 0.95
    min_samples: int = 20
    min_delay_s: float = 0.0

    def __post_init__(self) -> None:
        if not (self.factor >= 1.0 and math.isfinite(self.factor)):
            raise ConfigError(f"HedgePolicy.factor must be >= 1, got {self.factor}")
        if not 0.0 < self.quantile < 1.0:
            raise ConfigError(f"HedgePolicy.quantile must be in (0, 1), got {self.quantile}")
        if self.min_samples < 1:
            raise ConfigError(f"HedgePolicy.min_samples must be >= 1, got {self.min_samples}")
        if self.min_delay_s < 0:
            raise ConfigError(f"HedgePolicy.min_delay_s must be >= 0, got {self.min_delay_s}")

    def delay(self, expected_s: float, slowness: Sequence[float] = ()) -> float:
        """Seconds after sending a task (expected to take ``expected_s``) to hedge it."""
        multiple = self.factor
        if len(slowness) >= self.min_samples:
            ordered = sorted(slowness)
            index = min(len(ordered) - 1, math.ceil(self.quantile * len(ordered)) - 1)
            multiple = max(multiple, ordered[max(0, index)])
        return max(self.min_delay_s, multiple * max(0.0, expected_s))


def advertised_rates(backend: Backend, config: BackendConfig) -> tuple[float, float]:
    """(generation, prompt) tokens/s an agent should announce; (0, 0) when unknown.

    A simulated device runs at its class's rates slowed by its time scale (that is what a
    dispatcher will see on the wall clock); a llama.cpp device at its cached profile for this
    model and thread count, if ``lmteams hardware profile`` has measured one, and an
    OpenAI-compatible server likewise, by its device label (``openai:<host>:<port>``).
    """
    if isinstance(backend, SimulatedBackend):
        cls = backend.device_class
        slow = backend.time_scale if backend.time_scale > 0 else 1.0
        return cls.generation_tokens_per_s / slow, cls.prompt_tokens_per_s / slow
    threads = config.n_threads or physical_cores()
    hit = cached_profiles().get(profile_key(backend.device, config.model, threads))
    if hit is None:
        return 0.0, 0.0
    return hit.generation_tokens_per_s, hit.prompt_tokens_per_s
