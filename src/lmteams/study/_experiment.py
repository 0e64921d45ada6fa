"""Experiment sweeps: team sizes x graphs x architectures x schedulings x devices x stragglers.

A sweep is a TOML file decoded strictly (a typo'd key is an error naming it). It runs on one
nats-server; the agents of each device mix and fault setting are started once and serve
every run of that group, and every condition gets one-agent runs, one per repetition, so its
speedup can be taken over a pooled baseline, as the paper defines it (see
:mod:`lmteams.study._stats`): each run's ``speedup`` is the mean makespan of its condition's
one-agent runs over its own makespan, filled in once the whole sweep has run.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any, Final

import msgspec
import structlog

from lmteams.bus import open_bus, run_server
from lmteams.errors import ConfigError, GraphError, TaskFailedError
from lmteams.jobs._graph import TaskGraph
from lmteams.jobs._graphio import SHIPPED_GRAPHS, load_graph, paper_graphs, shipped_graph
from lmteams.study._metrics import RunMetrics, run_labels
from lmteams.study._paper import paper_data_dir
from lmteams.study._plan import predict_makespan
from lmteams.study._run import ARCHITECTURES, CHOICES, SCHEDULINGS, run_team
from lmteams.study._stats import with_pooled_speedups
from lmteams.study._team import StudyTeam, open_team

__all__ = (
    "ExperimentConfig",
    "FaultSetting",
    "count_runs",
    "example_config",
    "load_experiment",
    "resolve_graph",
    "run_experiment",
)

log = structlog.get_logger(__name__)


class FaultSetting(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Faults injected into the simulated agents' model calls, one column set of runs.csv."""

    straggler_rate: float = 0.0
    straggler_factor: float = 3.0
    crash_rate: float = 0.0

    def __post_init__(self) -> None:
        if not (0 <= self.straggler_rate <= 1 and 0 <= self.crash_rate < 1):
            raise ConfigError("straggler_rate must be in [0, 1] and crash_rate in [0, 1)")
        if self.straggler_factor < 1:
            raise ConfigError(f"straggler_factor must be >= 1, got {self.straggler_factor}")


class ExperimentConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One sweep; every list is a dimension of the grid."""

    name: str = "experiment"
    graphs: tuple[str, ...]
    """Shipped names (``mixed-p05``), paper keys (``mathutilities20/p05``) or file paths."""
    team_sizes: tuple[int, ...] = (1, 2, 4)
    architectures: tuple[str, ...] = ("centralized-greedy",)
    scheduling: tuple[str, ...] = ("async",)
    choose: tuple[str, ...] = ("first",)
    """How decentralized agents pick their claims (``first``, ``model``); centralized
    architectures run once, their coordinator placing subtasks."""
    devices: tuple[tuple[str, ...], ...] = (("steady",),)
    """Device mixes: agent i of a team runs on ``mix[i % len(mix)]``."""
    straggler_rates: tuple[float, ...] = (0.0,)
    straggler_factor: float = 3.0
    crash_rate: float = 0.0
    faults: tuple[FaultSetting, ...] = ()
    """Fault settings, each a ``[[faults]]`` table; when given they replace the grid of
    ``straggler_rates`` x (``straggler_factor``, ``crash_rate``)."""
    repetitions: int = 1
    seed: int = 0
    time_scale: float = 0.01
    task_timeout_s: float = 60.0
    paper_data: str | None = None

    def __post_init__(self) -> None:
        if not self.graphs or not self.team_sizes or not self.devices:
            raise ConfigError("an experiment needs graphs, team_sizes and devices")
        if any(n < 1 for n in self.team_sizes) or self.repetitions < 1:
            raise ConfigError("team sizes and repetitions must be >= 1")
        for arch in self.architectures:
            if arch not in ARCHITECTURES:
                raise ConfigError(f"architecture {arch!r}: use {', '.join(ARCHITECTURES)}")
        for sched in self.scheduling:
            if sched not in SCHEDULINGS:
                raise ConfigError(f"scheduling {sched!r}: use {', '.join(SCHEDULINGS)}")
        for choose in self.choose:
            if choose not in CHOICES:
                raise ConfigError(f"choose {choose!r}: use {', '.join(CHOICES)}")
        if not 0 < self.time_scale <= 10:
            raise ConfigError(f"time_scale must be in (0, 10], got {self.time_scale}")
        self.fault_settings()  # validates the scalar settings too

    def fault_settings(self) -> tuple[FaultSetting, ...]:
        """The sweep's fault settings, one team of agents each."""
        return self.faults or tuple(
            FaultSetting(
                straggler_rate=rate,
                straggler_factor=self.straggler_factor,
                crash_rate=self.crash_rate,
            )
            for rate in self.straggler_rates
        )

    def arms(self) -> tuple[tuple[str, str], ...]:
        """(architecture, choose) pairs the sweep runs: claim choices apply to decentralized."""
        return tuple(
            (arch, choose)
            for arch in self.architectures
            for choose in (self.choose if arch == "decentralized" else ("first",))
        )


def load_experiment(path: str | Path) -> ExperimentConfig:
    """Read a sweep from TOML; errors name the file and the offending field."""
    file = Path(path)
    try:
        return msgspec.convert(tomllib.loads(file.read_text(encoding="utf-8")), ExperimentConfig)
    except OSError as exc:
        raise ConfigError(f"cannot read experiment {file}: {exc.strerror or exc}") from exc
    except (tomllib.TOMLDecodeError, msgspec.ValidationError) as exc:
        raise ConfigError(f"invalid experiment {file}: {exc}") from exc
    except ConfigError as exc:
        raise ConfigError(f"{file}: {exc}") from exc


def example_config(name: str = "quick") -> Path:
    """Path of an experiment config shipped with lmteams (``quick``)."""
    resource = resources.files("lmteams.study") / "configs" / f"{name}.toml"
    if not resource.is_file():
        raise ConfigError(f"no shipped experiment config {name!r}")
    return Path(str(resource))


def resolve_graph(name: str, paper_data: str | Path | None = None) -> TaskGraph:
    """A graph file, a shipped graph name, or a paper key like ``mathutilities20/p05``."""
    path = Path(name)
    if path.suffix.lower() in {".json", ".toml"} and path.exists():
        return load_graph(path)
    if name in SHIPPED_GRAPHS:
        return shipped_graph(name)
    if "/" in name and not path.suffix:
        graphs = paper_graphs(paper_data_dir(paper_data))
        if name in graphs:
            return graphs[name]
    raise GraphError(
        f"unknown graph {name!r}: give a .json/.toml file, a shipped graph "
        f"({', '.join(SHIPPED_GRAPHS)}) or a paper graph such as mathutilities20/p05 "
        "(see `lmteams study graphs`)"
    )


def count_runs(config: ExperimentConfig) -> int:
    """Runs the sweep makes, the one-agent baselines included."""
    sizes = len(set(config.team_sizes) | {1})
    cells = len(config.graphs) * len(config.arms()) * len(config.scheduling)
    return cells * sizes * len(config.devices) * len(config.fault_settings()) * config.repetitions


async def _run_or_failure(
    team: StudyTeam,
    graph: TaskGraph,
    n: int,
    *,
    architecture: str,
    scheduling: str,
    choose: str,
    monitor_url: str,
    task_timeout_s: float,
    seed: int,
) -> RunMetrics:
    """One run, or the record of its failure: a job that runs out of retries (likely in a
    long sweep with injected crashes) is a result to count, not the end of the sweep."""
    try:
        return await run_team(
            team,
            graph,
            n,
            architecture=architecture,
            scheduling=scheduling,
            choose=choose,
            monitor_url=monitor_url,
            task_timeout_s=task_timeout_s,
            seed=seed,
        )
    except TaskFailedError as exc:
        log.warning("study.run.failed", graph=graph.name, n=n, error=str(exc))
        zero: dict[str, Any] = dict.fromkeys(_MEASURES, 0)
        labels = run_labels(
            team,
            graph,
            n,
            architecture=architecture,
            scheduling=scheduling,
            seed=seed,
            choose=choose,
        )
        return RunMetrics(
            **labels,
            **zero,
            agents=(),
            succeeded=False,
            error=str(exc),
        )


_MEASURES: Final = (
    "makespan_s", "wall_s", "rounds", "executions", "retries", "conflicts", "duplicates",
    "tokens_in", "tokens_out", "messages", "bytes", "idle_s", "idle_fraction", "replayed_s",
)  # fmt: skip
"""The required measures of :class:`RunMetrics`, which a failed run did not make."""


async def run_experiment(
    config: ExperimentConfig, *, on_run: Callable[[RunMetrics], None] | None = None
) -> list[RunMetrics]:
    """Run the whole grid on a fresh nats-server; ``on_run`` sees each run as it ends.

    The runs come back with their pooled-baseline speedups; ``on_run`` sees them before
    (``speedup`` None): a baseline is known only once its condition's repetitions are in."""
    paper_data = Path(config.paper_data) if config.paper_data else None
    graphs = [resolve_graph(g, paper_data) for g in config.graphs]
    sizes = sorted(set(config.team_sizes) | {1})
    results: list[RunMetrics] = []
    async with run_server() as server, open_bus(server.url, name="study") as bus:
        monitor = f"http://{server.config.host}:{server.config.monitor_port}"
        for mix_no, mix in enumerate(config.devices):
            for f_no, fault in enumerate(config.fault_settings()):
                async with open_team(
                    bus,
                    mix,
                    max(sizes),
                    team=f"study{mix_no}x{f_no}",
                    time_scale=config.time_scale,
                    seed=config.seed,
                    straggler_rate=fault.straggler_rate,
                    straggler_factor=fault.straggler_factor,
                    crash_rate=fault.crash_rate,
                    paper_data=paper_data,
                ) as team:
                    for graph in graphs:
                        team.retune(graph)
                        for arch, choose in config.arms():
                            for sched in config.scheduling:
                                for rep in range(config.repetitions):
                                    for n in sizes:
                                        run = await _run_or_failure(
                                            team,
                                            graph,
                                            n,
                                            architecture=arch,
                                            scheduling=sched,
                                            choose=choose,
                                            monitor_url=monitor,
                                            task_timeout_s=config.task_timeout_s,
                                            seed=config.seed + rep,
                                        )
                                        predicted = predict_makespan(
                                            graph,
                                            [m.tokens_per_s for m in team.members[:n]],
                                            architecture=arch,
                                            scheduling=sched,
                                        )
                                        run = msgspec.structs.replace(run, predicted_s=predicted)
                                        results.append(run)
                                        if on_run is not None:
                                            on_run(run)
    log.info("study.experiment.done", name=config.name, runs=len(results))
    return with_pooled_speedups(results)
