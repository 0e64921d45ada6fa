"""The paper's published data (arXiv 2603.12229): runs, per-call LLM latencies, task lists.

A copy ships inside the package (``lmteams/study/paperdata``, MIT, its notice beside it), so
every install can reproduce the paper's numbers; ``--paper-data`` or ``$LMTEAMS_PAPER_DATA``
point at another copy. Each file is read only when asked
for: ``events.parquet`` is large and only latency studies need it. pyarrow is an optional
dependency (``lmteams[study]``), imported on first use so the rest of the package works
without it.

Column mapping (printed with ``pyarrow.parquet.read_schema``), ``runs.parquet`` -> PaperRun:
``model_dir`` -> model, ``task_type`` -> domain, ``p_label`` / ``p_true`` -> p_label / p,
``mode`` -> mode (``preassign_nolead`` is renamed ``preassigned``), ``n_teammates`` ->
n_agents, ``wall_clock_seconds`` -> wall_clock_s, ``total_rounds`` -> rounds,
``total_input_tokens`` / ``total_output_tokens`` -> input_tokens / output_tokens.
``events.parquet`` has no latency or token column: a call's latency is its ``agent_reply``
time minus its round's ``round_start`` time (all agents call at the start of a round, as the
paper's notebook measures it), and its tokens are the run's totals spread evenly over the
run's replies, the finest grain the data allows.
"""

from __future__ import annotations

import functools
import importlib
import math
import os
import statistics
from collections import Counter
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import Any, Final

import msgspec
import structlog

from lmteams.errors import ConfigError
from lmteams.jobs._graph import TaskGraph
from lmteams.jobs._graphio import paper_graphs

__all__ = (
    "PAPER_DATA_ENV",
    "LatencySamples",
    "LlmCall",
    "LognormalFit",
    "PaperData",
    "PaperRun",
    "fit_lognormal",
    "llm_call_latencies",
    "packaged_paper_data",
    "paper_data_dir",
    "read_llm_calls",
    "read_runs",
)

log = structlog.get_logger(__name__)

PAPER_DATA_ENV: Final = "LMTEAMS_PAPER_DATA"
_PACKAGED: Final = "paperdata"
_MODES: Final = {"preassign_nolead": "preassigned"}
_RUN_COLUMNS: Final = {
    "run_dir": "run_dir",
    "model_dir": "model",
    "task_type": "domain",
    "p_label": "p_label",
    "p_true": "p",
    "mode": "mode",
    "n_teammates": "n_agents",
    "rep": "rep",
    "success": "success",
    "wall_clock_seconds": "wall_clock_s",
    "total_rounds": "rounds",
    "concurrent_writes": "concurrent_writes",
    "claims_blocked": "claims_blocked",
    "total_input_tokens": "input_tokens",
    "total_output_tokens": "output_tokens",
}
_MAX_LATENCY_S: Final = 180.0
"""The paper's notebook drops replies slower than this as harness stalls, not model calls."""


class PaperRun(msgspec.Struct, frozen=True, kw_only=True):
    """One team run of the paper: a model, a domain, a p, a mode, a team size, one outcome."""

    run_dir: str
    model: str
    domain: str
    p_label: str
    p: float
    mode: str
    n_agents: int
    rep: int
    success: bool
    wall_clock_s: float
    rounds: int
    concurrent_writes: int
    claims_blocked: int
    input_tokens: int
    output_tokens: int


class LlmCall(msgspec.Struct, frozen=True, kw_only=True):
    """One agent's model call in one round; tokens are the run's per-reply average."""

    run_dir: str
    model: str
    mode: str
    n_agents: int
    round: int
    agent: str
    latency_s: float
    output_tokens: float
    input_tokens: float


class LognormalFit(msgspec.Struct, frozen=True, kw_only=True):
    """Maximum-likelihood lognormal: ``log(latency) ~ Normal(mu, sigma)``."""

    mu: float
    sigma: float
    n: int

    @property
    def median_s(self) -> float:
        return math.exp(self.mu)

    @property
    def mean_s(self) -> float:
        return math.exp(self.mu + self.sigma**2 / 2)


class LatencySamples(msgspec.Struct, frozen=True, kw_only=True):
    """One model's call latencies and tokens, for resampling in simulated agents."""

    model: str
    latencies_s: tuple[float, ...]
    output_tokens: tuple[float, ...]
    input_tokens: tuple[float, ...]
    fit: LognormalFit


def packaged_paper_data() -> Path:
    """The copy of the paper's data that ships inside lmteams (``lmteams/study/paperdata``)."""
    return Path(str(resources.files("lmteams.study") / _PACKAGED))


def paper_data_dir(path: str | Path | None = None) -> Path:
    """Where the paper's data is: ``path``, else ``$LMTEAMS_PAPER_DATA``, else the packaged copy.

    The two overrides exist for a newer or trimmed copy of the data; a directory that does
    not exist is a :class:`ConfigError` naming where the path came from, never a silent fall
    back to the packaged copy, so a typo'd override cannot pass for a working one.
    """
    if path is not None:
        candidate, origin = Path(path), "given explicitly (--paper-data)"
    elif os.environ.get(PAPER_DATA_ENV):
        candidate, origin = Path(os.environ[PAPER_DATA_ENV]), f"from ${PAPER_DATA_ENV}"
    else:
        candidate, origin = packaged_paper_data(), "the copy packaged with lmteams"
    if not candidate.is_dir():
        raise ConfigError(
            f"paper data directory {candidate} ({origin}) does not exist: pass --paper-data DIR "
            f"or set {PAPER_DATA_ENV} to the folder holding runs.parquet, events.parquet, tasks/"
        )
    return candidate.resolve()


def _pyarrow_parquet() -> ModuleType:
    try:
        return importlib.import_module("pyarrow.parquet")
    except ImportError as exc:
        raise ConfigError(
            "reading the paper's parquet files needs pyarrow: pip install 'lmteams[study]'"
        ) from exc


def _parquet_file(root: Path, name: str) -> Path:
    file = root / name
    if not file.is_file():
        raise ConfigError(f"{name} is missing from the paper data directory {root}")
    return file


def _read_columns(file: Path, columns: Iterable[str], **kwargs: Any) -> dict[str, list[Any]]:
    pq = _pyarrow_parquet()
    wanted = list(columns)
    present = set(pq.read_schema(file).names)
    missing = [c for c in wanted if c not in present]
    if missing:
        raise ConfigError(
            f"{file} lacks column(s) {', '.join(missing)}; it has {', '.join(sorted(present))}"
        )
    table: dict[str, list[Any]] = pq.read_table(file, columns=wanted, **kwargs).to_pydict()
    return table


def read_runs(paper_data: str | Path | None = None) -> tuple[PaperRun, ...]:
    """Every run in ``runs.parquet``, columns mapped as the module docstring says."""
    file = _parquet_file(paper_data_dir(paper_data), "runs.parquet")
    table = _read_columns(file, _RUN_COLUMNS)
    rows = [
        {_RUN_COLUMNS[col]: table[col][i] for col in _RUN_COLUMNS}
        for i in range(len(table["run_dir"]))
    ]
    for row in rows:
        row["mode"] = _MODES.get(row["mode"], row["mode"])
    runs = msgspec.convert(rows, tuple[PaperRun, ...])
    log.debug("paper.runs.read", path=str(file), runs=len(runs))
    return runs


def read_llm_calls(
    paper_data: str | Path | None = None,
    *,
    runs: Iterable[PaperRun] | None = None,
    max_latency_s: float = _MAX_LATENCY_S,
) -> tuple[LlmCall, ...]:
    """Every agent reply in ``events.parquet`` as a timed call (see the module docstring)."""
    root = paper_data_dir(paper_data)
    by_dir = {r.run_dir: r for r in (runs if runs is not None else read_runs(root))}
    file = _parquet_file(root, "events.parquet")
    ev = _read_columns(
        file,
        ("type", "ts", "run_dir", "round", "agent"),
        filters=[("type", "in", ["round_start", "agent_reply"])],
    )
    starts: dict[tuple[str, int], float] = {}
    replies = Counter[str]()
    for kind, ts, run_dir, rnd in zip(
        ev["type"], ev["ts"], ev["run_dir"], ev["round"], strict=True
    ):
        if kind == "round_start" and ts is not None and rnd is not None:
            starts[(run_dir, int(rnd))] = ts
        elif kind == "agent_reply":
            replies[run_dir] += 1
    calls = []
    for kind, ts, run_dir, rnd, agent in zip(
        ev["type"], ev["ts"], ev["run_dir"], ev["round"], ev["agent"], strict=True
    ):
        run = by_dir.get(run_dir)
        if kind != "agent_reply" or ts is None or rnd is None or run is None:
            continue
        start = starts.get((run_dir, int(rnd)))
        if start is None or not 0.0 < ts - start < max_latency_s:
            continue
        calls.append(
            LlmCall(
                run_dir=run_dir,
                model=run.model,
                mode=run.mode,
                n_agents=run.n_agents,
                round=int(rnd),
                agent=agent or "",
                latency_s=ts - start,
                output_tokens=run.output_tokens / replies[run_dir],
                input_tokens=run.input_tokens / replies[run_dir],
            )
        )
    log.debug("paper.calls.read", path=str(file), calls=len(calls))
    return tuple(calls)


def fit_lognormal(samples: Iterable[float]) -> LognormalFit:
    """MLE fit; needs at least two positive samples."""
    logs = [math.log(x) for x in samples]
    if len(logs) < 2:
        raise ConfigError(f"a lognormal fit needs at least 2 positive samples, got {len(logs)}")
    return LognormalFit(mu=statistics.fmean(logs), sigma=statistics.pstdev(logs), n=len(logs))


def llm_call_latencies(calls: Iterable[LlmCall]) -> dict[str, LatencySamples]:
    """Latency and token samples per model, with a lognormal fit of the latencies."""
    grouped: dict[str, list[LlmCall]] = {}
    for call in calls:
        grouped.setdefault(call.model, []).append(call)
    return {
        model: LatencySamples(
            model=model,
            latencies_s=tuple(c.latency_s for c in mine),
            output_tokens=tuple(c.output_tokens for c in mine),
            input_tokens=tuple(c.input_tokens for c in mine),
            fit=fit_lognormal(c.latency_s for c in mine),
        )
        for model, mine in sorted(grouped.items())
    }


class PaperData:
    """The paper's data directory, each part read once and only when first used."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = paper_data_dir(root)

    @functools.cached_property
    def runs(self) -> tuple[PaperRun, ...]:
        return read_runs(self.root)

    @functools.cached_property
    def graphs(self) -> dict[str, TaskGraph]:
        return paper_graphs(self.root)

    @functools.cached_property
    def llm_calls(self) -> tuple[LlmCall, ...]:
        return read_llm_calls(self.root, runs=self.runs)

    @functools.cached_property
    def latencies(self) -> dict[str, LatencySamples]:
        return llm_call_latencies(self.llm_calls)
