"""A study team: worker agents on the bus, each on a simulated, paper-replayed or real device.

Team runs go through the production path: every agent is a
:class:`~lmteams.agents.WorkerAgent` in an actor runtime, answering ``Prompt`` requests on its
bus inbox with its backend. The study only chooses the backend (through the worker's
``open_backend`` hook) and keeps what a planner needs to know about each device: the rate
at which it is expected to get through a subtask, in modelled seconds.

Device specs are strings so configs and the CLI can name them:
``cpu-x86`` (any name in ``DEVICE_CLASSES``), ``steady`` (a fault-free, jitter-free device
for exact comparisons), ``paper`` / ``paper:<model>`` (lognormal fit of the paper's call
latencies), ``paper-resample[:<model>]`` (the measured latencies themselves) and
``llama[:<model>]`` (a real llama.cpp model on this machine's CPU).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import msgspec

from lmteams.agents import Runtime, WorkerAgent, WorkerConfig, open_runtime
from lmteams.bus import Bus
from lmteams.errors import ConfigError
from lmteams.hardware import (
    DEVICE_CLASSES,
    Backend,
    BackendConfig,
    DeviceClass,
    SimulatedBackend,
    estimate_tokens,
    open_backend,
)
from lmteams.study._graph import DEFAULT_WORK_TOKENS, Subtask, TaskGraph
from lmteams.study._latency import LatencyBackend
from lmteams.study._paper import LatencySamples, PaperData, fit_lognormal, paper_data_dir

__all__ = (
    "STEADY_TOKENS_PER_S",
    "StudyTeam",
    "TeamMember",
    "device_rate",
    "open_team",
    "subtask_prompt",
)

STEADY_TOKENS_PER_S = 100.0
"""Rate of the ``steady`` device (cpu-x86's generation rate), whose every call takes exactly
``max_tokens / rate``: no jitter, no drawn reply length, so runs can be compared exactly."""

_ALL_MODELS = ""


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
    paper_data: Path | None = None
    backends: dict[str, Backend] = field(default_factory=dict)

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


def subtask_prompt(subtask: Subtask) -> str:
    """What an agent is asked: the subtask's title, then its description if it has one."""
    return f"{subtask.title}\n{subtask.prompt}".strip()


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
    straggler slow-down. A real llama model has no model here; its rate is the catalogue
    default's measured 100 tokens/s until a profile says otherwise.
    """
    kind, arg = _check_spec(spec)
    slow = 1.0 + straggler_rate * (straggler_factor - 1.0)
    cls = _sim_class(spec)
    tasks = graph.subtasks if graph is not None else ()
    if cls is not None:
        if not tasks:
            return cls.generation_tokens_per_s / slow
        work = seconds = 0.0
        for s in tasks:
            out = (max(1, s.work_tokens // 2) + s.work_tokens) / 2
            tokens_in = estimate_tokens(subtask_prompt(s))
            seconds += tokens_in / cls.prompt_tokens_per_s + out / cls.generation_tokens_per_s
            work += s.work_tokens
        return work / (seconds * slow)
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
    return DEVICE_CLASSES["cpu-x86"].generation_tokens_per_s


def _backend_factory(
    spec: str,
    *,
    seed: int,
    time_scale: float,
    straggler_rate: float,
    straggler_factor: float,
    crash_rate: float,
    paper_data: Path | None,
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
        )

    def llama() -> contextlib.AbstractAsyncContextManager[Backend]:
        config = BackendConfig(kind="cpu", model=arg or "smollm2-135m", n_threads=1, seed=seed)
        return open_backend(config)

    if cls is not None:
        return sim
    if kind == "steady":
        return steady
    return paper if kind.startswith("paper") else llama


class _StudyWorker(WorkerAgent):
    """A production worker whose backend the study picks."""

    def __init__(
        self,
        factory: Callable[[], contextlib.AbstractAsyncContextManager[Backend]],
        backends: dict[str, Backend],
    ) -> None:
        super().__init__(WorkerConfig(heartbeat_s=2.0, fetch_timeout_s=2.0))
        self._factory = factory
        self._backends = backends

    def open_backend(self) -> contextlib.AbstractAsyncContextManager[Backend]:
        return self._track()

    @contextlib.asynccontextmanager
    async def _track(self) -> AsyncIterator[Backend]:
        async with self._factory() as backend:
            self._backends[self.context.actor_id] = backend
            yield backend


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
) -> AsyncIterator[StudyTeam]:
    """Host ``n_agents`` workers, agent i on ``devices[i % len(devices)]``, for a block.

    ``time_scale`` shrinks modelled seconds to wall seconds for simulated devices; real
    llama agents ignore it (their runs are reported at scale 1).
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
    async with open_runtime(bus, team) as runtime:
        study = StudyTeam(
            bus=bus,
            team=team,
            runtime=runtime,
            members=[],
            time_scale=scale,
            straggler_rate=straggler_rate,
            straggler_factor=straggler_factor,
            crash_rate=crash_rate,
            paper_data=paper_data,
        )
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
            )
            worker = functools.partial(_StudyWorker, factory, study.backends)
            with anyio.fail_after(120):
                await runtime.spawn(worker, actor_id=agent_id, roles=("worker",))
            rate = device_rate(
                spec,
                graph,
                straggler_rate=straggler_rate,
                straggler_factor=straggler_factor,
                paper_data=paper_data,
            )
            study.members.append(TeamMember(agent_id=agent_id, device=spec, tokens_per_s=rate))
        yield study
