"""`lmteams up --shared-model`: three agents in one process on one loaded model, each still
its own member of the team, with its own key, votes and share of a job."""

from __future__ import annotations

import pytest

from lmteams.agents import TeamClient
from lmteams.cli._demo import DEMO_JOB
from lmteams.gossip import open_membership
from lmteams.jobs import JobClient, JobStatus
from lmteams.testing import wait_until

from .conftest import TEAM, Team, agent_processes

pytestmark = pytest.mark.slow


async def test_three_agents_share_one_process_and_each_keeps_its_place(
    shared_team: Team,
) -> None:
    facts = shared_team.agents
    assert set(facts) == {"agent-1", "agent-2", "agent-3"}
    assert len({f.pid for f in facts.values()}) == 1  # one process
    assert len(agent_processes(shared_team.url)) == 1
    keys: dict[str, str] = {}

    def signed() -> bool:  # a member gossips its key a beat after it joins
        keys.update({m.name: m.facts.public_key for m in view.members() if m.name in facts})
        return len(keys) == 3 and all(keys.values())

    async with open_membership(shared_team.bus, TEAM) as view:
        await wait_until(signed, timeout=30)
    assert len(set(keys.values())) == 3  # three signing keys
    client = TeamClient(shared_team.bus, TEAM)
    result = await client.submit(
        "What is 2 + 3? Answer with a number.",
        strategy="vote",
        agents=3,
        normalizer="number",
        max_tokens=12,
        timeout=180,
    )
    assert result.strategy == "vote" and len(result.answers) == 3
    assert {a.agent for a in result.answers} == set(facts)
    assert all(a.model.startswith("SmolLM2") for a in result.answers)


async def test_a_shared_model_team_runs_a_job(shared_team: Team) -> None:
    result = await JobClient(shared_team.bus, TEAM).run_job(DEMO_JOB, timeout=240)
    assert result.status is JobStatus.DONE, result.error
    records = {r.id: r for r in result.subtasks}
    assert all(r.output.strip() for r in records.values())
    assert {r.agent for r in records.values()} <= set(shared_team.agents)
    for dep in ("fruit", "colour", "animal"):
        assert records[dep].output.strip() in records["sentence"].prompt
