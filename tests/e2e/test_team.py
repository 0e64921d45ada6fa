"""End to end: real processes, a real nats-server and the real default model (SmolLM2-135M)."""

from __future__ import annotations

import json
import os
import signal

import anyio
import nats
import pytest

import lmteams
from lmteams.agents import Progress, Result, Stage, Task, TeamClient
from lmteams.bus import Codec, Incoming, last_message
from lmteams.gossip import MemberState, SwimMember, open_member
from lmteams.testing import wait_until

from .conftest import TEAM, Team

pytestmark = pytest.mark.slow


async def test_cli_publish_wait_json(team: Team) -> None:
    args = ["task", "publish", "What is the capital of France?", "--team", TEAM]
    args += ["--nats", team.url, "--wait", "--json", "--max-tokens", "24"]
    done = await anyio.to_thread.run_sync(lambda: team.lmteams(*args))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["type"] == "result" and result["ok"] is True
    assert result["answer"].strip()
    assert result["agent"] in team.agents and result["device"] == "cpu"
    assert result["tokens_out"] > 0 and result["model"].startswith("SmolLM2")


async def test_cli_finds_the_running_team_without_a_url(team: Team) -> None:
    done = await anyio.to_thread.run_sync(
        lambda: team.lmteams(
            "task", "publish", "Say hi.", "--team", TEAM, "--wait", "--max-tokens", "8"
        )
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()


async def test_python_api(team: Team) -> None:
    async with lmteams.connect(team.url, team=TEAM) as client:
        result = await client.submit("Name a primary colour.", max_tokens=16, timeout=120)
    assert result.ok and result.answer.strip()
    assert result.tokens_in > 0 and result.generation_s > 0


async def test_plain_nats_client_gets_json(team: Team) -> None:
    nc = await nats.connect(team.url)
    try:
        sub = await nc.subscribe(team.subjects.results("plain-e2e"))
        await nc.publish(
            team.subjects.tasks,
            json.dumps(
                {"type": "task", "id": "plain-e2e", "prompt": "What is 1 + 1?", "max_tokens": 12}
            ).encode(),
            headers={"Content-Type": "application/json"},
        )
        msg = await sub.next_msg(timeout=120)
    finally:
        await nc.close()
    body = json.loads(msg.data)
    assert body["task_id"] == "plain-e2e" and body["ok"] is True and body["answer"]


async def _claimed_by(team: Team, task_id: str) -> str:
    """Wait until an agent has taken ``task_id``; return that agent's name."""
    who: list[str] = []

    async def on_progress(inc: Incoming[Progress]) -> None:
        if inc.body.stage == Stage.CLAIMED:
            who.append(inc.body.agent)

    sub = await team.bus.subscribe(
        team.subjects.progress(task_id), on_progress, codec=Codec(Progress)
    )
    try:
        with anyio.fail_after(60):
            while not who:
                await anyio.sleep(0.02)
    finally:
        await sub.unsubscribe()
    return who[0]


async def test_kill9_agent_holding_a_task_completes_exactly_once(team: Team) -> None:
    client = TeamClient(team.bus, TEAM)
    seen: list[Result] = []

    async def on_result(inc: Incoming[Result]) -> None:
        seen.append(inc.body)

    await team.bus.subscribe(team.subjects.results("kill-1"), on_result, codec=Codec(Result))
    task = Task(id="kill-1", prompt="Write a long story about a dragon.", max_tokens=400)
    async with anyio.create_task_group() as tg:
        tg.start_soon(client.publish, task)
        victim = await _claimed_by(team, "kill-1")
    os.kill(team.agents[victim].pid, signal.SIGKILL)
    result = await client.wait("kill-1", timeout=180)
    # a barrier, not a pause: once a later task is answered, the agents have moved past
    # kill-1's redelivery, so a duplicate result would already have reached ``seen``
    assert (await client.submit("Say hi.", max_tokens=4, timeout=180)).ok
    assert result.ok and result.deliveries >= 2
    assert len(seen) == 1  # the caller saw one result
    stored = await last_message(
        team.bus, team.subjects.results_stream, team.subjects.results("kill-1")
    )
    assert stored is not None

    async def drained() -> bool:
        info = await team.bus.js.stream_info(team.subjects.tasks_stream)
        return info.state.messages == 0

    # acked, nothing left behind (an ack is not awaited by the server: it lands just after
    # the result the client already holds)
    await wait_until(drained, timeout=30)


async def test_malformed_task_gets_error_and_agents_keep_serving(team: Team) -> None:
    client = TeamClient(team.bus, TEAM)
    inbox = team.bus.nc.new_inbox()
    replies = await team.bus.nc.subscribe(inbox)
    await team.bus.nc.publish(
        team.subjects.tasks,
        b'{"type": "task", "id": "bad-e2e", "prompt": ["not", "a", "string"]}',
        headers={"Content-Type": "application/json", "Lmt-Reply-To": inbox},
    )
    bad = Codec(Result).decode((await replies.next_msg(timeout=60)).data, json=True)
    assert not bad.ok and bad.error_kind == "decode" and "$.prompt" in bad.error
    assert await client.result("bad-e2e") is None  # never a task: no result under its id
    good = await client.submit("Say yes.", max_tokens=4, timeout=120)
    assert good.ok


async def test_sigterm_drain_loses_nothing(team: Team) -> None:
    """A drained agent finishes its task, and its peers see it leave rather than crash."""
    client = TeamClient(team.bus, TEAM)
    tasks = [
        Task(id=f"drain-{i}", prompt=f"Count from 1 to {10 + i}.", max_tokens=60) for i in range(4)
    ]
    results: list[Result] = []

    async def run(task: Task) -> None:
        results.append(await client.run(task, timeout=240))

    async with open_member(team.bus, TEAM, "observer") as observer:
        await wait_until(lambda: set(team.agents) <= set(observer.alive()), timeout=30)
        async with anyio.create_task_group() as tg:
            for task in tasks:
                tg.start_soon(run, task)
            victim = await _claimed_by(team, "drain-0")
            os.kill(team.agents[victim].pid, signal.SIGTERM)
        await wait_until(lambda: _state(observer, victim) is not MemberState.ALIVE, timeout=30)
        assert _state(observer, victim) is MemberState.LEFT
    assert sorted(r.task_id for r in results) == sorted(t.id for t in tasks)
    assert all(r.ok for r in results)
    drained = [r for r in results if r.task_id == "drain-0"]
    assert drained[0].agent == victim and drained[0].deliveries == 1  # finished, not redone


def _state(member: SwimMember, name: str) -> MemberState | None:
    record = member.member(name)
    return record.state if record else None


async def test_vote_on_the_real_model(team: Team) -> None:
    client = TeamClient(team.bus, TEAM)
    result = await client.submit(
        "What is 2 + 3? Answer with a number.",
        strategy="vote",
        agents=2,
        normalizer="number",
        max_tokens=12,
        timeout=180,
    )
    assert result.strategy == "vote" and len(result.answers) == 2
    assert {a.agent for a in result.answers} == set(team.agents)
    assert all(a.model.startswith("SmolLM2") for a in result.answers)
    assert sum(result.tally.values()) == sum(1 for a in result.answers if a.normalized)
    assert result.messages == 4 and result.tokens_out > 0
