"""Statistics of a sweep's runs, by the paper's definitions, with intervals and tests.

Only successful runs count, as in the paper; failed ones (a job out of retries) are counted
per cell beside them.

Speedup is the paper's: the mean makespan of a condition's successful 1-agent runs over the
mean makespan of its successful n-agent runs. It is a ratio of means, never a mean of
per-repetition ratios: that mean is biased upwards (Jensen: ``E[1/T] > 1/E[T]``), which is how
a sweep on noisy devices used to report speedups above the work/span bound ``min(n, W/S)``.
The bound holds for expected makespans (each run's makespan is at least its own work over n
and its own span), so the ratio of means respects it up to sampling noise, and the bootstrap
interval says how much noise there is.

One baseline per condition, pooled over the repetitions. A condition is everything a run is
set up with except the team size: the graph, the architecture, the scheduling, the devices
and the fault settings. The baseline stays per architecture and scheduling, as the paper's
stays per mode, for a measured reason: a one-agent job is not architecture-independent here.
A centralized one is dealt by a coordinator, a decentralized one claims each subtask by
compare-and-set, a barrier adds a round trip per round; those are different code paths with
different overheads, and pooling them would credit one architecture with the other's.

Bootstrap: each interval resamples, with replacement, the n-agent runs and the 1-agent runs
of its condition independently (the two were measured independently) and takes a percentile
interval of the resampled ratios of means. Sweeps have few repetitions, and the plain
percentile interval of three runs covers far less than 95 % (it ignores that the runs'
spread is itself estimated); the interval here is Hesterberg's *expanded* percentile
interval (The American Statistician 69(4), 2015), whose percentiles are widened to the
small-sample width of a t interval, using the smaller of the two groups. A side with one run
has no spread to resample: such a cell has no interval. Every cell's generator is seeded
from the sweep's stated seed and the cell's own key, so an interval does not depend on which
other cells the sweep had, and the seed is part of the result.

Tests (scipy, in the ``study`` extra; without it they carry no statistic): Mann-Whitney U for
async against barrier (rounds) scheduling, and Kruskal-Wallis across graph structures and
across architectures, all on per-run speedups (a run's makespan over its condition's pooled
baseline) of teams of two or more, so graphs of different sizes can share a test.
"""

from __future__ import annotations

import math
import random
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Final

import msgspec

from lmteams.study._metrics import RunMetrics
from lmteams.study._speedup import _scipy_stats

__all__ = (
    "BOOTSTRAP_RESAMPLES",
    "CellStat",
    "Condition",
    "SweepStats",
    "TestResult",
    "bootstrap_ratio",
    "condition_of",
    "faults_label",
    "pooled_baselines",
    "standard_error",
    "sweep_stats",
    "t_quantile",
    "with_pooled_speedups",
)

BOOTSTRAP_RESAMPLES: Final = 2000
CONFIDENCE: Final = 0.95


class Condition(msgspec.Struct, frozen=True, kw_only=True, order=True):
    """What a run is set up with, apart from its team size; its 1-agent runs are the baseline."""

    graph: str
    p: float
    architecture: str
    scheduling: str
    devices: str
    """The distinct device names of the team, joined with ``+``."""
    straggler_rate: float
    straggler_factor: float
    crash_rate: float
    max_failures: int
    choose: str = "first"
    """How decentralized agents picked their claims (``first`` or ``model``)."""
    claim_error: float = 0.0

    @property
    def faults(self) -> str:
        return faults_label(self.straggler_rate, self.straggler_factor, self.crash_rate)

    @property
    def team(self) -> str:
        """The architecture, and how its agents claimed when not the default."""
        if self.choose == "first":
            return self.architecture
        error = f", error {self.claim_error:.0%}" if self.claim_error else ""
        return f"{self.architecture} ({self.choose}-chosen claims{error})"


def faults_label(straggler_rate: float, straggler_factor: float, crash_rate: float) -> str:
    """``stragglers 10% x3, crashes 5%`` or ``no faults``: the label tables and figures use."""
    parts = []
    if straggler_rate > 0:
        parts.append(f"stragglers {straggler_rate:.0%} x{straggler_factor:g}")
    if crash_rate > 0:
        parts.append(f"crashes {crash_rate:.0%}")
    return ", ".join(parts) or "no faults"


def condition_of(run: RunMetrics) -> Condition:
    return Condition(
        graph=run.graph,
        p=run.p,
        architecture=run.architecture,
        scheduling=run.scheduling,
        devices="+".join(dict.fromkeys(run.devices)),
        straggler_rate=run.straggler_rate,
        straggler_factor=run.straggler_factor,
        crash_rate=run.crash_rate,
        max_failures=run.max_failures,
        choose=run.choose,
        claim_error=run.claim_error,
    )


class CellStat(msgspec.Struct, frozen=True, kw_only=True):
    """One condition at one team size: the runs' means and the speedup with its interval."""

    condition: Condition
    n_agents: int
    tasks: int
    runs: int
    """Successful n-agent runs: the speedup is over these."""
    failed_runs: int
    """n-agent runs whose job failed (left out, as the paper leaves them out)."""
    baseline_runs: int
    mean_makespan_s: float
    baseline_makespan_s: float
    speedup: float
    """Mean 1-agent makespan over mean n-agent makespan."""
    ci_low: float | None
    """None when a side of the ratio has a single run (nothing to resample)."""
    ci_high: float | None
    amdahl: float
    work_span: float
    """``min(n, W/S)``: no schedule of this graph on n equal agents beats it."""
    efficiency: float
    tokens: float
    """Mean work tokens (in and out) per run."""
    coordination_tokens: float
    """Mean tokens per run spent choosing claims (model-driven claiming only)."""
    messages: float
    """Mean bus messages per run."""
    idle_fraction: float
    conflicts: float
    retries: float
    seeds: tuple[int, ...]
    """The runs' seeds, in the order they ran."""


class TestResult(msgspec.Struct, frozen=True, kw_only=True):
    """One hypothesis test on per-run speedups of teams of two or more."""

    test: str
    """``mann-whitney-u`` or ``kruskal-wallis``."""
    question: str
    groups: tuple[str, ...]
    sizes: tuple[int, ...]
    medians: tuple[float, ...]
    statistic: float | None = None
    p_value: float | None = None
    note: str = ""
    """Why there is no statistic, when there is none."""


class SweepStats(msgspec.Struct, frozen=True, kw_only=True):
    cells: tuple[CellStat, ...]
    tests: tuple[TestResult, ...]
    bootstrap_seed: int
    bootstrap_resamples: int
    confidence: float
    scipy: bool


def _percentile(ordered: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    pos = q * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def standard_error(values: Sequence[float]) -> float:
    """Of the mean of ``values``; 0 from fewer than two, which have no spread to go by."""
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0


def t_quantile(q: float, df: int) -> float:
    """Student's t quantile, by the Cornish-Fisher expansion (Abramowitz and Stegun
    26.7.5): within 0.8 % of the exact value from 2 degrees of freedom, and the same on every
    install (scipy is optional, and intervals must not change with it)."""
    z = statistics.NormalDist().inv_cdf(q)
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4


def bootstrap_ratio(
    baseline: Sequence[float],
    team: Sequence[float],
    *,
    rng: random.Random,
    resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = CONFIDENCE,
) -> tuple[float, float] | None:
    """Expanded percentile interval of ``mean(baseline) / mean(team)``, both sides resampled
    independently; None when a side has fewer than two runs."""
    n = min(len(baseline), len(team))
    if n < 2:
        return None
    ratios = sorted(
        statistics.fmean(rng.choices(baseline, k=len(baseline)))
        / statistics.fmean(rng.choices(team, k=len(team)))
        for _ in range(resamples)
    )
    tail = (1.0 - confidence) / 2.0
    widened = math.sqrt(n / (n - 1)) * t_quantile(1.0 - tail, n - 1)
    tail = statistics.NormalDist().cdf(-widened)
    return _percentile(ratios, tail), _percentile(ratios, 1.0 - tail)


def _grouped(runs: Iterable[RunMetrics]) -> dict[Condition, dict[int, list[RunMetrics]]]:
    """Successful runs by condition and team size."""
    grouped: dict[Condition, dict[int, list[RunMetrics]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        if run.succeeded:
            grouped[condition_of(run)][run.n_agents].append(run)
    return grouped


def pooled_baselines(runs: Iterable[RunMetrics]) -> dict[Condition, float]:
    """Mean makespan of each condition's 1-agent runs (conditions without one are left out)."""
    return {
        cond: statistics.fmean(r.makespan_s for r in by_n[1])
        for cond, by_n in _grouped(runs).items()
        if by_n.get(1)
    }


def with_pooled_speedups(runs: Sequence[RunMetrics]) -> list[RunMetrics]:
    """The runs with ``baseline_s`` their condition's pooled 1-agent mean, ``speedup`` that
    over their own makespan (the paper's per-run figure) and ``efficiency`` speedup over n."""
    baselines = pooled_baselines(runs)
    out = []
    for run in runs:
        base = baselines.get(condition_of(run))
        if base is None or not run.succeeded or run.makespan_s <= 0:
            out.append(run)
            continue
        speedup = base / run.makespan_s
        out.append(
            msgspec.structs.replace(
                run, baseline_s=base, speedup=speedup, efficiency=speedup / run.n_agents
            )
        )
    return out


def _mean(values: Iterable[float]) -> float:
    return statistics.fmean(values)


def _cell(
    cond: Condition,
    n: int,
    *,
    mine: list[RunMetrics],
    base: list[RunMetrics],
    rng: random.Random,
    resamples: int,
    failed: int,
) -> CellStat:
    base_s = [r.makespan_s for r in base]
    team_s = [r.makespan_s for r in mine]
    low: float | None
    high: float | None
    if n == 1:  # the baseline over itself: exactly 1, whatever the noise
        speedup, low, high = 1.0, 1.0, 1.0
    else:
        speedup = _mean(base_s) / _mean(team_s)
        interval = bootstrap_ratio(base_s, team_s, rng=rng, resamples=resamples)
        low, high = interval if interval is not None else (None, None)
    return CellStat(
        condition=cond,
        n_agents=n,
        tasks=mine[0].tasks,
        runs=len(mine),
        failed_runs=failed,
        baseline_runs=len(base),
        mean_makespan_s=_mean(team_s),
        baseline_makespan_s=_mean(base_s),
        speedup=speedup,
        ci_low=low,
        ci_high=high,
        amdahl=mine[0].amdahl,
        work_span=mine[0].work_span,
        efficiency=speedup / n,
        tokens=_mean(float(r.tokens_in + r.tokens_out) for r in mine),
        coordination_tokens=_mean(
            float(r.coordination_tokens_in + r.coordination_tokens_out) for r in mine
        ),
        messages=_mean(float(r.messages) for r in mine),
        idle_fraction=_mean(r.idle_fraction for r in mine),
        conflicts=_mean(float(r.conflicts) for r in mine),
        retries=_mean(float(r.retries) for r in mine),
        seeds=tuple(r.seed for r in mine),
    )


def _test(test: str, question: str, groups: dict[str, list[float]]) -> TestResult:
    names = tuple(sorted(groups))
    values = [groups[g] for g in names]
    base = TestResult(
        test=test,
        question=question,
        groups=names,
        sizes=tuple(len(v) for v in values),
        medians=tuple(statistics.median(v) for v in values),
    )
    stats = _scipy_stats()
    if stats is None:
        return msgspec.structs.replace(base, note="scipy is not installed")
    if any(len(v) < 2 for v in values):
        return msgspec.structs.replace(base, note="a group has fewer than 2 runs")
    try:
        if test == "mann-whitney-u":
            result = stats.mannwhitneyu(*values, alternative="two-sided")
        else:
            result = stats.kruskal(*values)
    except ValueError as exc:  # scipy refuses all-identical samples
        return msgspec.structs.replace(base, note=str(exc))
    statistic, p_value = float(result.statistic), float(result.pvalue)
    if math.isnan(p_value):  # nan: nothing varies, nothing to rank
        return msgspec.structs.replace(base, note="no variation between runs")
    return msgspec.structs.replace(base, statistic=statistic, p_value=p_value)


def _by(
    speedups: Sequence[tuple[Condition, float]], by: str, **where: str
) -> dict[str, list[float]]:
    """Per-run speedups of the conditions matching ``where``, grouped by the field ``by``."""
    out: dict[str, list[float]] = defaultdict(list)
    for cond, s in speedups:
        if all(getattr(cond, k) == v for k, v in where.items()):
            out[str(getattr(cond, by))].append(s)
    return dict(out)


def _tests(runs: Sequence[RunMetrics], baselines: dict[Condition, float]) -> list[TestResult]:
    speedups = [
        (cond, baselines[cond] / r.makespan_s)
        for r in runs
        if r.succeeded and r.n_agents >= 2 and (cond := condition_of(r)) in baselines
    ]
    archs = sorted({c.architecture for c, _ in speedups})
    scheds = sorted({c.scheduling for c, _ in speedups})
    out = []
    for arch in archs:
        if len(groups := _by(speedups, "scheduling", architecture=arch)) == 2:
            why = f"{arch}: async vs barrier (rounds), pooled over graphs, sizes and faults"
            out.append(_test("mann-whitney-u", why, groups))
    for arch in archs:
        for sched in scheds:
            groups = _by(speedups, "graph", architecture=arch, scheduling=sched)
            if len(groups) >= 2:
                out.append(_test("kruskal-wallis", f"{arch}/{sched}: across graphs", groups))
    across = ((s, _by(speedups, "architecture", scheduling=s)) for s in scheds)
    out += [
        _test("kruskal-wallis", f"{sched}: across architectures", groups)
        for sched, groups in across
        if len(groups) >= 2
    ]
    return out


def sweep_stats(
    runs: Sequence[RunMetrics], *, seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES
) -> SweepStats:
    """Every cell with a baseline, its bootstrap interval, and the tests; seeded by ``seed``."""
    failed = Counter((condition_of(r), r.n_agents) for r in runs if not r.succeeded)
    cells = []
    for cond, by_n in sorted(_grouped(runs).items()):
        base = by_n.get(1)
        if not base:
            continue
        for n in sorted(by_n):
            rng = random.Random(f"{seed}|{msgspec.json.encode(cond).decode()}|{n}")
            mine = by_n[n]
            cells.append(
                _cell(
                    cond,
                    n,
                    mine=mine,
                    base=base,
                    rng=rng,
                    resamples=resamples,
                    failed=failed[(cond, n)],
                )
            )
    return SweepStats(
        cells=tuple(cells),
        tests=tuple(_tests(runs, pooled_baselines(runs))),
        bootstrap_seed=seed,
        bootstrap_resamples=resamples,
        confidence=CONFIDENCE,
        scipy=_scipy_stats() is not None,
    )
