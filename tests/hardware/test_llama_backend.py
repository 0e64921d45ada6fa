"""The real llama.cpp backend on the real default model (SmolLM2-135M), on CPU or GPU builds."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import anyio
import pytest

from lmteams.errors import BackendError
from lmteams.hardware import (
    Backend,
    BackendConfig,
    Completion,
    GenerateRequest,
    LlamaBackend,
    ModelFile,
    TextSoFar,
    detect,
    open_backend,
)

pytestmark = pytest.mark.slow

# A raw prompt the model continues indefinitely, so generation runs until we stop it.
COUNTING = GenerateRequest(prompt="1, 2, 3, 4, 5, 6, 7, 8,", chat=False, max_tokens=1500)


async def test_chat_completion(cpu_backend: LlamaBackend) -> None:
    assert isinstance(cpu_backend, Backend)
    done = await cpu_backend.generate(
        GenerateRequest(prompt="What is the capital of France?", max_tokens=24)
    )
    assert done.text.strip()
    assert done.tokens_in > 5  # the chat template wraps the prompt
    assert 0 < done.tokens_out <= 24
    assert done.finish_reason in ("stop", "length")
    assert done.device == "cpu"
    assert done.model == "smollm2-135m"
    assert done.logprobs is None
    assert done.timings.load_s > 0
    assert done.timings.prompt_s > 0
    assert done.timings.generation_s >= 0
    again = await cpu_backend.generate(GenerateRequest(prompt="And of Spain?", max_tokens=8))
    assert again.timings.load_s == 0.0  # the load is reported once


async def test_max_tokens_is_respected(cpu_backend: LlamaBackend) -> None:
    done = await cpu_backend.generate(
        GenerateRequest(prompt="1, 2, 3, 4,", chat=False, max_tokens=7)
    )
    assert done.tokens_out == 7
    assert done.finish_reason == "length"


async def test_stop_strings_cut_the_text(cpu_backend: LlamaBackend) -> None:
    done = await cpu_backend.generate(
        GenerateRequest(prompt="1, 2, 3, 4,", chat=False, max_tokens=40, stop=("9",))
    )
    assert done.finish_reason == "stop"
    assert "9" not in done.text
    assert "5" in done.text


async def test_greedy_is_deterministic(cpu_backend: LlamaBackend) -> None:
    request = GenerateRequest(prompt="Name a colour.", max_tokens=12)
    first = await cpu_backend.generate(request)
    second = await cpu_backend.generate(request)
    assert first.text == second.text


async def test_shared_system_prefix_is_reused_and_answers_do_not_depend_on_history(
    cpu_backend: LlamaBackend, default_model: ModelFile
) -> None:
    fox, bell = (
        GenerateRequest(prompt=f"Write about {t}.", max_tokens=16) for t in ("a fox", "a bell")
    )
    before = cpu_backend.statistics().tokens_reused
    after_bell = [(await cpu_backend.generate(r)).text for r in (bell, fox)][1]
    assert cpu_backend.statistics().tokens_reused > before  # the system part was not re-run
    async with open_backend(BackendConfig(kind="cpu", model=default_model.name)) as cold:
        assert (await cold.generate(fox)).text == after_bell  # cold cache, same answer


async def test_logprobs_one_per_token(cpu_backend: LlamaBackend) -> None:
    done = await cpu_backend.generate(
        GenerateRequest(prompt="Say hello.", max_tokens=12, logprobs=True)
    )
    assert done.logprobs is not None
    assert len(done.logprobs) == done.tokens_out > 0
    assert all(lp <= 0.0 for lp in done.logprobs)
    # Greedy decoding picks the most likely token, which is rarely very unlikely.
    assert sum(done.logprobs) / len(done.logprobs) > -5.0


async def test_cancellation_stops_generation(
    cpu_backend: LlamaBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    in_thread = threading.Event()
    original = cpu_backend._generate_sync

    def noting(
        request: GenerateRequest, stop: threading.Event, so_far: TextSoFar | None
    ) -> Completion:
        in_thread.set()
        return original(request, stop, so_far)

    monkeypatch.setattr(cpu_backend, "_generate_sync", noting)
    async with anyio.create_task_group() as tg:
        tg.start_soon(cpu_backend.generate, COUNTING)
        await anyio.to_thread.run_sync(in_thread.wait, 60)  # generation is under way
        tg.cancel_scope.cancel()
    assert in_thread.is_set()
    # The worker thread has already returned: the lock is released only after it stops.
    stats = cpu_backend.statistics()
    assert stats.cancelled == 1
    assert stats.tokens_out < COUNTING.max_tokens
    done = await cpu_backend.generate(GenerateRequest(prompt="Hi!", max_tokens=4))
    assert done.tokens_out > 0
    assert cpu_backend.statistics().completed == 1


async def test_closing_under_a_running_decode_waits_for_it(
    default_model: ModelFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An event loop shutting down cancels natively, past every shield, and its teardown
    closes the backend while a decode still runs in its thread: the model must outlive it
    (freeing it there was a segfault that took the whole process down)."""
    backend = await LlamaBackend.open(BackendConfig(kind="cpu", model=default_model.name))
    in_thread = threading.Event()
    original = backend._generate_sync

    def noting(
        request: GenerateRequest, stop: threading.Event, so_far: TextSoFar | None
    ) -> Completion:
        in_thread.set()
        return original(request, stop, so_far)

    monkeypatch.setattr(backend, "_generate_sync", noting)
    finished: list[Completion] = []

    async def generate() -> None:
        finished.append(await backend.generate(COUNTING))

    async with anyio.create_task_group() as tg:
        tg.start_soon(generate)
        await anyio.to_thread.run_sync(in_thread.wait, 60)
        backend._closed = True  # what aclose does, without waiting for the call's lock
        await anyio.to_thread.run_sync(backend._close_sync)
    (done,) = finished
    assert done.finish_reason == "cancelled" and done.tokens_out < COUNTING.max_tokens
    with pytest.raises(BackendError, match="closed"):
        await backend.generate(GenerateRequest(prompt="Hi!", max_tokens=4))
    with pytest.raises(BackendError, match="closed"):
        await backend.count_tokens(GenerateRequest(prompt="Hi!"))


async def test_calls_are_serialised_and_the_loop_keeps_ticking(
    cpu_backend: LlamaBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    active = peak = 0
    guard = threading.Lock()
    original = cpu_backend._generate_sync

    def counting(
        request: GenerateRequest, stop: threading.Event, so_far: TextSoFar | None
    ) -> Completion:
        nonlocal active, peak
        with guard:
            active += 1
            peak = max(peak, active)
        try:
            # a blocked loop could never set it: the call would wait here in vain
            assert loop_ran.wait(60), "the event loop stood still during a model call"
            return original(request, stop, so_far)
        finally:
            with guard:
                active -= 1

    monkeypatch.setattr(cpu_backend, "_generate_sync", counting)
    results: list[Completion] = []
    loop_ran = threading.Event()  # set by the event loop while a call is in its thread

    async def ticker() -> None:
        while True:
            await anyio.sleep(0.001)
            if active:
                loop_ran.set()

    async def ask(n: int) -> None:
        request = GenerateRequest(prompt=f"{n}, {n + 1},", chat=False, max_tokens=24)
        results.append(await cpu_backend.generate(request))

    async with anyio.create_task_group() as outer:
        outer.start_soon(ticker)
        async with anyio.create_task_group() as calls:
            for n in range(3):
                calls.start_soon(ask, n)
        outer.cancel_scope.cancel()
    assert len(results) == 3
    assert peak == 1
    assert loop_ran.is_set()


async def test_context_overflow_is_a_backend_error(default_model: ModelFile) -> None:
    config = BackendConfig(kind="cpu", model=default_model.name, n_ctx=64)
    async with open_backend(config) as backend:
        with pytest.raises(BackendError, match="context overflow"):
            await backend.generate(GenerateRequest(prompt="word " * 200, chat=False))
        done = await backend.generate(GenerateRequest(prompt="Hi", chat=False, max_tokens=500))
        assert done.tokens_in + done.tokens_out <= 64  # max_tokens clipped to the context


async def test_corrupt_gguf_is_a_backend_error(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(BackendError, match="could not load"):
        async with open_backend(BackendConfig(kind="cpu", model=str(bogus))):
            pass


async def test_closed_backend_refuses_work(default_model: ModelFile) -> None:
    async with open_backend(BackendConfig(kind="cpu", model=default_model.name)) as backend:
        pass
    with pytest.raises(BackendError, match="closed"):
        await backend.generate(GenerateRequest(prompt="Hi"))


async def test_auto_picks_a_gpu_when_the_build_has_one(default_model: ModelFile) -> None:
    """``auto`` follows what the build reports: a GPU kind if it offers one, else the CPU."""
    gpu_kinds = [k for k in detect().kinds if k in ("cuda", "metal", "vulkan")]
    async with open_backend(BackendConfig(model=default_model.name)) as backend:
        assert backend.device.partition(":")[0] == (gpu_kinds[0] if gpu_kinds else "cpu")


async def test_empty_raw_prompt_is_a_backend_error(cpu_backend: LlamaBackend) -> None:
    with pytest.raises(BackendError, match="empty prompt"):
        await cpu_backend.generate(GenerateRequest(prompt="", chat=False))
    assert (await cpu_backend.generate(GenerateRequest(prompt="Hi", max_tokens=2))).tokens_out


@pytest.mark.parametrize("extra_buffers", [False, True])
def test_extra_buffers_apply_to_the_load_only(extra_buffers: bool) -> None:
    import llama_cpp.llama_cpp as native

    from lmteams.hardware._llama import _model_params

    before = native.llama_model_default_params().use_extra_bufts
    with _model_params(extra_buffers=extra_buffers):
        assert native.llama_model_default_params().use_extra_bufts is extra_buffers
    assert native.llama_model_default_params().use_extra_bufts is before


def test_extra_buffers_default_off_only_on_amx_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    from lmteams.hardware import _llama

    monkeypatch.setattr(_llama, "cpu_simd", lambda: ("avx2", "amx_int8"))
    assert _llama._extra_buffers(BackendConfig()) is False
    assert _llama._extra_buffers(BackendConfig(extra_buffers=True)) is True
    monkeypatch.setattr(_llama, "cpu_simd", lambda: ("avx2",))
    assert _llama._extra_buffers(BackendConfig()) is True
    assert _llama._extra_buffers(BackendConfig(extra_buffers=False)) is False


@pytest.mark.parametrize(("simd", "extra"), [(("avx2", "amx_int8"), False), (("avx2",), True)])
def test_the_llama_server_wrapper_loads_as_lmteams_does(
    monkeypatch: pytest.MonkeyPatch, simd: tuple[str, ...], extra: bool
) -> None:
    import runpy

    import llama_cpp.llama_cpp as native

    from lmteams.hardware import _llama, llama_server

    seen: list[tuple[str, bool, list[str]]] = []

    def run_module(name: str, **_: object) -> None:  # what the server would load with
        seen.append((name, native.llama_model_default_params().use_extra_bufts, list(sys.argv)))

    monkeypatch.setattr(_llama, "cpu_simd", lambda: simd)
    monkeypatch.setattr(runpy, "run_module", run_module)
    monkeypatch.setattr(sys, "argv", ["llama_server.py", "--model", "m.gguf", "--port", "1"])
    llama_server.main()
    assert seen == [
        ("llama_cpp.server", extra, ["llama_cpp.server", "--model", "m.gguf", "--port", "1"])
    ]


async def test_batched_prompt_evaluation_finishes(default_model: ModelFile) -> None:
    """A long prompt is evaluated in batches; on AMX machines that hung with the defaults."""
    prompt = "Count the words: " + " ".join(["word"] * 200)
    async with open_backend(BackendConfig(kind="cpu", model=default_model.name)) as backend:
        with anyio.fail_after(60):  # a hang must fail the test, not the whole run
            done = await backend.generate(GenerateRequest(prompt=prompt, max_tokens=4))
    assert done.tokens_in > 200 and done.finish_reason in ("stop", "length")
