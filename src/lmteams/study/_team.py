"""A study team: worker agents on the bus, each on a simulated, paper-replayed or real device.

Team runs go through the production path: every agent is a
:class:`~lmteams.agents.WorkerAgent` in an actor runtime running the job service, so a run
is a job the team works like any user's. The study only chooses the backend (through the
worker's ``open_backend`` hook), announces the rate a planner assumes for each device (so the
coordinator places subtasks by the same rates the simulator does), and keeps a log of every
model call with its *modelled* duration, from which a run's overhead-free makespan is
replayed (see :mod:`lmteams.study._metrics`).

Device specs are strings so configs and the CLI can name them:
``cpu-x86`` (any name in ``DEVICE_CLASSES``), ``steady`` (a fault-free, jitter-free device
for exact comparisons), ``paper`` / ``paper:<model>`` (lognormal fit of the paper's call
latencies), ``paper-resample[:<model>]`` (the measured latencies themselves) and
``llama[:<model>]`` (a real llama.cpp model on this machine's CPU, at its measured profile:
see :mod:`lmteams.study._profiles`).
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import msgspec

from lmteams.agents import Runtime, WorkerAgent, WorkerConfig, open_runtime
from lmteams.bus import Bus, Subjects, ensure_team_streams
from lmteams.errors import ConfigError
from lmteams.hardware import (
    DEVICE_CLASSES,
    Backend,
    Completion,
    DeviceClass,
    GenerateRequest,
    SimulatedBackend,
    estimate_tokens,
    open_backend,
)
from lmteams.hardware._profile import profile_key
from lmteams.jobs import job_service
from lmteams.jobs._graph import DEFAULT_WORK_TOKENS, Subtask, TaskGraph
from lmteams.jobs._template import render_prompt
from lmteams.study._latency import CommonDraws, LatencyBackend
from lmteams.study._paper import LatencySamples, PaperData, fit_lognormal, paper_data_dir
from lmteams.study._profiles import (
    DeviceRate,
    RateSource,
    assumption_note,
    is_llama,
    llama_config,
    llama_rates,
    measure_llama_profiles,
)

__all__ = (
    "STEADY_TOKENS_PER_S",
    "ModelCall",
    "StudyTeam",
    "TeamMember",
    "device_rate",
    "describe_rate",
    "open_team",
    "subtask_prompt",
)

STEADY_TOKENS_PER_S = 100.0
"""Rate of the ``steady`` device (cpu-x86's generation rate), whose every call takes exactly
``max_tokens / rate``: no jitter, no drawn reply length, so runs can be compared exactly."""

_ALL_MODELS = ""


_JOIN_TIMEOUT_S = 60.0


class ModelCall(msgspec.Struct, frozen=True, kw_only=True):
    """One model call an agent made, as its backend reported it."""

    agent: str
    prompt: str
    started: float  # wall clock
    ended: float
    modelled_s: float
    """The call's own duration in modelled seconds (for a failure: its wall time, rescaled)."""
    ok: bool
    cancelled: bool = False


class TeamMember(msgspec.Struct, frozen=True, kw_only=True):
    """One agent of a study team and the modelled rate a planner assumes for it."""

    agent_id: str
    device: str
    tokens_per_s: float


@dataclass
class StudyTeam:
    """Agents hosted for a sweep; runs use the first n members."""

    bus: Bus
    team: str
    runtime: Runtime
    members: list[TeamMember]
    time_scale: float
    straggler_rate: float = 0.0
    straggler_factor: float = 3.0
    crash_rate: float = 0.0
    claim_error: float = 0.0
    """Chance a simulated agent choosing with its model names a bad subtask (``_claim``)."""
    full_claims: bool = False
    """A simulated claim call costs a whole call's latency (the paper's agents' case)."""
    paper_data: Path | None = None
    draws: CommonDraws | None = None
    """Shared by the latency devices when the team was opened with ``common_draws``."""
    backends: dict[str, Backend] = field(default_factory=dict)
    calls: list[ModelCall] = field(default_factory=list)
    """Every model call of every agent, in the order they ended."""

    def retune(self, graph: TaskGraph) -> None:
        """Recompute the members' rates for ``graph`` (prompt lengths differ per graph)."""
        self.members = [
            msgspec.structs.replace(
                m,
                tokens_per_s=device_rate(
                    m.device,
                    graph,
                    straggler_rate=self.straggler_rate,
                    straggler_factor=self.straggler_factor,
                    paper_data=self.paper_data,
                ),
            )
            for m in self.members
        ]


def subtask_prompt(graph: TaskGraph, subtask: Subtask) -> str:
    """What an agent is asked before any dependency has an output: the job's own rendering."""
    return render_prompt(graph, subtask, {})


def _sim_class(spec: str) -> DeviceClass | None:
    return DEVICE_CLASSES.get(spec)


@functools.lru_cache(maxsize=4)
def _paper_latencies(root: str) -> dict[str, LatencySamples]:
    return PaperData(root).latencies


def _paper_samples(model: str, paper_data: Path | None) -> LatencySamples:
    latencies = _paper_latencies(str(paper_data_dir(paper_data)))
    chosen = [s for name, s in latencies.items() if model.lower() in name.lower()]
    if not chosen:
        raise ConfigError(
            f"no paper model matches {model!r}; models are: {', '.join(sorted(latencies))}"
        )
    values = tuple(x for s in chosen for x in s.latencies_s)
    fit = chosen[0].fit if len(chosen) == 1 else fit_lognormal(values)
    return LatencySamples(
        model=model or "all", latencies_s=values, output_tokens=(), input_tokens=(), fit=fit
    )


def _check_spec(spec: str) -> tuple[str, str]:
    kind, _, arg = spec.partition(":")
    if _sim_class(spec) is not None or kind in {"steady", "paper", "paper-resample", "llama"}:
        return kind, arg
    known = ", ".join([*DEVICE_CLASSES, "steady", "paper[:MODEL]", "paper-resample[:MODEL]"])
    raise ConfigError(f"unknown device {spec!r}: use one of {known}, or llama[:MODEL]")


def device_rate(
    spec: str,
    graph: TaskGraph | None = None,
    *,
    straggler_rate: float = 0.0,
    straggler_factor: float = 3.0,
    paper_data: Path | None = None,
) -> float:
    """Modelled tokens/s a subtask of ``graph`` runs at on ``spec``, stragglers included.

    For the simulated device classes this is exact in expectation: prompt time, the mean of
    the drawn output length (uniform between half and all of ``max_tokens``) and the
    straggler slow-down. A real llama device runs at its cached profile (prompt time
    included, every subtask taken to use its whole token budget); with no profile, at the
    cpu-x86 class's rates, which :func:`describe_rate` reports as an assumption.
    """
    kind, arg = _check_spec(spec)
    slow = 1.0 + straggler_rate * (straggler_factor - 1.0)
    cls = _sim_class(spec)
    if cls is not None:
        return (
            _graph_rate(
                graph,
                cls.generation_tokens_per_s,
                cls.prompt_tokens_per_s,
                lambda budget: (max(1, budget // 2) + budget) / 2,
            )
            / slow
        )
    if kind == "llama":  # no injected stragglers: a real model is as slow as it is
        generation, prompt, _ = llama_rates(spec)
        return _graph_rate(graph, generation, prompt, float)
    if kind == "steady":
        return STEADY_TOKENS_PER_S / slow
    if kind in {"paper", "paper-resample"}:
        samples = _paper_samples(arg or _ALL_MODELS, paper_data)
        mean = (
            samples.fit.mean_s
            if kind == "paper"
            else sum(samples.latencies_s) / len(samples.latencies_s)
        )
        return DEFAULT_WORK_TOKENS / (mean * slow)
    raise AssertionError(f"unhandled device kind {kind!r}")  # _check_spec admits no other


def _graph_rate(
    graph: TaskGraph | None,
    generation: float,
    prompt: float,
    output_tokens: Callable[[int], float],
) -> float:
    """Work tokens over the expected seconds of all of ``graph``'s subtasks on one device."""
    if graph is None:
        return generation
    work = seconds = 0.0
    for s in graph.subtasks:
        tokens_in = estimate_tokens(subtask_prompt(graph, s))
        seconds += tokens_in / prompt if prompt > 0 else 0.0
        seconds += output_tokens(s.work_tokens) / generation
        work += s.work_tokens
    return work / seconds


def describe_rate(
    spec: str,
    graph: TaskGraph | None = None,
    *,
    straggler_rate: float = 0.0,
    straggler_factor: float = 3.0,
    paper_data: Path | None = None,
) -> DeviceRate:
    """:func:`device_rate` with its source: modelled, measured (a profile) or assumed."""
    rate = device_rate(
        spec,
        graph,
        straggler_rate=straggler_rate,
        straggler_factor=straggler_factor,
        paper_data=paper_data,
    )
    measured = None
    if is_llama(spec):
        generation, prompt, measured = llama_rates(spec)
    elif (cls := _sim_class(spec)) is not None:
        generation, prompt = cls.generation_tokens_per_s, cls.prompt_tokens_per_s
    else:  # steady and paper devices: one latency per call, no separate prompt rate
        generation, prompt = rate, 0.0
    source: RateSource = "measured" if measured is not None else "modelled"
    if is_llama(spec) and measured is None:
        source = "assumed"
    return DeviceRate(
        device=spec,
        tokens_per_s=rate,
        generation_tokens_per_s=generation,
        prompt_tokens_per_s=prompt,
        source=source,
        profile_key=(
            profile_key(measured.device, measured.model, measured.threads) if measured else ""
        ),
        measured_at=measured.measured_at if measured else "",
        note=assumption_note(spec) if source == "assumed" else "",
    )


def _backend_factory(
    spec: str,
    *,
    seed: int,
    time_scale: float,
    straggler_rate: float,
    straggler_factor: float,
    crash_rate: float,
    paper_data: Path | None,
    claim_error: float = 0.0,
    full_claims: bool = False,
    draws: CommonDraws | None = None,
) -> Callable[[], contextlib.AbstractAsyncContextManager[Backend]]:
    kind, arg = _check_spec(spec)
    cls = _sim_class(spec)

    @contextlib.asynccontextmanager
    async def sim() -> AsyncIterator[Backend]:
        assert cls is not None
        device = msgspec.structs.replace(
            cls,
            load_s=0.0,
            straggler_prob=straggler_rate,
            straggler_factor=straggler_factor,
            failure_prob=crash_rate,
        )
        backend = SimulatedBackend(device, seed=seed, time_scale=time_scale)
        try:
            yield backend
        finally:
            await backend.aclose()

    @contextlib.asynccontextmanager
    async def paper() -> AsyncIterator[Backend]:
        samples = _paper_samples(arg or _ALL_MODELS, paper_data)
        yield LatencyBackend(
            fit=samples.fit if kind == "paper" else None,
            samples=samples.latencies_s if kind == "paper-resample" else (),
            name=spec.replace(":", "-"),
            seed=seed,
            time_scale=time_scale,
            straggler_prob=straggler_rate,
            straggler_factor=straggler_factor,
            failure_prob=crash_rate,
            claim_error=claim_error,
            full_claims=full_claims,
            draws=draws,
        )

    @contextlib.asynccontextmanager
    async def steady() -> AsyncIterator[Backend]:
        yield LatencyBackend(
            samples=(DEFAULT_WORK_TOKENS / STEADY_TOKENS_PER_S,),
            name="steady",
            seed=seed,
            time_scale=time_scale,
            straggler_prob=straggler_rate,
            straggler_factor=straggler_factor,
            failure_prob=crash_rate,
            claim_error=claim_error,
            full_claims=full_claims,
            draws=draws,
        )

    def llama() -> contextlib.AbstractAsyncContextManager[Backend]:
        return open_backend(llama_config(spec, seed=seed))

    if cls is not None:
        return sim
    if kind == "steady":
        return steady
    return paper if kind.startswith("paper") else llama


class _StudyWorker(WorkerAgent):
    """A production worker whose backend the study picks, and whose calls it logs."""

    def __init__(
        self,
        factory: Callable[[], contextlib.AbstractAsyncContextManager[Backend]],
        study: StudyTeam,
        wall_tokens_per_s: float,
    ) -> None:
        super().__init__(WorkerConfig(heartbeat_s=2.0, fetch_timeout_s=2.0))
        self._factory = factory
        self._study = study
        self._rate = wall_tokens_per_s

    def open_backend(self) -> contextlib.AbstractAsyncContextManager[Backend]:
        return self._track()

    async def on_start(self) -> None:
        await super().on_start()
        # the planner's rate, on the wall clock: the coordinator places by what the simulator
        # assumes, so a run and its prediction differ only by what the model leaves out
        self.tokens_per_s, self.prompt_tokens_per_s = self._rate, 0.0

    async def _generate(self, request: GenerateRequest) -> Completion:
        started = time.time()

        def log(modelled_s: float, *, ok: bool, cancelled: bool = False) -> None:
            self._study.calls.append(
                ModelCall(
                    agent=self.context.actor_id,
                    prompt=request.prompt,
                    started=started,
                    ended=time.time(),
                    modelled_s=modelled_s,
                    ok=ok,
                    cancelled=cancelled,
                )
            )

        try:
            completion = await super()._generate(request)
        except BaseException as exc:
            # a failure reports no timings: charge it the wall time it took
            elapsed = (time.time() - started) / self._study.time_scale
            log(elapsed, ok=False, cancelled=isinstance(exc, anyio.get_cancelled_exc_class()))
            raise
        log(completion.timings.prompt_s + completion.timings.generation_s, ok=True)
        return completion

    @contextlib.asynccontextmanager
    async def _track(self) -> AsyncIterator[Backend]:
        async with self._factory() as backend:
            self._study.backends[self.context.actor_id] = backend
            yield backend


async def _until_all_joined(runtime: Runtime, agent_ids: Sequence[str]) -> None:
    """Wait until the team's view shows every agent available: a job admitted earlier would
    be placed on (or, decentralized, fixed to) whoever happened to have joined."""
    wanted = set(agent_ids)
    with anyio.fail_after(_JOIN_TIMEOUT_S):
        while not wanted <= {m.name for m in runtime.membership.members() if m.available}:
            await runtime.membership.wait_changed()


@contextlib.asynccontextmanager
async def open_team(
    bus: Bus,
    devices: Sequence[str],
    n_agents: int,
    *,
    team: str = "study",
    graph: TaskGraph | None = None,
    time_scale: float = 0.01,
    seed: int = 0,
    straggler_rate: float = 0.0,
    straggler_factor: float = 3.0,
    crash_rate: float = 0.0,
    paper_data: Path | None = None,
    claim_error: float = 0.0,
    full_claims: bool = False,
    common_draws: bool = False,
) -> AsyncIterator[StudyTeam]:
    """Host ``n_agents`` workers, agent i on ``devices[i % len(devices)]``, for a block.

    ``time_scale`` shrinks modelled seconds to wall seconds for simulated devices; real
    llama agents ignore it (their runs are reported at scale 1) and announce their measured
    profile, which is measured here first when none is cached. ``members`` come in the
    order a job picks its agents (the fastest first), so a run on n agents uses the first n.
    ``claim_error`` and ``full_claims`` set how the ``steady`` and ``paper`` devices answer
    a claim prompt (``choose = "model"``, see :mod:`lmteams.study._claim`); a real model
    answers as it does, and the device classes with their placeholder text.
    ``common_draws``: the latency devices (``paper``, ``paper-resample``, ``steady``) draw each
    call by the run's seed and the call, not the agent (:class:`CommonDraws`), so options
    run with the same seeds are compared on the same draws.
    """
    if n_agents < 1 or not devices:
        raise ConfigError(f"a team needs >= 1 agent and >= 1 device (got {n_agents}, {devices})")
    specs = [devices[i % len(devices)] for i in range(n_agents)]
    real = any(_check_spec(s)[0] == "llama" for s in specs)
    if real and not all(_check_spec(s)[0] == "llama" for s in specs):
        raise ConfigError("a team mixes simulated and llama devices; their clocks differ")
    scale = 1.0 if real else time_scale
    if scale <= 0:
        raise ConfigError(f"time_scale must be > 0 for a timed run, got {time_scale}")
    # a real device runs at what it measures: profile each model once, before the team loads it
    await measure_llama_profiles(specs)
    await ensure_team_streams(bus, Subjects(team))
    async with open_runtime(bus, team, worker_services=[job_service()]) as runtime:
        study = StudyTeam(
            bus=bus,
            team=team,
            runtime=runtime,
            members=[],
            time_scale=scale,
            straggler_rate=straggler_rate,
            straggler_factor=straggler_factor,
            crash_rate=crash_rate,
            claim_error=claim_error,
            full_claims=full_claims,
            paper_data=paper_data,
            draws=CommonDraws(seed) if common_draws else None,
        )
        announced: dict[str, float] = {}
        for i, spec in enumerate(specs):
            agent_id = f"agent-{i}"
            factory = _backend_factory(
                spec,
                seed=seed * 1000 + i,
                time_scale=scale,
                straggler_rate=straggler_rate,
                straggler_factor=straggler_factor,
                crash_rate=crash_rate,
                paper_data=paper_data,
                claim_error=claim_error,
                full_claims=full_claims,
                draws=study.draws,
            )
            rate = functools.partial(
                device_rate,
                spec,
                straggler_rate=straggler_rate,
                straggler_factor=straggler_factor,
                paper_data=paper_data,
            )
            announced[agent_id] = rate() / scale
            worker = functools.partial(_StudyWorker, factory, study, announced[agent_id])
            with anyio.fail_after(120):
                await runtime.spawn(worker, actor_id=agent_id, roles=("worker",))
            member = TeamMember(agent_id=agent_id, device=spec, tokens_per_s=rate(graph))
            study.members.append(member)
        # the order in which a job picks its n agents: the fastest first, then by name
        study.members.sort(key=lambda m: (-announced[m.agent_id], m.agent_id))
        await _until_all_joined(runtime, [m.agent_id for m in study.members])
        yield study
