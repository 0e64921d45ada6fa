"""The OpenAI-compatible backend against llama-cpp-python's own server, for real, on loopback.

One server (SmolLM2-135M) for the module; agents run on a real nats-server. A dead endpoint is
a port nothing listens on.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest
from typer.testing import CliRunner

from lmteams.agents import (
    ActorState,
    TeamClient,
    WorkerAgent,
    WorkerConfig,
    new_task,
    open_runtime,
)
from lmteams.bus import (
    Bus,
    EmbeddedServer,
    Subjects,
    WorkQueueSettings,
    ensure_team_streams,
    free_port,
)
from lmteams.cli import app
from lmteams.errors import BackendError, BackendUnavailableError, ConfigError
from lmteams.hardware import (
    BackendConfig,
    GenerateRequest,
    ModelFile,
    OpenAIBackend,
    advertised_rates,
    open_backend,
    openai_device,
    profile,
)
from lmteams.testing import llama_server, stop_processes, wait_until

MODEL = "smollm2"  # llama-cpp-python's server answers whatever model name it is asked for
TEAM = "oai"


@pytest.fixture(scope="module")
def server_url(default_model: ModelFile) -> Iterator[str]:
    with llama_server(default_model.path) as url:
        yield url


def _config(url: str) -> BackendConfig:
    return BackendConfig(kind="openai", base_url=url, model=MODEL)


@pytest.fixture
async def backend(server_url: str) -> AsyncIterator[OpenAIBackend]:
    async with open_backend(_config(server_url)) as opened:
        assert isinstance(opened, OpenAIBackend)
        yield opened


def _dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


async def test_chat_answer_has_counts_timings_and_device(
    backend: OpenAIBackend, server_url: str
) -> None:
    done = await backend.generate(GenerateRequest(prompt="What is 2+2?", max_tokens=24))
    assert "4" in done.text
    assert done.finish_reason in ("stop", "length") and 0 < done.tokens_out <= 24
    assert done.tokens_in > 0
    assert done.timings.prompt_s > 0 and done.timings.generation_s >= 0
    assert done.device == openai_device(server_url) == backend.device
    assert done.device.startswith("openai:127.0.0.1:") and done.model == MODEL
    # this server sends no usage when streaming: output counted as streamed chunks
    assert backend.usage_reported is False


async def test_raw_completion_honours_max_tokens_and_logprobs(backend: OpenAIBackend) -> None:
    request = GenerateRequest(
        prompt="The capital of France is", max_tokens=6, chat=False, logprobs=True
    )
    done = await backend.generate(request)
    assert "Paris" in done.text
    assert (done.finish_reason, done.tokens_out) == ("length", 6)
    assert done.logprobs is not None and len(done.logprobs) == 6
    assert all(lp <= 0 for lp in done.logprobs)


async def test_stop_strings_pass_through(backend: OpenAIBackend) -> None:
    counting = GenerateRequest(prompt="1, 2, 3, 4, 5,", max_tokens=24, chat=False, stop=(" 8",))
    done = await backend.generate(counting)
    assert done.finish_reason == "stop" and "6" in done.text and "8" not in done.text


async def test_stream_yields_pieces_that_join_to_the_answer(backend: OpenAIBackend) -> None:
    request = GenerateRequest(prompt="Write a short story about a fox.", max_tokens=32)
    pieces: list[str] = []
    async with backend.stream(request) as stream:
        async for piece in stream:
            assert stream.completion is None  # not finished while pieces still arrive
            pieces.append(piece)
    assert len(pieces) > 3
    assert stream.completion is not None and stream.completion.text == "".join(pieces)
    assert stream.completion.tokens_out == len(pieces) and stream.closed


async def test_cancel_mid_stream_hangs_up_and_the_backend_goes_on(
    backend: OpenAIBackend,
) -> None:
    request = GenerateRequest(prompt="Write a long story about the sea.", max_tokens=400)
    got: list[str] = []
    with anyio.CancelScope() as scope:
        async with backend.stream(request) as stream:
            async for piece in stream:
                got.append(piece)
                if len(got) == 3:
                    scope.cancel()
    assert scope.cancelled_caught and len(got) == 3
    assert stream.closed  # the HTTP stream is closed: the server stops generating for it
    assert stream.completion is not None
    assert stream.completion.finish_reason == "cancelled"
    assert stream.completion.text == "".join(got) and stream.completion.tokens_out == 3
    after = await backend.generate(GenerateRequest(prompt="Say hello.", max_tokens=8))
    assert after.text and after.finish_reason in ("stop", "length")


async def test_cancelling_generate_propagates(backend: OpenAIBackend) -> None:
    async with anyio.create_task_group() as tg:
        started = anyio.Event()

        async def long_answer() -> None:
            started.set()
            await backend.generate(GenerateRequest(prompt="Tell a long tale.", max_tokens=400))
            pytest.fail("generate ran to the end despite the cancel")

        tg.start_soon(long_answer)
        await started.wait()
        tg.cancel_scope.cancel()
    done = await backend.generate(GenerateRequest(prompt="Say yes.", max_tokens=4))
    assert done.tokens_out > 0


async def test_dead_endpoint_is_a_clear_unavailable_error() -> None:
    url = _dead_url()
    async with open_backend(BackendConfig(kind="openai", base_url=url, model=MODEL)) as dead:
        with pytest.raises(BackendUnavailableError) as caught:
            await dead.generate(GenerateRequest(prompt="hello"))
    message = str(caught.value)
    assert url in message and "cannot reach" in message and "ConnectError" in message


async def test_a_refused_request_is_a_plain_backend_error(backend: OpenAIBackend) -> None:
    too_long = GenerateRequest(prompt="word " * 3000, max_tokens=8)  # over the server's n_ctx
    with pytest.raises(BackendError) as caught:
        await backend.generate(too_long)
    assert not isinstance(caught.value, BackendUnavailableError)
    assert backend.url in str(caught.value)


async def test_config_errors_name_what_to_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="base_url"):
        async with open_backend(BackendConfig(kind="openai", model=MODEL)):
            pass
    monkeypatch.setitem(sys.modules, "openai", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"lmteams\[openai\]"):
        async with open_backend(BackendConfig(kind="openai", base_url=_dead_url())):
            pass


async def test_profile_measures_the_server_and_agents_advertise_it(
    server_url: str, models_dir: object
) -> None:
    config = _config(server_url)
    measured = await profile(config)
    assert measured.device == openai_device(server_url) and measured.model == MODEL
    assert measured.generation_tokens_per_s > 0 and measured.prompt_tokens_per_s > 0
    assert await profile(config) == measured  # cached by the server's device label
    async with open_backend(config) as opened:
        assert advertised_rates(opened, config) == (
            measured.generation_tokens_per_s,
            measured.prompt_tokens_per_s,
        )


def _worker(url: str, *, max_deliveries: int = 5) -> WorkerAgent:
    queue = WorkQueueSettings(ack_wait_s=30.0, max_deliveries=max_deliveries, retry_delay_s=0.2)
    return WorkerAgent(
        WorkerConfig(backend=_config(url), queue=queue, heartbeat_s=0.2, fetch_timeout_s=0.2)
    )


async def test_an_agent_answers_a_task_through_the_server(bus: Bus, server_url: str) -> None:
    async with open_runtime(bus, TEAM) as rt:
        await rt.spawn(lambda: _worker(server_url), actor_id="w1", roles=("worker",))
        result = await TeamClient(bus, TEAM).submit("What is 2+2?", max_tokens=24, timeout=90)
    assert result.ok and "4" in result.answer, result.error
    assert result.agent == "w1" and result.device == openai_device(server_url)
    assert result.model == MODEL and result.tokens_out > 0 and result.deliveries == 1


async def test_a_dead_endpoint_hands_the_task_back_to_a_live_agent(
    bus: Bus, server_url: str
) -> None:
    dead_agent = _worker(_dead_url())
    async with open_runtime(bus, TEAM) as rt:
        await rt.spawn(lambda: dead_agent, actor_id="dead", roles=("worker",))
        client = TeamClient(bus, TEAM)
        task_id = await client.publish(new_task("What is 2+2?", max_tokens=24))
        await wait_until(lambda: dead_agent.failures >= 1, timeout=60)
        assert await client.result(task_id) is None  # handed back, not ended
        await rt.spawn(lambda: _worker(server_url), actor_id="live", roles=("worker",))
        result = await client.wait(task_id, timeout=90)
        assert rt.state("dead") is ActorState.RUNNING  # the failing agent keeps serving
    assert result.ok and result.agent == "live" and "4" in result.answer
    assert result.deliveries >= 2 and dead_agent.served == 0


async def test_with_only_dead_endpoints_the_task_ends_with_a_clear_error(bus: Bus) -> None:
    url = _dead_url()
    dead_agent = _worker(url, max_deliveries=2)
    async with open_runtime(bus, TEAM) as rt:
        await rt.spawn(lambda: dead_agent, actor_id="dead", roles=("worker",))
        client = TeamClient(bus, TEAM)
        result = await client.submit("What is 2+2?", max_tokens=8, timeout=60)
        second = await client.submit("And 3+3?", max_tokens=8, timeout=60)
        assert rt.state("dead") is ActorState.RUNNING
    assert (result.ok, result.error_kind, result.deliveries) == (False, "poison", 2)
    assert "BackendUnavailableError" in result.error and url in result.error
    assert not second.ok and dead_agent.failures == 4  # it went on taking (and trying) tasks


def test_agent_start_needs_a_base_url_for_openai() -> None:
    argv = ["agent", "start", "--name", "a1", "--backend", "openai", "--model", MODEL]
    outcome = CliRunner().invoke(app, argv)
    assert outcome.exit_code == 2 and "--base-url" in outcome.output


async def test_lmteams_agent_start_answers_through_the_server(
    bus: Bus, nats_server: EmbeddedServer, server_url: str, tmp_path: Path
) -> None:
    argv = [
        sys.executable, "-m", "lmteams", "agent", "start", "--name", "cli1", "--team", TEAM,
        "--backend", "openai", "--base-url", server_url, "--model", MODEL,
        "--nats", nats_server.url,
    ]  # fmt: skip
    env = {**os.environ, "LMTEAMS_HOME": str(tmp_path / "home")}
    with (tmp_path / "agent.log").open("wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            await ensure_team_streams(bus, Subjects(TEAM))  # the task waits there for the agent
            result = await TeamClient(bus, TEAM).submit("What is 2+2?", max_tokens=24, timeout=100)
        finally:
            stop_processes([proc])
    assert result.ok and result.agent == "cli1", result.error
    assert result.device == openai_device(server_url) and result.model == MODEL
