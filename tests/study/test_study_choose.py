"""Study runs whose decentralized agents choose what to claim with their model.

Real nats-server, simulated agents on the ``steady`` device (every 100-token call takes one
modelled second, so agents finishing together read the same board). The choosing is the
job engine's (``choose = "model"``); the simulated model's answer is drawn by
``lmteams.study._claim`` with a settable quality, and a bad pick is a real compare-and-set
the bucket refuses. Nothing here reads the clock.
"""

from __future__ import annotations

import random

import pytest

from lmteams.bus import Bus, EmbeddedServer
from lmteams.errors import ConfigError
from lmteams.hardware import GenerateRequest
from lmteams.study import (
    ExperimentConfig,
    LatencyBackend,
    chain_plus_free,
    count_runs,
    open_team,
    run_experiment,
    run_team,
)
from lmteams.study._claim import answer_claim, parse_claim_prompt

WIDE = chain_plus_free("wide-9", 0, 9, work_tokens=100)


async def test_model_choice_spends_coordination_tokens_apart_from_work(bus: Bus) -> None:
    async with open_team(bus, ["steady"], 3, graph=WIDE, time_scale=0.05) as team:
        chosen = await run_team(team, WIDE, 3, architecture="decentralized", choose="model")
        first = await run_team(team, WIDE, 3, architecture="decentralized", choose="first")
    assert chosen.choose == "model" and first.choose == "first"
    # every claim was preceded by a model call over the board, metered as coordination
    assert chosen.coordination_calls >= len(WIDE.subtasks)
    assert chosen.coordination_tokens_in > 0 and chosen.coordination_tokens_out > 0
    # the work's tokens are the graph's, whatever the choosing cost
    assert chosen.tokens_out == first.tokens_out == WIDE.work
    assert chosen.tokens_in == first.tokens_in
    assert chosen.executions == first.executions == len(WIDE.subtasks)
    assert (first.coordination_calls, first.coordination_tokens_in) == (0, 0)
    assert first.coordination_tokens_out == 0 and first.coordination_s == 0.0
    assert chosen.coordination_s > 0.0


async def test_a_bad_chooser_makes_counted_conflicts_and_each_subtask_commits_once(
    bus: Bus, nats_server: EmbeddedServer
) -> None:
    async with open_team(bus, ["steady"], 3, graph=WIDE, time_scale=0.05, claim_error=1.0) as team:
        run = await run_team(
            team, WIDE, 3, architecture="decentralized", scheduling="rounds", choose="model"
        )
    assert run.claim_error == 1.0
    # every agent named the first ready subtask: the ones that lost the race were refused
    assert run.conflicts > 0
    assert run.conflicts == sum(a.lost_claims for a in run.agents)
    # ... and the job is still right: each subtask claimed, worked and committed once
    assert run.claims == len(WIDE.subtasks)
    assert run.executions == len(WIDE.subtasks) and run.duplicates == 0
    assert sum(a.tasks for a in run.agents) == len(WIDE.subtasks)
    assert run.tokens_out == WIDE.work


async def test_model_choice_is_a_decentralized_option(bus: Bus) -> None:
    async with open_team(bus, ["steady"], 1, graph=WIDE, time_scale=0.05) as team:
        with pytest.raises(ConfigError, match="decentralized"):
            await run_team(team, WIDE, 1, choose="model")
        with pytest.raises(ConfigError, match="choose must be one of"):
            await run_team(team, WIDE, 1, architecture="decentralized", choose="vote")


def _board(agent: str, ready: list[str]) -> str:
    """A claim prompt as the engine writes one (the integration tests above run the real one)."""
    lines = "\n".join(f"{r}: part {r}" for r in ready)
    return (
        f"You are agent {agent} in a team working on 'wide'.\nDone: nothing yet.\n"
        f"Ready subtasks (id: title):\n{lines}\n"
        "Answer with the id of the one subtask you will take, and nothing else."
    )


def test_a_good_chooser_spreads_the_team_and_a_bad_one_herds() -> None:
    ready = ["t0", "t1", "t2", "t3"]
    rng = random.Random(1)
    good = [answer_claim(_board(f"agent-{k}", ready), rng, 0.0) for k in range(6)]
    assert good == ["t0", "t1", "t2", "t3", "t0", "t1"]
    bad = {answer_claim(_board(f"agent-{k}", ready), rng, 1.0) for k in range(6)}
    assert bad == {"t0"}
    assert answer_claim("Summarise the sales data.", rng, 1.0) is None
    assert parse_claim_prompt(_board("agent-0", ready)) == ("agent-0", tuple(ready))


async def test_a_paper_device_answers_a_claim_with_a_ready_id() -> None:
    backend = LatencyBackend(samples=(3.0,), time_scale=0.0, claim_error=0.0)
    reply = await backend.generate(
        GenerateRequest(prompt=_board("agent-2", ["a", "b"]), max_tokens=16)
    )
    assert reply.text == "a" and reply.tokens_out == 16
    work = await backend.generate(GenerateRequest(prompt="write part a", max_tokens=16))
    assert work.text.startswith("sim answer to:")
    assert reply.timings.generation_s == pytest.approx(3.0 * 16 / 300)  # a short reply
    full = LatencyBackend(samples=(3.0,), time_scale=0.0, full_claims=True)
    whole = await full.generate(
        GenerateRequest(prompt=_board("agent-1", ["a", "b"]), max_tokens=16)
    )
    assert whole.text == "b" and whole.timings.generation_s == pytest.approx(3.0)
    with pytest.raises(ConfigError, match="claim_error"):
        LatencyBackend(samples=(3.0,), claim_error=1.5)


def test_a_sweep_crosses_claim_choices_with_decentralized_only() -> None:
    config = ExperimentConfig(
        graphs=("mixed-p05",),
        team_sizes=(1, 2),
        architectures=("centralized-greedy", "decentralized"),
        choose=("first", "model"),
    )
    assert config.arms() == (
        ("centralized-greedy", "first"),
        ("decentralized", "first"),
        ("decentralized", "model"),
    )
    assert count_runs(config) == 3 * 2
    with pytest.raises(ConfigError, match="choose 'vote'"):
        ExperimentConfig(graphs=("mixed-p05",), choose=("vote",))


async def test_a_sweep_runs_model_choice_as_its_own_condition() -> None:
    config = ExperimentConfig(
        graphs=("parallel-p09",),
        team_sizes=(1, 2),
        architectures=("decentralized",),
        choose=("first", "model"),
        time_scale=0.005,
    )
    runs = await run_experiment(config)
    by_choice = {c: [r for r in runs if r.choose == c] for c in ("first", "model")}
    assert [len(v) for v in by_choice.values()] == [2, 2]
    assert all(r.coordination_tokens_in > 0 for r in by_choice["model"])
    assert all(r.coordination_tokens_in == 0 for r in by_choice["first"])
    # each choice is its own condition: its speedup is over its own 1-agent run
    for choice in by_choice.values():
        one = next(r for r in choice if r.n_agents == 1)
        assert all(r.baseline_s == pytest.approx(one.makespan_s) for r in choice)
