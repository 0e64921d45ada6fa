"""Monte Carlo makespans against cases whose answer is known without simulating.

Steady devices make every draw the same, so every play must equal the exact simulator; a
barrier over n independent draws lasts their maximum, whose mean order statistics give in
closed form; a crash costs a uniform part of a call and a rerun, so its mean cost is known.
Each comparison allows for the simulation's own sampling error (a few standard errors).
"""

from __future__ import annotations

import dataclasses
import math
import random
import statistics

import pytest

from lmteams.errors import ConfigError
from lmteams.study import (
    ARCHITECTURES,
    SCHEDULINGS,
    LognormalFit,
    call_model,
    chain_plus_free,
    sample_makespans,
    shipped_graph,
    simulate_schedule,
)
from lmteams.study._montecarlo import CallModel, mean_interval, run_interval

GRAPHS = ("mixed-p05", "parallel-p09", "serial-p02")


def _lognormal(sigma: float, *, crash: float = 0.0) -> CallModel:
    fit = LognormalFit(mu=math.log(2.0), sigma=sigma, n=1)
    return CallModel(
        device="paper",
        kind="lognormal",
        limits=(300,),
        mu=fit.mu,
        sigma=fit.sigma,
        generation_tokens_per_s=300 / fit.mean_s,
        crash_rate=crash,
    )


def _within(sample: list[float] | tuple[float, ...], expected: float, z: float = 4.0) -> bool:
    error = statistics.stdev(sample) / math.sqrt(len(sample))
    return abs(statistics.fmean(sample) - expected) <= z * error + 1e-9


@pytest.mark.parametrize("name", GRAPHS)
def test_steady_devices_reproduce_the_exact_simulator(name: str) -> None:
    graph = shipped_graph(name)
    steady = call_model("steady", graph)
    for arch in ARCHITECTURES:
        policy = "preassigned" if arch == "centralized-preassigned" else "greedy"
        for sched in SCHEDULINGS:
            for n in (1, 3, 8):
                exact = simulate_schedule(
                    graph,
                    n,
                    rates=[100.0] * n,
                    policy=policy,
                    barrier=sched == "rounds",
                    overhead_s=0.25,
                ).makespan_s
                runs = sample_makespans(
                    graph,
                    [steady] * n,
                    [100.0] * n,
                    architecture=arch,
                    scheduling=sched,
                    overhead_s=0.25,
                    samples=3,
                )
                assert runs.makespans == pytest.approx([exact] * 3), (arch, sched, n)
                assert runs.attempts == len(graph.subtasks) and runs.failures == 0


def _expected_max(fit: LognormalFit, n: int) -> float:
    """E[max of n iid lognormals] = integral of 1 - F(x)^n over x > 0 (trapezoid, log grid)."""

    def cdf(x: float) -> float:
        return 0.5 * (1.0 + math.erf((math.log(x) - fit.mu) / (fit.sigma * math.sqrt(2.0))))

    lo, hi, steps = math.exp(fit.mu - 9 * fit.sigma), math.exp(fit.mu + 9 * fit.sigma), 20_000
    total, prev_x, prev_y = 0.0, 0.0, 1.0
    for k in range(steps + 1):
        x = lo * (hi / lo) ** (k / steps)
        y = 1.0 - cdf(x) ** n
        total += (x - prev_x) * (y + prev_y) / 2.0
        prev_x, prev_y = x, y
    return total


@pytest.mark.parametrize("scheduling", SCHEDULINGS)
def test_a_round_of_n_calls_lasts_the_expected_maximum_of_n_draws(scheduling: str) -> None:
    model = _lognormal(1.0)
    fit = LognormalFit(mu=model.mu, sigma=model.sigma, n=1)
    means = []
    for n in (1, 2, 4, 8):
        graph = chain_plus_free("free", 0, n, work_tokens=300)
        one = dataclasses.replace(model, limits=(300,) * n)
        runs = sample_makespans(
            graph, [one] * n, [1.0] * n, scheduling=scheduling, samples=6000, seed=n
        )
        expected = _expected_max(fit, n)
        assert _within(runs.makespans, expected), (n, runs.mean, expected)
        means.append(runs.mean)
    assert _expected_max(fit, 1) == pytest.approx(fit.mean_s, rel=1e-3)
    assert means == sorted(means) and means[-1] > 3 * means[0]  # the slowest of 8 draws


def test_crash_retries_cost_half_a_call_per_crash_on_average() -> None:
    graph = chain_plus_free("chain", 10, 0, work_tokens=100)
    p = 0.2
    steady = call_model("steady", graph)
    crashing = call_model("steady", graph, crash_rate=p)
    clean = sample_makespans(graph, [steady], [100.0], samples=10)
    noisy = sample_makespans(graph, [crashing], [100.0], samples=4000, seed=3)
    assert clean.makespans == pytest.approx([10.0] * 10)
    # a task's attempts are geometric: p / (1 - p) crashes on average, each half a call long
    assert _within(noisy.makespans, 10.0 * (1.0 + p / (1.0 - p) / 2.0))
    assert noisy.failures == pytest.approx(10 * p / (1 - p), rel=0.1)
    assert noisy.attempts == pytest.approx(10 + noisy.failures)
    assert noisy.mean > clean.mean


def test_stragglers_raise_the_mean_by_their_share_of_extra_time() -> None:
    graph = chain_plus_free("chain", 10, 0, work_tokens=100)
    slow = call_model("steady", graph, straggler_rate=0.1, straggler_factor=3.0)
    runs = sample_makespans(graph, [slow], [100.0], samples=4000, seed=5)
    assert _within(runs.makespans, 10.0 * 1.2)


def test_paper_latencies_show_the_barrier_a_mean_rate_plan_misses() -> None:
    graph = shipped_graph("fully-parallel-20")
    model = call_model("paper-resample", graph)
    rate = model.generation_tokens_per_s
    exact = simulate_schedule(graph, 8, rates=[rate] * 8, barrier=True).makespan_s
    rounds = sample_makespans(graph, [model] * 8, [rate] * 8, scheduling="rounds", samples=500)
    free = sample_makespans(graph, [model] * 8, [rate] * 8, samples=500)
    assert rounds.mean > 1.5 * exact  # three rounds, each the slowest of up to eight calls
    assert free.mean < rounds.mean


def test_plays_are_seeded() -> None:
    graph = shipped_graph("mixed-p05")
    model = call_model("paper-resample", graph, straggler_rate=0.1, crash_rate=0.05)
    first = sample_makespans(graph, [model] * 4, [1.0] * 4, samples=50, seed=1)
    assert sample_makespans(graph, [model] * 4, [1.0] * 4, samples=50, seed=1) == first
    assert sample_makespans(graph, [model] * 4, [1.0] * 4, samples=50, seed=2) != first


def test_intervals_hold_their_share_of_fresh_runs() -> None:
    rng = random.Random(0)
    draws = [rng.lognormvariate(0.0, 1.0) for _ in range(4000)]
    one = run_interval(draws)
    fresh = [rng.lognormvariate(0.0, 1.0) for _ in range(4000)]
    assert 0.87 <= statistics.fmean(x in one for x in fresh) <= 0.93
    of_five = mean_interval(draws, 5, seed=1)
    fresh_means = [
        statistics.fmean(rng.lognormvariate(0.0, 1.0) for _ in range(5)) for _ in range(2000)
    ]
    assert 0.87 <= statistics.fmean(m in of_five for m in fresh_means) <= 0.93
    assert one.low < of_five.low < of_five.high < one.high  # a mean scatters less
    assert mean_interval(draws, 1) == one


def test_mean_interval_counts_the_simulations_own_error() -> None:
    """Predicting a mean of 60 runs from only 60 plays: the pool's mean is itself off by as
    much as a fresh mean strays, so an interval of the K-run spread alone would hold about
    three quarters of fresh means (0.73 on these trials); widened by the pool's error it
    holds about its nine tenths."""
    rng = random.Random(3)
    inside = []
    for trial in range(300):
        pool = [rng.lognormvariate(0.0, 0.5) for _ in range(60)]
        fresh = statistics.fmean(rng.lognormvariate(0.0, 0.5) for _ in range(60))
        inside.append(fresh in mean_interval(pool, 60, seed=trial))
    assert 0.84 <= statistics.fmean(inside) <= 0.96


def test_mean_interval_counts_an_uncertain_centre() -> None:
    """Every play shares an input measured with error (an overhead from a few runs): the
    pool's centre is off by a draw of it however many plays there are. Told that error's
    size, the interval holds about nine tenths of fresh means; not told, far fewer."""
    rng = random.Random(5)
    told, untold = [], []
    for trial in range(300):
        shift = rng.gauss(0.0, 0.3)  # the input's error, the same for every play
        pool = [rng.lognormvariate(0.0, 0.5) + shift for _ in range(400)]
        fresh = statistics.fmean(rng.lognormvariate(0.0, 0.5) for _ in range(40))
        told.append(fresh in mean_interval(pool, 40, seed=trial, centre_sd=0.3))
        untold.append(fresh in mean_interval(pool, 40, seed=trial))
    assert 0.84 <= statistics.fmean(told) <= 0.96
    assert statistics.fmean(untold) < 0.6
    draws = [float(x) for x in range(1, 101)]
    assert mean_interval(draws, 5, seed=1, centre_sd=0.0) == mean_interval(draws, 5, seed=1)
    one = mean_interval(draws, 1, centre_sd=10.0)
    assert one.high - one.low > run_interval(draws).high - run_interval(draws).low
    with pytest.raises(ConfigError, match="centre_sd"):
        mean_interval(draws, 5, centre_sd=-1.0)


def test_bad_inputs_are_config_errors() -> None:
    graph = shipped_graph("mixed-p05")
    model = call_model("steady", graph)
    with pytest.raises(ConfigError, match="one rate per agent"):
        sample_makespans(graph, [model], [1.0, 1.0])
    with pytest.raises(ConfigError, match="architecture"):
        sample_makespans(graph, [model], [1.0], architecture="anarchy")
    with pytest.raises(ConfigError, match="crash_rate"):
        call_model("steady", graph, crash_rate=1.0)
    with pytest.raises(ConfigError, match="unknown device"):
        call_model("tpu", graph)
