"""Strategies end to end on a real nats-server: tasks through JetStream, scripted agents."""

from __future__ import annotations

import anyio
import msgspec

from lmteams.agents import Result, TeamClient, open_runtime
from lmteams.bus import TASKS_CONSUMER, Bus, Subjects
from lmteams.consensus import verify_quorum
from lmteams.testing import wait_until

from .conftest import Equivocator, Forger, KeySwapper, ScriptedAgent, says, spawn_team


async def test_vote_agrees_and_reports_its_cost(bus: Bus, team_name: str) -> None:
    async with open_runtime(bus, team_name) as rt:
        await spawn_team(rt, {f"h{i}": ScriptedAgent(says("17 + 25 = 42")) for i in range(3)})
        result = await TeamClient(bus, team_name).submit(
            "17+25?", strategy="vote", agents=3, timeout=30
        )
    assert result.ok and "42" in result.answer
    assert result.tally == {"42": 3.0}
    assert len(result.answers) == 3 and {a.normalized for a in result.answers} == {"42"}
    assert result.messages == 6 and result.rounds == 1
    assert result.tokens_out > 0 and result.strategy == "vote"


async def test_plain_vote_is_outvoted_by_two_colluders_in_three(bus: Bus, team_name: str) -> None:
    """Shown on purpose: majority voting has no defence against a colluding majority."""
    async with open_runtime(bus, team_name) as rt:
        await spawn_team(
            rt,
            {
                "honest": ScriptedAgent(says("42")),
                "liar1": ScriptedAgent(says("13"), coordinates=False),
                "liar2": ScriptedAgent(says("13"), coordinates=False),
            },
        )
        result = await TeamClient(bus, team_name).submit(
            "17+25?", strategy="vote", agents=3, timeout=30
        )
    assert result.ok and result.answer == "13"
    assert result.tally == {"42": 1.0, "13": 2.0}


async def test_weighted_vote_follows_confidence(bus: Bus, team_name: str) -> None:
    async with open_runtime(bus, team_name) as rt:
        await spawn_team(
            rt,
            {
                "sure": ScriptedAgent(says("42"), logprob=-0.05),
                "unsure1": ScriptedAgent(says("13"), logprob=-3.0, coordinates=False),
                "unsure2": ScriptedAgent(says("13"), logprob=-3.0, coordinates=False),
            },
        )
        client = TeamClient(bus, team_name)
        weighted = await client.submit("17+25?", strategy="weighted", agents=3, timeout=30)
        plain = await client.submit("17+25?", strategy="vote", agents=3, timeout=30)
    assert weighted.answer == "42" and plain.answer == "13"
    assert weighted.tally["42"] > weighted.tally["13"]


async def test_quorum_survives_a_byzantine_member(bus: Bus, team_name: str) -> None:
    async with open_runtime(bus, team_name) as rt:
        agents = {f"h{i}": ScriptedAgent(says("42")) for i in range(3)}
        agents["byz"] = ScriptedAgent(says("13"), coordinates=False)
        await spawn_team(rt, agents)
        result = await TeamClient(bus, team_name).submit(
            "17+25?", strategy="quorum", agents=4, timeout=30
        )
        keys = {n: a.identity.public_key for n, a in agents.items()}
    assert result.ok and result.answer == "42"  # n = 4 = 3f+1 with f = 1; 2f+1 = 3 agree
    assert result.tally == {"42": 3.0, "13": 1.0}
    assert all(a.signature for a in result.answers)
    assert verify_quorum(result, keys)
    forged = msgspec.structs.replace(result, answer="13")
    assert not verify_quorum(forged, keys)  # a client cannot be told a different commit


async def test_quorum_refuses_to_commit_without_2f_plus_1(bus: Bus, team_name: str) -> None:
    async with open_runtime(bus, team_name) as rt:
        agents = {f"h{i}": ScriptedAgent(says("42")) for i in range(2)}
        agents |= {f"byz{i}": ScriptedAgent(says("13"), coordinates=False) for i in range(2)}
        await spawn_team(rt, agents)
        result = await TeamClient(bus, team_name).submit(
            "q", strategy="quorum", agents=4, timeout=30
        )
    assert not result.ok and result.error_kind == "no_quorum" and result.answer == ""


async def test_equivocation_is_detected_and_reported(bus: Bus, team_name: str) -> None:
    async with open_runtime(bus, team_name) as rt:
        agents = {f"h{i}": ScriptedAgent(says("42")) for i in range(3)}
        agents["two-faced"] = Equivocator(says("42"), coordinates=False)
        await spawn_team(rt, agents)
        result = await TeamClient(bus, team_name).submit(
            "q", strategy="quorum", agents=4, timeout=30
        )
    assert result.flagged == ("two-faced",)
    assert result.ok and result.tally == {"42": 3.0}  # its vote did not count


async def test_forged_vote_is_rejected(bus: Bus, team_name: str) -> None:
    async with open_runtime(bus, team_name) as rt:
        agents = {f"h{i}": ScriptedAgent(says("42")) for i in range(3)}
        agents["forger"] = Forger(victim="h1")
        await spawn_team(rt, agents)
        result = await TeamClient(bus, team_name).submit(
            "q", strategy="quorum", agents=4, timeout=30
        )
    assert "forger" in result.flagged
    assert result.ok and result.tally == {"42": 3.0}
    assert [a.agent for a in result.answers].count("h1") == 1


def _debater(first: str):  # type: ignore[no-untyped-def]
    """Answers ``first``; later goes with a strict majority of the others, else keeps its own."""

    def script(prompt: str) -> str:
        if "Other agents answered:" not in prompt:
            return first
        lines = prompt.splitlines()
        said = [line.split(": ", 1)[1] for line in lines if line.startswith("- ")]
        own = next(line.split(": ", 1)[1] for line in lines if line.startswith("Your previous"))
        top = max(sorted(set(said)), key=said.count)
        return top if said.count(top) * 2 > len(said) else own

    return script


async def test_debate_converges_and_keeps_every_round(bus: Bus, team_name: str) -> None:
    async with open_runtime(bus, team_name) as rt:
        await spawn_team(
            rt,
            {
                "a": ScriptedAgent(_debater("Paris")),
                "b": ScriptedAgent(_debater("Lyon"), coordinates=False),
                "c": ScriptedAgent(_debater("Paris"), coordinates=False),
                "d": ScriptedAgent(_debater("Nice"), coordinates=False),
            },
        )
        result = await TeamClient(bus, team_name).submit(
            "Capital of France?", strategy="debate", agents=4, timeout=30
        )
    assert result.ok and result.answer == "Paris"
    assert result.rounds == 2  # 2 of 4 is no majority; after one exchange all say Paris
    assert sorted({a.round for a in result.answers}) == [0, 1]
    assert len(result.answers) == 8
    assert result.tally == {"paris": 4.0}


async def test_debate_gives_up_after_its_rounds(bus: Bus, team_name: str) -> None:
    async with open_runtime(bus, team_name) as rt:
        stubborn = {n: ScriptedAgent(says(n), coordinates=n == "x") for n in ("x", "y", "z")}
        await spawn_team(rt, stubborn)
        result = await TeamClient(bus, team_name).submit(
            "Pick one.", strategy="debate", agents=3, rounds=2, timeout=30
        )
    assert not result.ok and result.error_kind == "no_agreement" and result.rounds == 2


async def test_too_few_live_agents_is_a_clear_error(bus: Bus, team_name: str) -> None:
    async with open_runtime(bus, team_name) as rt:
        await spawn_team(rt, {"solo": ScriptedAgent(says("42"))})
        result = await TeamClient(bus, team_name).submit("q", strategy="vote", agents=3, timeout=30)
    assert not result.ok and result.error_kind == "agents"
    assert "asks for 3 agents but 1 are available" in result.error


async def test_a_coordinator_waits_for_peers_it_has_not_heard_of_yet(
    bus: Bus, team_name: str
) -> None:
    """A task taken the moment a team starts must not fail because an announcement is late."""
    results: list[Result] = []
    async with open_runtime(bus, team_name) as rt:
        await spawn_team(rt, {"first": ScriptedAgent(says("42"))})
        stream = Subjects(team_name).tasks_stream

        async def taken() -> bool:
            info = await bus.js.consumer_info(stream, TASKS_CONSUMER)
            return info.num_ack_pending == 1

        async def submit() -> None:
            client = TeamClient(bus, team_name)
            results.append(await client.submit("q", strategy="vote", agents=2, timeout=30))

        async with anyio.create_task_group() as tg:
            tg.start_soon(submit)
            await wait_until(taken, timeout=15)  # the coordinator holds the task, alone
            await rt.spawn(ScriptedAgent(says("42")), actor_id="late", roles=("worker",))
    (result,) = results
    assert result.ok and sorted(a.agent for a in result.answers) == ["first", "late"]


async def test_a_vote_signed_with_a_key_other_than_the_bound_one_is_flagged(
    bus: Bus, team_name: str
) -> None:
    async with open_runtime(bus, team_name) as rt:
        agents = {f"h{i}": ScriptedAgent(says("42")) for i in range(3)}
        agents["swapper"] = swapper = KeySwapper()
        await spawn_team(rt, agents)
        bound = rt.membership.public_key("swapper")
        result = await TeamClient(bus, team_name).submit(
            "q", strategy="quorum", agents=4, timeout=30
        )
    assert bound == swapper.identity.public_key != swapper.second.public_key
    assert result.flagged == ("swapper",)
    assert result.ok and result.tally == {"42": 3.0}  # its vote did not count


async def test_strategies_never_ask_a_drained_agent(bus: Bus, team_name: str) -> None:
    async with open_runtime(bus, team_name) as rt:
        agents = {f"h{i}": ScriptedAgent(says("42")) for i in range(4)}
        await spawn_team(rt, agents)
        await rt.stop("h3")  # drains and leaves
        gone = rt.membership.member("h3")
        assert gone is not None and gone.state == "left"
        client = TeamClient(bus, team_name)
        refused = await client.submit("q", strategy="vote", agents=4, timeout=30)
        voted = await client.submit("q", strategy="vote", agents=3, timeout=30)
    assert not refused.ok and refused.error_kind == "agents"
    assert "asks for 4 agents but 3 are available" in refused.error
    assert voted.ok and sorted(a.agent for a in voted.answers) == ["h0", "h1", "h2"]
