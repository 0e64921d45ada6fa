"""Scripted agents for consensus tests: honest, lying, equivocating and forging members."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

import anyio
import msgspec
import pytest

from lmteams.agents import (
    AgentIdentity,
    Answer,
    Prompt,
    Runtime,
    WorkerAgent,
    WorkerConfig,
    handler,
    load_strategies,
)
from lmteams.bus import WorkQueueSettings
from lmteams.hardware import Backend, Completion, GenerateRequest, Timings
from lmteams.testing import wait_until

Script = Callable[[str], str]


@pytest.fixture(autouse=True, scope="session")
def _strategies() -> None:
    """Register vote, weighted, debate and quorum, as an agent daemon does at start."""
    load_strategies()


class ScriptBackend:
    """The backend protocol, answering from a script instantly and deterministically."""

    device = "script"
    model = "script"

    def __init__(self, script: Script, logprob: float | None) -> None:
        self.script = script
        self.logprob = logprob

    async def generate(self, request: GenerateRequest) -> Completion:
        text = self.script(request.prompt)
        return Completion(
            text=text,
            tokens_in=len(request.prompt.split()),
            tokens_out=len(text.split()),
            timings=Timings(generation_s=0.001),
            finish_reason="stop",
            device=self.device,
            model=self.model,
            logprobs=(self.logprob,) if self.logprob is not None and request.logprobs else None,
        )

    async def aclose(self) -> None:
        return None


class ScriptedAgent(WorkerAgent):
    """A worker whose model is a script."""

    def __init__(
        self, script: Script, *, logprob: float | None = None, coordinates: bool = True
    ) -> None:
        super().__init__(
            WorkerConfig(
                queue=WorkQueueSettings(ack_wait_s=30), heartbeat_s=0.2, fetch_timeout_s=0.2
            )
        )
        self.script = script
        self.logprob = logprob
        self.coordinates = coordinates

    @contextlib.asynccontextmanager
    async def open_backend(self) -> AsyncIterator[Backend]:  # type: ignore[override]
        yield ScriptBackend(self.script, self.logprob)

    async def run(self) -> None:
        if self.coordinates:
            await super().run()
        else:  # a member that answers when asked but never pulls (and so never coordinates)
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._heartbeats)
                while not self._draining:
                    await anyio.sleep(0.05)
                tg.cancel_scope.cancel()


def says(text: str) -> Script:
    return lambda _prompt: text


class Equivocator(ScriptedAgent):
    """Tells the coordinator one thing and broadcasts another, both signed."""

    async def _signed(self, answer: Answer) -> Answer:
        other = msgspec.structs.replace(answer, text="99")
        await super()._signed(other)  # broadcast a signed "99"
        return msgspec.structs.replace(
            answer,
            public_key=self.identity.public_key,
            signature=self.identity.sign_vote(
                answer.task_id, answer.round, answer.agent, answer.text
            ),
        )


class Forger(ScriptedAgent):
    """Signs its own vote but claims it comes from another (honest) agent."""

    def __init__(self, victim: str) -> None:
        super().__init__(says("13"), coordinates=False)
        self.victim = victim

    @handler
    async def on_prompt(self, msg: Prompt) -> Answer:
        text = "42"  # even a right answer must not count when forged
        return Answer(
            task_id=msg.task_id,
            agent=self.victim,
            text=text,
            round=msg.round,
            public_key=self.identity.public_key,
            signature=self.identity.sign_vote(msg.task_id, msg.round, self.victim, text),
        )


class KeySwapper(ScriptedAgent):
    """Signs its own votes, under its own name, but with a key other than the one it joined
    with: a valid signature, by a key the team never bound to this name."""

    def __init__(self) -> None:
        super().__init__(says("42"), coordinates=False)
        self.second = AgentIdentity()

    @handler
    async def on_prompt(self, msg: Prompt) -> Answer:
        text = "42"  # even a right answer must not count under an unbound key
        return Answer(
            task_id=msg.task_id,
            agent=self.context.actor_id,
            text=text,
            round=msg.round,
            public_key=self.second.public_key,
            signature=self.second.sign_vote(msg.task_id, msg.round, self.context.actor_id, text),
        )


async def spawn_team(runtime: Runtime, agents: dict[str, WorkerAgent]) -> None:
    """Spawn the agents and wait until the runtime's membership has every one, with its key."""
    for name, agent in agents.items():
        await runtime.spawn(agent, actor_id=name, roles=("worker",))
    everyone = sorted(agents)
    view = runtime.membership

    def all_known() -> bool:
        return view.live() == everyone and all(view.public_key(n) for n in everyone)

    await wait_until(all_known, timeout=15)


@pytest.fixture
def team_name(request: pytest.FixtureRequest) -> str:
    return f"c{abs(hash(request.node.name)) % 10**6}"
