"""Team runs on a real nats-server with simulated agents: speedups, conflicts, barriers, plans.

Nothing here reads the clock: a run's ``replayed_s`` replays its calls' modelled durations
on the agents and in the order they ran, so a loaded machine changes no assertion. On the
``steady`` device a 100-token subtask takes exactly one modelled second.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lmteams.bus import Bus, EmbeddedServer
from lmteams.cli._study import study_app
from lmteams.errors import ConfigError
from lmteams.hardware import GenerateRequest, resolve_model
from lmteams.study import (
    CommonDraws,
    LatencyBackend,
    LognormalFit,
    PaperData,
    calibrate_overhead,
    calibrate_overheads,
    chain_plus_free,
    count_runs,
    example_config,
    load_experiment,
    open_team,
    plan,
    run_team,
    speedup_summary,
)

SERIAL = chain_plus_free("serial-6", 6, 0, work_tokens=100)
PARALLEL = chain_plus_free("parallel-8", 0, 8, work_tokens=100)


async def test_serial_graph_gains_nothing_from_more_agents(bus: Bus) -> None:
    async with open_team(bus, ["steady"], 4, graph=SERIAL, time_scale=0.01) as team:
        one = await run_team(team, SERIAL, 1)
        assert one.replayed_s == pytest.approx(6.0)
        for n in (2, 4):
            run = await run_team(team, SERIAL, n)
            assert run.replayed_s == pytest.approx(one.replayed_s)  # the chain is the whole run
            assert run.work_span == 1.0 and run.amdahl == 1.0
    assert one.tokens_out == SERIAL.work and one.executions == len(SERIAL.subtasks)


async def test_parallel_graph_speeds_up_near_n(bus: Bus, nats_server: EmbeddedServer) -> None:
    monitor = f"http://{nats_server.config.host}:{nats_server.config.monitor_port}"
    async with open_team(bus, ["steady"], 4, graph=PARALLEL, time_scale=0.02) as team:
        one = await run_team(team, PARALLEL, 1, monitor_url=monitor)
        assert one.replayed_s == pytest.approx(8.0)
        for n in (2, 4):
            run = await run_team(team, PARALLEL, n, monitor_url=monitor)
            assert one.replayed_s / run.replayed_s == pytest.approx(n)
            assert [a.tasks for a in run.agents] == [8 // n] * n
    # one request and one reply per subtask, at least
    assert run.messages >= 2 * len(PARALLEL.subtasks) and run.bytes > 0
    assert len(run.agents) == 4 and all(a.tasks == 2 for a in run.agents)


async def test_decentralized_agents_claim_every_subtask_once(bus: Bus) -> None:
    async with open_team(bus, ["steady"], 4, graph=PARALLEL, time_scale=0.01) as team:
        rounds = await run_team(
            team, PARALLEL, 4, architecture="decentralized", scheduling="rounds"
        )
        free = await run_team(team, PARALLEL, 4, architecture="decentralized")
    for run in (rounds, free):
        assert run.duplicates == 0 and sum(a.tasks for a in run.agents) == 8
    # every agent decides from the same view; each tries its own pick first, so the team's
    # first claims do not collide, and what collisions there are, each agent counts
    assert rounds.rounds >= 2
    for run in (rounds, free):
        assert run.conflicts == sum(a.lost_claims for a in run.agents)
        assert run.claims == 8  # one won claim per subtask: nothing lapsed and was re-claimed


async def test_the_barrier_costs_time_on_uneven_agents(bus: Bus) -> None:
    async with open_team(bus, ["steady", "rpi5-cpu"], 2, graph=PARALLEL, time_scale=0.01) as team:
        free = await run_team(team, PARALLEL, 2)
        barrier = await run_team(team, PARALLEL, 2, scheduling="rounds")
    assert barrier.rounds == 4 and free.rounds == 0
    assert [a.tasks for a in barrier.agents] == [4, 4]  # one call each per round
    # Every round lasts as long as the Pi's call (50 tokens/s for 50..100 tokens), so the
    # steady agent's four one-second calls leave it waiting at the barrier.
    assert barrier.replayed_s > 4.0


async def test_plan_predicts_the_replayed_makespan(bus: Bus) -> None:
    graph = chain_plus_free("mixed-8", 3, 5, work_tokens=100)
    async with open_team(bus, ["steady"], 4, graph=graph, time_scale=0.02) as team:
        overhead = await calibrate_overhead(team)
        chosen = plan(graph, ["steady"], max_agents=4)
        best = chosen.recommended
        run = await run_team(team, graph, best.n_agents, architecture=best.architecture)
    assert math.isfinite(overhead) and overhead >= 0.0  # its size is the machine's
    assert best.n_agents == 3  # W/S = 8/3: three agents reach the span, more cannot help
    assert best.makespan_s == pytest.approx(3.0)
    assert run.replayed_s == pytest.approx(best.makespan_s)


async def test_a_preassigned_team_works_the_papers_lists(bus: Bus) -> None:
    # a chain of three and three free subtasks on two agents: the paper deals the chain and
    # the second free one to agent 0 (4 s of work), the other two to agent 1; greedy
    # placement balances it (3 s, the chain)
    graph = chain_plus_free("dealt", 3, 3, work_tokens=100)
    async with open_team(bus, ["steady"], 2, graph=graph, time_scale=0.01) as team:
        dealt = await run_team(team, graph, 2, architecture="centralized-preassigned")
        greedy = await run_team(team, graph, 2, architecture="centralized-greedy")
    assert sorted(a.tasks for a in dealt.agents) == [2, 4]
    assert dealt.replayed_s == pytest.approx(4.0)
    assert greedy.replayed_s == pytest.approx(3.0)
    assert dealt.architecture == "centralized-preassigned"


async def test_run_team_rejects_bad_options(bus: Bus) -> None:
    async with open_team(bus, ["steady"], 1, time_scale=0.01) as team:
        with pytest.raises(ConfigError, match="architecture must be one of"):
            await run_team(team, SERIAL, 1, architecture="anarchy")
        with pytest.raises(ConfigError, match=r"n_agents must be in 1\.\.1"):
            await run_team(team, SERIAL, 2)
    with pytest.raises(ConfigError, match="unknown device 'tpu'"):
        async with open_team(bus, ["tpu"], 1):
            pass


async def test_lognormal_backend_draws_latency_with_the_time_scale() -> None:
    fit = LognormalFit(mu=math.log(10.0), sigma=0.5, n=100)
    backend = LatencyBackend(fit=fit, seed=3, time_scale=0.0)
    calls = [
        await backend.generate(GenerateRequest(prompt="x", max_tokens=300)) for _ in range(200)
    ]
    mean = sum(c.timings.generation_s for c in calls) / len(calls)
    assert mean == pytest.approx(fit.mean_s, rel=0.15)
    assert backend.tokens_per_s == pytest.approx(300 / fit.mean_s)
    assert all(c.tokens_out == 300 for c in calls)


async def test_common_draws_key_a_call_by_run_and_prompt_not_by_agent() -> None:
    fit = LognormalFit(mu=math.log(10.0), sigma=0.8, n=100)
    draws = CommonDraws(seed=5)
    one, other = (LatencyBackend(fit=fit, seed=s, time_scale=0.0, draws=draws) for s in (1, 2))

    async def latency(backend: LatencyBackend, prompt: str) -> float:
        answer = await backend.generate(GenerateRequest(prompt=prompt, max_tokens=100))
        return answer.timings.generation_s

    draws.begin(0)
    first = [await latency(one, "a"), await latency(one, "b"), await latency(one, "a")]
    draws.begin(0)  # the same run again, the calls made by the other agent, in another order
    again_b, again_a = await latency(other, "b"), await latency(other, "a")
    assert (again_a, again_b) == (first[0], first[1])
    assert await latency(other, "a") == first[2] != first[0]  # a prompt's second call draws anew
    draws.begin(1)
    assert await latency(one, "a") != first[0]  # another run, other draws
    alone = LatencyBackend(fit=fit, seed=1, time_scale=0.0)  # no common draws: the agent's own
    assert [await latency(alone, p) for p in ("a", "a")] != [first[0], first[0]]


async def test_a_team_with_common_draws_gives_every_architecture_the_same_calls(bus: Bus) -> None:
    graph = chain_plus_free("paired", 2, 4, work_tokens=100)
    async with open_team(
        bus, ["paper-resample"], 3, graph=graph, time_scale=0.002, common_draws=True
    ) as team:
        runs = {
            arch: await run_team(team, graph, n, architecture=arch, seed=7)
            for arch, n in (
                ("centralized-greedy", 3),
                ("decentralized", 2),
                ("centralized-preassigned", 1),
            )
        }
        calls = team.calls
    by_prompt: dict[str, set[float]] = {}
    for call in calls:
        by_prompt.setdefault(call.prompt, set()).add(round(call.modelled_s, 9))
    assert len(by_prompt) == len(graph.subtasks)
    assert all(len(seconds) == 1 for seconds in by_prompt.values()), by_prompt
    assert len({r.replayed_s for r in runs.values()}) > 1  # the same draws, other schedules


@pytest.mark.slow
async def test_real_llama_team_runs_a_tiny_graph(bus: Bus) -> None:
    resolve_model("smollm2-135m")
    graph = chain_plus_free("tiny", 2, 1, work_tokens=8)
    async with open_team(bus, ["llama"], 2, graph=graph) as team:
        run = await run_team(team, graph, 2, task_timeout_s=300)
    assert run.time_scale == 1.0 and run.tokens_out > 0
    assert sum(a.tasks for a in run.agents) == 3 and run.makespan_s > 0


def test_study_run_writes_csv_json_plots_and_report(
    tmp_path: Path, paper: PaperData, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LMTEAMS_PAPER_DATA", raising=False)  # the packaged copy, by default
    config = tmp_path / "tiny.toml"
    config.write_text(
        'name = "tiny"\ngraphs = ["parallel-p09"]\nteam_sizes = [2]\n'
        'architectures = ["centralized-greedy", "decentralized"]\n'
        'scheduling = ["async", "rounds"]\ntime_scale = 0.002\n',
        encoding="utf-8",
    )
    assert count_runs(load_experiment(config)) == 8  # 2 x 2 cells x (baseline + n=2)
    out = tmp_path / "out"
    result = CliRunner().invoke(study_app, ["run", str(config), "--out", str(out)])
    assert result.exit_code == 0, result.output
    names = {p.name for p in out.iterdir()}
    assert {"runs.csv", "runs.json", "speedup.png", "cost_idle_conflicts.png"} <= names
    runs = json.loads((out / "runs.json").read_text())
    assert len(runs) == 8 and all(r["speedup"] > 0 for r in runs)
    report = (out / "report.md").read_text()
    # the paper's numbers as recomputed from its runs, not a quoted constant
    c, r = (summary := speedup_summary(paper.runs)).cells, summary.runs
    assert f"| cells | {c.count} | {c.mean:.2f}x | {c.median:.2f}x |" in report
    assert f"| runs | {r.count} | {r.mean:.2f}x | {r.median:.2f}x |" in report
    assert r.count == 956 and f"{c.mean:.2f}" == "1.05"


def test_study_run_with_a_missing_paper_data_dir_says_how_to_point_at_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "tiny.toml"
    config.write_text(
        'name = "tiny"\ngraphs = ["parallel-p09"]\nteam_sizes = [2]\n'
        'architectures = ["centralized-greedy"]\nscheduling = ["async"]\ntime_scale = 0.002\n',
        encoding="utf-8",
    )
    monkeypatch.setenv("LMTEAMS_PAPER_DATA", str(tmp_path / "moved"))
    result = CliRunner().invoke(study_app, ["run", str(config), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output  # the runs are written all the same
    report = (tmp_path / "out" / "report.md").read_text()
    assert "no comparison" in report
    assert "--paper-data DIR or set LMTEAMS_PAPER_DATA" in report
    assert "moved (from $LMTEAMS_PAPER_DATA)" in report
    assert "given explicitly" not in report  # nobody gave one


def test_experiment_config_errors_name_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('graphs = ["mixed-p05"]\nteam_size = [1]\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="team_size"):
        load_experiment(bad)
    bad.write_text('graphs = ["mixed-p05"]\narchitectures = ["anarchy"]\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="anarchy"):
        load_experiment(bad)
    assert load_experiment(example_config("quick")).name == "quick"


async def test_stragglers_slow_the_team_down(bus: Bus) -> None:
    async with open_team(bus, ["steady"], 4, graph=PARALLEL, time_scale=0.01, seed=3) as calm:
        base = await run_team(calm, PARALLEL, 4)
    async with open_team(
        bus, ["steady"], 4, team="slow", graph=PARALLEL, time_scale=0.01, seed=3,
        straggler_rate=0.5, straggler_factor=4.0,
    ) as slow:  # fmt: skip
        hit = await run_team(slow, PARALLEL, 4)
    assert hit.straggler_rate == 0.5 and base.replayed_s == pytest.approx(2.0)
    # Each call takes 1 s or, straggling, 4 s; the team waits for its slowest.
    assert hit.replayed_s >= 4.0


async def test_crashed_calls_are_retried_and_every_subtask_completes(bus: Bus) -> None:
    # one agent, so its seeded draws meet the subtasks in a fixed order: some calls fail,
    # none of them three times over (the engine's MAX_FAILURES, which would fail the job)
    async with open_team(
        bus, ["steady"], 1, team="crashy", graph=PARALLEL, time_scale=0.01, seed=5,
        crash_rate=0.3,
    ) as team:  # fmt: skip
        run = await run_team(team, PARALLEL, 1)
    assert run.retries > 0 and run.crash_rate == 0.3
    assert run.tasks == len(PARALLEL.subtasks)
    assert run.executions == run.tasks + run.retries  # every failure cost one more call
    assert run.duplicates == 0


@pytest.mark.parametrize("device", ["paper", "paper-resample"])
async def test_paper_latency_agents_run_a_team_on_the_bus(
    bus: Bus, paper_dir: Path, device: str
) -> None:
    """Per-call latencies from the paper's own LLM calls (fitted, or resampled as they were)."""
    async with open_team(
        bus, [device], 4, team=f"t-{device}", graph=PARALLEL, time_scale=0.002,
        paper_data=paper_dir,
    ) as team:  # fmt: skip
        run = await run_team(team, PARALLEL, 4)
    assert run.tasks == len(PARALLEL.subtasks) and run.executions >= run.tasks
    # 8 calls of a third of a paper call each (100 of 300 tokens), none over 180 s
    assert 0.0 < run.replayed_s < 8 * 180.0 / 3
    assert run.replayed_s != pytest.approx(8 / 4 * 3.0)  # not the steady device's time


async def test_overheads_calibrate_only_the_architectures_asked(bus: Bus) -> None:
    graph = chain_plus_free("calibrated", 2, 2, work_tokens=50)
    async with open_team(bus, ["steady"], 2, graph=graph, time_scale=0.01) as team:
        one = await calibrate_overheads(team, [1, 2], repeats=1, architectures=["decentralized"])
        with pytest.raises(ConfigError, match="architecture"):
            await calibrate_overheads(team, [1], repeats=1, architectures=["ring"])
    assert list(one) == ["decentralized"]
    assert one["decentralized"].sizes == (1, 2)
    assert all(math.isfinite(x) and x >= 0.0 for x in one["decentralized"].seconds)
    assert one["decentralized"].errors == (0.0, 0.0)  # one repeat: no spread to go by


async def test_calibrated_overheads_carry_their_standard_error(bus: Bus) -> None:
    """Repeated calibration runs differ (the bus, the scheduler, the load), so the figure
    the plan gets is uncertain, and says by how much."""
    graph = chain_plus_free("calibrated", 2, 2, work_tokens=50)
    async with open_team(bus, ["steady"], 2, graph=graph, time_scale=0.01) as team:
        cost = await calibrate_overheads(team, [2], repeats=3, architectures=["decentralized"])
    (error,) = cost["decentralized"].errors
    assert 0.0 < error < math.inf
