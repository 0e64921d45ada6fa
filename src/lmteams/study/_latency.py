"""A simulated backend whose call latency follows the paper's measured LLM calls.

The device classes in :mod:`lmteams.hardware` model a small local model; the paper's agents
called large hosted models, whose latency is dominated by queueing and long replies and is
heavy-tailed. To replay the paper's conditions, a study agent can draw each call's latency
from a lognormal fitted to ``events.parquet`` (or resample the measured latencies directly),
scaled by the subtask's size relative to the paper's typical task, and sleep for it times a
``time_scale`` so a whole sweep runs in seconds.

A decentralized agent choosing with its model (``choose = "model"``) sends this backend the
engine's claim prompt: it is answered by :mod:`lmteams.study._claim` with a settable quality
(``claim_error``), and costs what a reply of its length costs (``max_tokens`` of the
reference call), or, with ``full_claims``, one whole call's latency, as the paper's agents
paid: they re-read the board and answered at length every round.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import anyio

from lmteams.errors import BackendError, ConfigError
from lmteams.hardware import Completion, GenerateRequest, Timings, estimate_tokens
from lmteams.jobs._graph import DEFAULT_WORK_TOKENS
from lmteams.study._claim import answer_claim
from lmteams.study._paper import LognormalFit

__all__ = ("CommonDraws", "LatencyBackend")


class CommonDraws:
    """Common random numbers: a call's draws keyed by the run and the call, not by the agent.

    A study comparing options (team sizes, architectures) on noisy devices measures each
    option's mean over a few runs; with every agent drawing from its own stream, which option
    measures fastest is mostly the luck of its draws. Shared by a team's backends, this gives
    the k-th call of a prompt in run ``r`` the same latency, straggle and crash whichever
    agent makes it and whatever the architecture, so options run with the same seeds differ
    by what the architecture does, not by their draws (a paired design). Each call's draws
    still follow the device's distribution; runs of different seeds are independent. A
    retry of a prompt is its next call, so it draws anew.
    """

    def __init__(self, seed: int = 0) -> None:
        self._seed = seed
        self._run = 0
        self._seen: dict[str, int] = {}

    def begin(self, run_seed: int) -> None:
        """The draws of run ``run_seed`` from here on (counts of calls start again)."""
        self._run = run_seed
        self._seen.clear()

    def rng(self, prompt: str) -> random.Random:
        """The generator of this call: its prompt's next occurrence in the current run."""
        k = self._seen.get(prompt, 0)
        self._seen[prompt] = k + 1
        # a str seed is hashed with SHA-512 (not Python's salted hash): the same in every process
        return random.Random(f"{self._seed}/{self._run}/{k}/{prompt}")


class LatencyBackend:
    """The Backend protocol with latencies from a lognormal fit or from resampled calls.

    A call asking for ``max_tokens`` takes ``latency * max_tokens / reference_tokens``
    modelled seconds, where ``latency`` is one draw; it produces exactly ``max_tokens`` tokens
    so a run's token count is what the graph says. Stragglers and failures are injected with
    the given probabilities, as :class:`~lmteams.hardware.SimulatedBackend` does; with
    ``draws`` (shared by a team) a call's draws are :class:`CommonDraws`', not the agent's.
    """

    def __init__(
        self,
        *,
        fit: LognormalFit | None = None,
        samples: Sequence[float] = (),
        name: str = "paper-lognormal",
        seed: int = 0,
        time_scale: float = 1.0,
        reference_tokens: int = DEFAULT_WORK_TOKENS,
        straggler_prob: float = 0.0,
        straggler_factor: float = 3.0,
        failure_prob: float = 0.0,
        claim_error: float = 0.0,
        full_claims: bool = False,
        draws: CommonDraws | None = None,
    ) -> None:
        if fit is None and not samples:
            raise ConfigError("LatencyBackend needs a lognormal fit or latency samples")
        if time_scale < 0 or reference_tokens < 1:
            raise ConfigError(
                f"time_scale must be >= 0 and reference_tokens >= 1, got {time_scale}, "
                f"{reference_tokens}"
            )
        self._fit = fit
        self._samples = tuple(samples)
        self._name = name
        self._rng = random.Random(seed)
        self._time_scale = time_scale
        self._reference = reference_tokens
        self._straggler_prob = straggler_prob
        self._straggler_factor = straggler_factor
        self._failure_prob = failure_prob
        if not 0.0 <= claim_error <= 1.0:
            raise ConfigError(f"claim_error must be in [0, 1], got {claim_error}")
        self._claim_error = claim_error
        self._full_claims = full_claims
        # claims draw from their own stream, so a chooser's quality leaves latencies alone
        self._claim_rng = random.Random(seed ^ 0xC1A1)
        self._draws = draws
        self._lock = anyio.Lock()
        self.calls = 0
        self.failures = 0

    @property
    def device(self) -> str:
        return f"sim:{self._name}"

    @property
    def model(self) -> str:
        return self._name

    @property
    def mean_call_s(self) -> float:
        """Mean modelled seconds of a reference-sized call, stragglers included."""
        if self._fit is not None:
            base = self._fit.mean_s
        else:
            base = sum(self._samples) / len(self._samples)
        return base * (1.0 + self._straggler_prob * (self._straggler_factor - 1.0))

    @property
    def tokens_per_s(self) -> float:
        """The generation rate a planner should assume for this backend."""
        return self._reference / self.mean_call_s

    def _draw(self, rng: random.Random) -> float:
        if self._fit is not None:
            return math.exp(rng.gauss(self._fit.mu, self._fit.sigma))
        return rng.choice(self._samples)

    async def generate(self, request: GenerateRequest) -> Completion:
        async with self._lock:
            rng = self._rng if self._draws is None else self._draws.rng(request.prompt)
            fails, fail_at = rng.random() < self._failure_prob, rng.random()
            slow = self._straggler_factor if rng.random() < self._straggler_prob else 1.0
            tokens_out = max(1, request.max_tokens)
            claim = answer_claim(request.prompt, self._claim_rng, self._claim_error)
            size = self._reference if claim is not None and self._full_claims else tokens_out
            seconds = self._draw(rng) * slow * size / self._reference
            self.calls += 1
            if fails:
                await anyio.sleep(seconds * fail_at * self._time_scale)
                self.failures += 1
                raise BackendError(f"injected failure on {self.device} (modelled)")
            await anyio.sleep(seconds * self._time_scale)
        work = f"sim answer to: {' '.join(request.prompt.split())[:48]}"
        return Completion(
            text=work if claim is None else claim,
            tokens_in=estimate_tokens(request.prompt) + estimate_tokens(request.system or ""),
            tokens_out=tokens_out,
            timings=Timings(generation_s=seconds),
            finish_reason="length",
            device=self.device,
            model=self.model,
        )

    async def aclose(self) -> None:
        return None
