"""The README's guarantees, attacked from outside with a plain nats-py client.

No input stops an agent (its process keeps running, its actor is never restarted), a prompt
that does not fit is refused naming the limit, a task that keeps failing ends after a bounded
number of deliveries, and a stored result is written once: no later message replaces it.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import anyio
import nats
import pytest
from nats.aio.client import Client

from lmteams.agents import (
    Ping,
    Pong,
    Result,
    Task,
    TeamClient,
    WorkerAgent,
    WorkerConfig,
    open_runtime,
)
from lmteams.bus import (
    Bus,
    EmbeddedServer,
    StreamSettings,
    Subjects,
    WorkQueueSettings,
    ensure_team_streams,
    last_message,
    open_work_queue,
    publish_durable,
)
from lmteams.errors import LmteamsError, RevisionMismatchError
from lmteams.hardware import (
    Backend,
    BackendConfig,
    Completion,
    GenerateRequest,
    SimulatedBackend,
    resolve_model,
)
from lmteams.testing import stop_processes, wait_until

TEAM = "guard"
S = Subjects(TEAM)
HOSTILE_IDS = (
    "m-dot.x",
    "../../etc/passwd",
    "$JS.API.STREAM.DELETE.x",
    "fz-ü",
    "a b",
    "*",
    ">",
    "",
    "x" * 200,
)
LONG_PROMPT = "The quick brown fox jumps over the lazy dog. " * 340  # ~15 KB


def _json(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


def _config(**changes: Any) -> WorkerConfig:
    """A fast simulated worker; ``changes`` override WorkerConfig fields."""
    base: dict[str, Any] = {
        "backend": BackendConfig(kind="sim", sim_device="h100-cuda", time_scale=0.01),
        "heartbeat_s": 0.2,
        "fetch_timeout_s": 0.2,
    }
    return WorkerConfig(**{**base, **changes})


async def _dead_letters(bus: Bus) -> int:
    return int((await bus.js.stream_info(S.dead_stream)).state.messages)


async def _queued(bus: Bus) -> int:
    return int((await bus.js.stream_info(S.tasks_stream)).state.messages)


async def _dead_letter(bus: Bus, kind: str) -> dict[str, str]:
    """The headers of the newest dead letter of ``kind``, once one is there."""
    found: list[dict[str, str]] = []

    async def stored() -> bool:
        dead = await last_message(bus, S.dead_stream, S.dead(kind))
        found[:] = [dead[1]] if dead else []
        return bool(found)

    await wait_until(stored, timeout=10)
    return found[0]


async def _queue_empties(bus: Bus) -> None:
    async def empty() -> bool:
        return await _queued(bus) == 0

    await wait_until(empty, timeout=10)


@contextlib.asynccontextmanager
async def _plain(url: str) -> AsyncIterator[Client]:
    """A plain nats-py client, as any outsider on the bus would have."""
    nc = await nats.connect(url)
    try:
        yield nc
    finally:
        await nc.close()


# --- a real agent process --------------------------------------------------------------------


@contextlib.asynccontextmanager
async def agent_process(url: str, name: str) -> AsyncIterator[subprocess.Popen[bytes]]:
    """``lmteams agent start`` on the simulated backend (its default context: 2048 tokens)."""
    argv = [
        sys.executable, "-m", "lmteams", "agent", "start", "--name", name, "--team", TEAM,
        "--nats", url, "--backend", "sim", "--sim-device", "h100-cuda", "--ack-wait", "5",
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        stop_processes([proc])


async def _pong(bus: Bus, name: str) -> Pong | None:
    try:
        return await bus.request(S.agent(name), Ping(), expect=Pong, timeout=1)
    except LmteamsError:  # not serving yet: no responders, timeout
        return None


@contextlib.asynccontextmanager
async def watched_agent(bus: Bus, url: str, name: str) -> AsyncIterator[subprocess.Popen[bytes]]:
    """An agent process, once its worker answers a ping."""
    async with agent_process(url, name) as proc:

        async def up() -> bool:
            return proc.poll() is not None or await _pong(bus, name) is not None

        await wait_until(up, timeout=90)
        assert proc.poll() is None, "the agent process exited while starting"
        yield proc


async def _still_the_same_agent(bus: Bus, proc: subprocess.Popen[bytes], name: str) -> None:
    """The process never exited, and its worker was never restarted (its runtime says)."""
    assert proc.poll() is None, f"the agent process exited with {proc.returncode}"
    pong = await _pong(bus, name)
    assert pong is not None, f"{name} does not answer a ping"
    assert pong.restarts == 0, f"the worker restarted {pong.restarts} times"


async def test_hostile_task_ids_never_stop_an_agent_process(
    bus: Bus, nats_server: EmbeddedServer
) -> None:
    await ensure_team_streams(bus, S)
    async with (
        watched_agent(bus, nats_server.url, "ga") as proc,
        _plain(nats_server.url) as nc,
    ):
        inbox = nc.new_inbox()
        replies = await nc.subscribe(inbox)
        before = await _dead_letters(bus)
        for task_id in HOSTILE_IDS:
            body = _json({"type": "task", "id": task_id, "prompt": "hi"})
            await nc.publish(
                S.tasks, body, headers={"Content-Type": "application/json", "Lmt-Reply-To": inbox}
            )
        told = [json.loads((await replies.next_msg(timeout=30)).data) for _ in HOSTILE_IDS]
        assert all(r["ok"] is False and r["error_kind"] == "invalid" for r in told)
        assert all("invalid task id" in r["error"] for r in told)

        async def all_dead() -> bool:
            return await _dead_letters(bus) - before >= len(HOSTILE_IDS)

        await wait_until(all_dead, timeout=30)
        assert await _dead_letters(bus) - before == len(HOSTILE_IDS)
        # refused messages wrote no result, and named subjects were not acted on
        assert (await bus.js.stream_info(S.results_stream)).state.messages == 0
        assert await _queued(bus) == 0
        # the agent keeps serving, in the same process, with the same worker
        result = await TeamClient(bus, TEAM).submit("What is 2 + 2?", max_tokens=8, timeout=60)
        assert result.ok and result.agent == "ga"
        await _still_the_same_agent(bus, proc, "ga")


async def test_a_prompt_over_the_context_is_refused_by_an_agent_process(
    bus: Bus, nats_server: EmbeddedServer
) -> None:
    await ensure_team_streams(bus, S)
    async with watched_agent(bus, nats_server.url, "gb") as proc:
        client = TeamClient(bus, TEAM)
        refused = await client.submit(LONG_PROMPT, task_id="long-1", timeout=60)
        assert not refused.ok and refused.error_kind == "context"
        assert "context is 2048 tokens" in refused.error and "n_ctx" in refused.error
        assert "2048" in (await _dead_letter(bus, "context"))["Lmt-Dead-Reason"]
        assert (await client.submit("short one", max_tokens=8, timeout=60)).ok
        await _still_the_same_agent(bus, proc, "gb")


# --- prompts that do not fit (in-process agents) ------------------------------------------------


class CountingWorker(WorkerAgent):
    """Counts how often its backend is asked to generate."""

    def __init__(self, config: WorkerConfig) -> None:
        super().__init__(config)
        self.generated = 0

    async def _generate(self, request: GenerateRequest) -> Completion:
        self.generated += 1
        return await super()._generate(request)


async def test_prompts_that_do_not_fit_are_refused_before_the_backend_runs(bus: Bus) -> None:
    small = BackendConfig(kind="sim", sim_device="h100-cuda", time_scale=0.01, n_ctx=256)
    worker = CountingWorker(_config(backend=small, max_prompt_bytes=4000))
    async with open_runtime(bus, TEAM) as rt:
        await rt.spawn(worker, actor_id="w1")
        client = TeamClient(bus, TEAM)
        tokens = await client.submit("word " * 300, task_id="tok-1", timeout=20)  # ~375 tokens
        assert (tokens.ok, tokens.error_kind) == (False, "context")
        assert "context is 256 tokens" in tokens.error
        too_big = Task(id="big-1", prompt="x" * 5000)  # the client would refuse it: bypass it
        async with client._awaiting("big-1") as wait:
            await publish_durable(bus, S.tasks, too_big, msg_id="big-1")
            big = await wait(20)
        assert (big.ok, big.error_kind) == (False, "invalid")
        assert "5000 bytes" in big.error and "4000 bytes (max_prompt_bytes)" in big.error
        # an answer that would overrun the context is clamped to what is left, not refused
        tight = await client.submit("word " * 150, max_tokens=4000, task_id="tight", timeout=20)
        assert tight.ok and tight.tokens_in + tight.tokens_out <= 256
        assert worker.generated == 1 and worker.refused == 2
        assert rt.statistics()[0].restarts == 0


@pytest.fixture(scope="module")
def real_model() -> str:
    """The default model, pulled once (as tests/hardware/conftest.py does)."""
    return str(resolve_model("smollm2-135m").path)


@pytest.mark.slow
async def test_the_real_model_refuses_a_prompt_over_its_context(bus: Bus, real_model: str) -> None:
    backend = BackendConfig(kind="cpu", model=real_model, n_threads=1)
    worker = CountingWorker(_config(backend=backend))
    async with open_runtime(bus, TEAM) as rt:
        await rt.spawn(worker, actor_id="w1")
        client = TeamClient(bus, TEAM)
        refused = await client.submit(LONG_PROMPT, task_id="real-long", timeout=60)
        assert (refused.ok, refused.error_kind) == (False, "context")
        tokens = int(refused.error.split("the prompt is ")[1].split(" tokens")[0])
        assert tokens > 2048 and "context is 2048 tokens" in refused.error
        assert worker.generated == 0
        answered = await client.submit("Say hi.", max_tokens=4, timeout=120)
        assert answered.ok and worker.generated == 1


# --- poison tasks ------------------------------------------------------------------------------


class PoisonedBackend(SimulatedBackend):
    """A simulated backend with a bug that one prompt triggers, every time."""

    calls_for_poison = 0

    async def generate(self, request: GenerateRequest) -> Completion:
        if request.prompt == "poison":
            PoisonedBackend.calls_for_poison += 1
            raise RuntimeError("a bug in the backend")
        return await super().generate(request)


class PoisonedWorker(WorkerAgent):
    @contextlib.asynccontextmanager
    async def open_backend(self) -> AsyncIterator[Backend]:  # type: ignore[override]
        yield PoisonedBackend("h100-cuda", time_scale=0.01)


QUEUE = WorkQueueSettings(ack_wait_s=5.0, max_deliveries=3, retry_delay_s=0.05)


async def test_a_poison_task_ends_after_max_deliveries(bus: Bus) -> None:
    PoisonedBackend.calls_for_poison = 0
    worker = PoisonedWorker(_config(queue=QUEUE))
    async with open_runtime(bus, TEAM) as rt:
        await rt.spawn(worker, actor_id="w1")
        client = TeamClient(bus, TEAM)
        result = await client.submit("poison", task_id="p-1", timeout=30)
        assert (result.ok, result.error_kind, result.deliveries) == (False, "poison", 3)
        assert "max_deliveries 3" in result.error and "RuntimeError: a bug" in result.error
        assert PoisonedBackend.calls_for_poison == 3 and worker.failures == 3
        reason = (await _dead_letter(bus, "poison"))["Lmt-Dead-Reason"]
        assert "gave up after 3 deliveries" in reason
        await _queue_empties(bus)  # it left the queue ...
        assert (await client.submit("fine", timeout=20)).ok  # ... and the agent serves on
        assert rt.statistics()[0].restarts == 0


async def test_a_task_no_try_settled_ends_without_running_again(bus: Bus) -> None:
    """Agents that took it and died (never settling) used up its deliveries: end it unrun."""
    await ensure_team_streams(bus, S)
    crashed = await open_work_queue(bus, S, QUEUE)
    await publish_durable(bus, S.tasks, Task(id="crashy", prompt="poison"), msg_id="crashy")
    for _ in range(QUEUE.max_deliveries):  # three agents took it and never answered
        delivery = None
        with anyio.fail_after(30):
            while delivery is None:
                delivery = await crashed.fetch(timeout=0.5)
        await delivery.nak()
    await crashed.close()
    PoisonedBackend.calls_for_poison = 0
    worker = PoisonedWorker(_config(queue=QUEUE))
    async with open_runtime(bus, TEAM) as rt:
        await rt.spawn(worker, actor_id="w1")
        result = await TeamClient(bus, TEAM).wait("crashy", timeout=30)
        assert (result.ok, result.error_kind, result.deliveries) == (False, "poison", 4)
        assert PoisonedBackend.calls_for_poison == 0 and worker.poisoned == 1
        await _queue_empties(bus)


# --- a result is written once ------------------------------------------------------------------


async def _past_the_dedupe_window(bus: Bus) -> None:
    """Wait until a msg id published now is no longer a duplicate: the window has passed.

    Each try goes to a fresh result subject (a result subject takes one message), with the
    same msg id: the dedupe window is the stream's, whatever the subject.
    """
    probe = Task(id="probe", prompt="probe")
    tries = iter(range(10**6))
    await publish_durable(bus, S.results(f"probe-{next(tries)}"), probe, msg_id="window-probe")
    with anyio.fail_after(30):
        while (
            await publish_durable(
                bus, S.results(f"probe-{next(tries)}"), probe, msg_id="window-probe"
            )
        ).duplicate:
            await anyio.sleep(0.1)


async def test_publish_once_keeps_the_first_message_after_the_dedupe_window(bus: Bus) -> None:
    await ensure_team_streams(bus, S, StreamSettings(dedupe_window_s=0.5))
    subject = S.results("w1")
    await publish_durable(bus, subject, Task(id="first", prompt="first"), msg_id="m1", once=True)
    # inside the window and after it, with its msg id or another: refused, the first stays
    with pytest.raises(RevisionMismatchError, match="written once"):
        await publish_durable(bus, subject, Task(id="x", prompt="x"), msg_id="m1", once=True)
    await _past_the_dedupe_window(bus)
    for msg_id in ("m1", "m2"):
        with pytest.raises(RevisionMismatchError, match="written once"):
            await publish_durable(bus, subject, Task(id="x", prompt="x"), msg_id=msg_id, once=True)
    stored = await last_message(bus, S.results_stream, subject)
    assert stored is not None and b"first" in stored[0]
    # without ``once`` the stream itself refuses a second message on the subject
    with pytest.raises(RevisionMismatchError, match="written once"):
        await publish_durable(bus, subject, Task(id="x", prompt="newer"), msg_id="m3")
    stored = await last_message(bus, S.results_stream, subject)
    assert stored is not None and b"first" in stored[0]


async def test_a_forged_raw_result_never_replaces_a_stored_one(
    bus: Bus, nats_server: EmbeddedServer
) -> None:
    """A plain client publishing on a result subject, core NATS or JetStream, is not stored."""
    await ensure_team_streams(bus, S)
    subject = S.results("forged-1")
    good = Result(task_id="forged-1", ok=True, answer="good")
    await publish_durable(bus, subject, good, msg_id="result-forged-1", once=True, json=True)
    forged = _json({"type": "result", "task_id": "forged-1", "ok": True, "answer": "forged"})
    async with _plain(nats_server.url) as nc:
        await nc.publish(subject, forged, headers={"Content-Type": "application/json"})
        await nc.flush()
        js = nc.jetstream()
        with pytest.raises(nats.js.errors.APIError):
            await js.publish(subject, forged, headers={"Nats-Msg-Id": "other"})
    stored = await last_message(bus, S.results_stream, subject)
    assert (
        stored is not None
        and b'"answer":"good"' in stored[0]
        and b'"answer":"forged"' not in stored[0]
    )
    info = await bus.js.stream_info(S.results_stream)
    assert info.state.messages == 1


async def test_a_stored_answer_survives_resubmissions_past_the_dedupe_window(
    bus: Bus, nats_server: EmbeddedServer
) -> None:
    streams = StreamSettings(dedupe_window_s=1.0)
    worker = CountingWorker(_config(streams=streams, max_prompt_bytes=1000))
    async with open_runtime(bus, TEAM) as rt, _plain(nats_server.url) as nc:
        await rt.spawn(worker, actor_id="w1")
        client = TeamClient(bus, TEAM)
        good = await client.submit("the real question", task_id="ow-1", timeout=20)
        assert good.ok
        await _past_the_dedupe_window(bus)
        live = await nc.subscribe(S.results("ow-1"))  # a client that takes the first result
        inbox = nc.new_inbox()
        replies = await nc.subscribe(inbox)
        headers = {"Content-Type": "application/json", "Lmt-Reply-To": inbox}
        broken = (
            {"type": "task", "id": "ow-1", "prompt": 42},  # does not decode
            {"type": "task", "id": "ow-1", "prompt": "   "},  # invalid
            {"type": "task", "id": "ow-1", "prompt": "y" * 2000},  # over max_prompt_bytes
            {"type": "task", "id": "ow-1", "prompt": "a different question"},  # valid
        )
        for body in broken:
            await nc.publish(S.tasks, _json(body), headers=headers)
        told = [json.loads((await replies.next_msg(timeout=20)).data) for _ in broken]
        assert sorted(r["error_kind"] for r in told) == [
            "decode",
            "duplicate",
            "duplicate",
            "duplicate",
        ]
        assert worker.generated == 1 and worker.duplicates == 3
        # a barrier: the agent answers another task after it handled all of the above
        assert (await client.submit("after", timeout=20)).ok
        await nc.flush()
        assert live.pending_msgs == 0  # nothing was published on the answered task's subject
        stored = await client.result("ow-1")
        assert stored == good


async def test_a_request_cannot_point_an_agent_reply_at_a_result_subject(
    bus: Bus, nats_server: EmbeddedServer
) -> None:
    """An outsider names a task's result subject as its reply: the agent does not answer there."""
    async with open_runtime(bus, TEAM) as rt, _plain(nats_server.url) as nc:
        await rt.spawn(WorkerAgent(_config()), actor_id="w1")
        victim = S.results("victim-1")
        live = await nc.subscribe(victim)
        ping = _json({"type": "ping"})
        headers = {"Content-Type": "application/json"}
        for reply in (victim, "$JS.API.STREAM.DELETE." + S.results_stream):
            await nc.publish(S.agent("w1"), ping, reply=reply, headers=headers)
        # a barrier: a proper request after the forged ones is answered
        pong = await nc.request(S.agent("w1"), ping, headers=headers, timeout=10)
        assert json.loads(pong.data)["type"] == "pong"
        await nc.flush()
        assert live.pending_msgs == 0
        assert await last_message(bus, S.results_stream, victim) is None
        assert (await bus.js.stream_info(S.results_stream)).config.name == S.results_stream


async def test_direct_prompts_are_bounded_like_tasks(bus: Bus, nats_server: EmbeddedServer) -> None:
    """A coordinator's ``prompt`` request, forged by an outsider, cannot occupy the agent."""
    small = BackendConfig(kind="sim", sim_device="h100-cuda", time_scale=0.01, n_ctx=128)
    worker = CountingWorker(_config(backend=small, max_prompt_bytes=1000))
    async with open_runtime(bus, TEAM) as rt, _plain(nats_server.url) as nc:
        await rt.spawn(worker, actor_id="w1")
        headers = {"Content-Type": "application/json"}
        hostile = {
            "max_tokens": {"task_id": "p1", "prompt": "hi", "max_tokens": 10**9},
            "prompt is empty": {"task_id": "p2", "prompt": "  "},
            "max_prompt_bytes": {"task_id": "p3", "prompt": "y" * 2000},
            "temperature": {"task_id": "p4", "prompt": "hi", "temperature": -1.0},
            "prompt task id": {"task_id": "p.5", "prompt": "hi"},
            "n_ctx": {"task_id": "p6", "prompt": "word " * 190},  # 950 bytes, over 128 tokens
        }
        for needle, body in hostile.items():
            msg = await nc.request(
                S.agent("w1"), _json({"type": "prompt", **body}), headers=headers, timeout=10
            )
            reply = json.loads(msg.data)
            assert reply["type"] == "error" and needle in reply["message"], reply
        assert worker.generated == 0
        ok = await nc.request(
            S.agent("w1"), _json({"type": "prompt", "task_id": "p7", "prompt": "hi"}),
            headers=headers, timeout=10,
        )  # fmt: skip
        assert json.loads(ok.data)["type"] == "answer" and worker.generated == 1
