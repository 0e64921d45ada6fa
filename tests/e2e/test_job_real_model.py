"""A team job on the real SmolLM2 model: the combining subtask is asked with the outputs of
the subtasks it depends on in its prompt, and the job's figures are measured."""

from __future__ import annotations

import pytest

from lmteams.cli._demo import DEMO_JOB
from lmteams.jobs import JobClient, JobStatus

from .conftest import TEAM, Team

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("architecture", ["centralized", "decentralized"])
async def test_a_real_model_team_runs_a_job_whose_last_prompt_holds_its_inputs(
    team: Team, architecture: str
) -> None:
    client = JobClient(team.bus, TEAM)
    result = await client.run_job(DEMO_JOB, architecture=architecture, timeout=240)  # type: ignore[arg-type]
    assert result.status is JobStatus.DONE, result.error
    records = {r.id: r for r in result.subtasks}
    final = records["sentence"]
    assert set(result.outputs) == {"sentence"} and result.outputs["sentence"] == final.output
    assert final.output.strip() and final.tokens_out > 0
    for dep in ("fruit", "colour", "animal"):
        assert records[dep].output.strip(), dep
        assert records[dep].output.strip() in final.prompt, dep  # rendered from its inputs
        assert records[dep].agent in team.agents  # a real agent process of the team answered
    figures = result.figures
    assert figures is not None
    assert figures.agents == 2 and figures.tokens_out >= sum(r.tokens_out for r in records.values())
    assert 0 < figures.span_s <= figures.work_s and figures.work_span_bound <= 2
