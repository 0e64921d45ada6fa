"""The llama.cpp backend: one GGUF model on one device, driven token by token.

We drive ``Llama.generate`` ourselves instead of calling ``create_chat_completion`` because
that gives us three things the high-level API does not: a cancellation check between tokens,
the time to first token, and per-token logprobs without ``logits_all=True`` (which would make
llama.cpp compute the vocabulary projection for every prompt token). The logprob of each
chosen token is read from the logits row llama.cpp just sampled from.

The KV cache of the shared prompt prefix (the chat template's system part, which every task
of a team repeats) is kept across calls, as bare llama-cpp-python keeps it. llama-cpp-python
reuses the longest common prefix with the previous call, which makes an answer depend on the
call before it: the suffix is evaluated in a batch of another shape, and llama.cpp's kernels
round differently by batch shape. We cut the prompt at a point fixed by the request alone
(the end of the system part) and always evaluate the two pieces as two batches, cached or
not, so a cache hit computes exactly what a cold call computes and greedy answers stay
reproducible.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final

import anyio
import msgspec
import numpy as np
import structlog

from lmteams.errors import BackendError, ConfigError, DeviceUnavailableError
from lmteams.hardware._detect import (
    DeviceInfo,
    backend_kind,
    cpu_simd,
    ggml_devices,
    physical_cores,
)
from lmteams.hardware._models import ModelFile, resolve_model
from lmteams.hardware._prompting import Prompter, budget, chosen_logprob, watch
from lmteams.hardware._streaming import PolledStream, TextSoFar
from lmteams.hardware._threads import run_in_thread
from lmteams.hardware._types import (
    BACKEND_KINDS,
    BackendConfig,
    Completion,
    GenerateRequest,
    Timings,
)

if TYPE_CHECKING:
    from llama_cpp import Llama

__all__ = ("LlamaBackend", "LlamaStatistics", "select_device", "REBUILD_HINTS")

log = structlog.get_logger(__name__)

_REINSTALL: Final = "pip install --force-reinstall --no-cache-dir llama-cpp-python"
REBUILD_HINTS: Final = {
    "cuda": f'CMAKE_ARGS="-DGGML_CUDA=on" {_REINSTALL} (needs the CUDA toolkit, nvcc)',
    "metal": f'CMAKE_ARGS="-DGGML_METAL=on" {_REINSTALL} (macOS on Apple Silicon)',
    "vulkan": f'CMAKE_ARGS="-DGGML_VULKAN=on" {_REINSTALL} (needs the Vulkan SDK, glslc)',
}
_GPU_PREFERENCE: Final = ("cuda", "metal", "vulkan")

# llama.cpp logs through one process-wide callback; we keep the tail so that a failed load
# can quote llama.cpp's own reason (e.g. "cudaMalloc failed: out of memory") in our error.
_LOG_TAIL: deque[str] = deque(maxlen=64)
_log_callback: Any = None
# Llama() swaps the process's stdout/stderr file descriptors while it loads; two loads in
# parallel threads could restore each other's /dev/null, so loads are serialised.
_LOAD_LOCK = threading.Lock()


def _install_log_capture() -> None:
    global _log_callback  # noqa: PLW0603 - one C callback per process, kept alive here
    if _log_callback is not None:
        return
    import llama_cpp  # noqa: PLC0415 - keep `import lmteams.hardware` free of the C library

    @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
    def _capture(_level: int, text: bytes, _user: ctypes.c_void_p) -> None:
        _LOG_TAIL.append(text.decode("utf-8", errors="replace").rstrip("\n"))

    llama_cpp.llama_log_set(_capture, ctypes.c_void_p(0))
    _log_callback = _capture


def _log_reason() -> str:
    lines = [ln for ln in _LOG_TAIL if any(w in ln.lower() for w in ("error", "fail", "memory"))]
    return "; ".join(lines[-3:])


def select_device(
    kind: str, n_gpu_layers: int, devices: tuple[DeviceInfo, ...] | None = None
) -> tuple[str, int]:
    """Pick ``(device label, n_gpu_layers)`` for a config, or explain why the build cannot.

    ``devices`` defaults to what ggml enumerates; tests pass their own.
    """
    kind = kind.lower()
    if kind not in BACKEND_KINDS or kind in ("sim", "openai"):
        raise ConfigError(
            f"backend kind {kind!r} is not a llama.cpp device: use one of "
            f"{', '.join(k for k in BACKEND_KINDS if k not in ('sim', 'openai'))}"
        )
    if kind == "cpu":
        return "cpu", 0
    if devices is None:
        found = ggml_devices()
        devices = found[1] if found is not None else None
    if devices is None:
        return _select_without_enumeration(kind, n_gpu_layers)
    gpus = [d for d in devices if d.type in ("gpu", "igpu")]
    by_kind = {k: [d for d in gpus if backend_kind(d.backend) == k] for k in _GPU_PREFERENCE}
    if kind == "auto":
        for candidate in _GPU_PREFERENCE:
            if by_kind[candidate] and n_gpu_layers != 0:
                return f"{candidate}:0", n_gpu_layers
        return "cpu", 0
    if not by_kind.get(kind):
        backends = {backend_kind(d.backend) for d in devices}
        if kind in backends:
            raise DeviceUnavailableError(
                f"this llama.cpp build supports {kind} but found no {kind} device: check the "
                "driver (nvidia-smi / vulkaninfo) and CUDA_VISIBLE_DEVICES"
            )
        raise DeviceUnavailableError(
            f"device {kind!r} is not available: this llama.cpp build has no {kind} backend "
            f"(it has: {', '.join(sorted(backends)) or 'none'}). Rebuild llama-cpp-python with "
            f"{REBUILD_HINTS[kind]}, or use kind='cpu' (or 'auto')"
        )
    return (f"{kind}:0", n_gpu_layers) if n_gpu_layers != 0 else ("cpu", 0)


def _select_without_enumeration(kind: str, n_gpu_layers: int) -> tuple[str, int]:
    import llama_cpp  # noqa: PLC0415

    if not llama_cpp.llama_supports_gpu_offload() or n_gpu_layers == 0:
        if kind == "auto" or n_gpu_layers == 0:
            return "cpu", 0
        raise DeviceUnavailableError(
            f"device {kind!r} is not available: this llama.cpp build cannot offload to a GPU. "
            f"Rebuild llama-cpp-python with {REBUILD_HINTS[kind]}, or use kind='cpu'"
        )
    # The build offloads but does not say to what; trust the config's kind.
    return (f"{kind}:0" if kind != "auto" else "gpu:0"), n_gpu_layers


class LlamaStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """What a llama.cpp backend has done since it was opened."""

    calls: int
    completed: int
    cancelled: int
    failed: int
    tokens_in: int
    tokens_out: int
    tokens_reused: int = 0
    """Prompt tokens whose KV came from the previous call's shared prefix, not evaluated."""


class LlamaBackend:
    """A loaded GGUF model; create it with :func:`lmteams.hardware.open_backend`."""

    def __init__(
        self, llm: Llama, *, model: ModelFile, device: str, load_s: float, seed: int = 0
    ) -> None:
        self._llm = llm
        self._seed = seed
        self._model = model
        self._device = device
        self._pending_load_s = load_s
        self._lock = anyio.Lock()
        # The model's memory is guarded in the threads that touch it too: a caller torn down
        # by its event loop closing (native cancellation, which no anyio shield holds) leaves
        # its decode running, and freeing the context under it is a segfault.
        self._users = threading.Condition()
        self._using = 0
        self._stops: set[threading.Event] = set()
        self._closed = False
        self._n_vocab = int(llm.n_vocab())
        self._prompter = Prompter(llm, model.name)
        # Written only by the worker thread that holds the lock, read by anyone.
        self._stats = {
            "calls": 0,
            "completed": 0,
            "cancelled": 0,
            "failed": 0,
            "tokens_in": 0,
            "tokens_out": 0,
            "tokens_reused": 0,
        }

    def statistics(self) -> LlamaStatistics:
        """Counters since open; a cancelled call is counted before its lock is released."""
        return LlamaStatistics(**self._stats)

    @property
    def device(self) -> str:
        return self._device

    @property
    def model(self) -> str:
        return self._model.name

    @property
    def n_ctx(self) -> int:
        """Usable context: llama.cpp may round n_ctx up, llama-cpp-python's buffer does not."""
        return min(int(self._llm.n_ctx()), len(self._llm.input_ids))

    async def count_tokens(self, request: GenerateRequest) -> int:
        """Prompt tokens with the model's tokenizer and chat template, off the event loop."""
        return await anyio.to_thread.run_sync(lambda: self._count_sync(request))

    def _count_sync(self, request: GenerateRequest) -> int:
        with self._use():
            return len(self._prompter.tokens(request))

    @classmethod
    async def open(cls, config: BackendConfig) -> LlamaBackend:
        """Pick the device, resolve (and if needed pull) the model, load it off the loop."""
        loaded = await load_model(config)
        return cls(
            loaded.llm,
            model=loaded.model,
            device=loaded.device,
            load_s=loaded.load_s,
            seed=config.seed,
        )

    async def generate(self, request: GenerateRequest) -> Completion:
        """Generate off the event loop; cancellation stops at the next token."""
        return await self._generate(request, None)

    def stream(self, request: GenerateRequest) -> PolledStream:
        """The answer in pieces as it is decoded (see :class:`~lmteams.hardware.AnswerStream`)."""
        return PolledStream(lambda so_far: self._generate(request, so_far), request.stop)

    async def _generate(self, request: GenerateRequest, so_far: TextSoFar | None) -> Completion:
        async with self._lock:  # closed or not, the worker thread's _use() says
            completion = await run_in_thread(
                lambda stop: self._generate_sync(request, stop, so_far)
            )
            load_s, self._pending_load_s = self._pending_load_s, 0.0
            return with_load_time(completion, load_s)

    async def aclose(self) -> None:
        """Free the model once in-flight generation has finished."""
        async with self._lock:
            if self._closed:
                return
            self._closed = True
            await anyio.to_thread.run_sync(self._close_sync)

    def _close_sync(self) -> None:
        with self._users:
            for stop in self._stops:
                stop.set()
            self._users.wait_for(lambda: self._using == 0)
            self._llm.close()

    @contextlib.contextmanager
    def _use(self, stop: threading.Event | None = None) -> Iterator[None]:
        """Hold the model in this thread; closing waits until no thread holds it."""
        with self._users:
            if self._closed:
                raise BackendError(f"backend for {self.model} on {self.device} is closed")
            self._using += 1
            if stop is not None:
                self._stops.add(stop)
        try:
            yield
        finally:
            with self._users:
                self._using -= 1
                if stop is not None:
                    self._stops.discard(stop)
                self._users.notify_all()

    # -- worker-thread side -------------------------------------------------------------------

    def _prime(self, prompt: list[int], split: int) -> None:
        """Leave exactly ``prompt[:split]`` in the KV cache: kept if cached, else evaluated."""
        llm = self._llm
        cached = (
            split > 0
            and llm.n_tokens >= split
            and llm.input_ids[:split].tolist() == prompt[:split]
            and llm._ctx.kv_cache_seq_rm(-1, split, -1)  # false: this model cannot truncate
        )
        if cached:
            llm.n_tokens = split
            self._stats["tokens_reused"] += split
            return
        llm.reset()  # type: ignore[no-untyped-call]  # unannotated in llama-cpp-python
        if split:
            llm.eval(prompt[:split])

    def _generate_sync(
        self, request: GenerateRequest, stop: threading.Event, so_far: TextSoFar | None
    ) -> Completion:
        with self._use(stop):
            return self._counted(request, stop, so_far)

    def _counted(
        self, request: GenerateRequest, stop: threading.Event, so_far: TextSoFar | None
    ) -> Completion:
        self._stats["calls"] += 1
        try:
            done = self._decode(request, stop, so_far)
        except BaseException:
            self._stats["failed"] += 1
            raise
        self._stats["cancelled" if done.finish_reason == "cancelled" else "completed"] += 1
        self._stats["tokens_in"] += done.tokens_in
        self._stats["tokens_out"] += done.tokens_out
        return done

    def _decode(
        self, request: GenerateRequest, stop: threading.Event, so_far: TextSoFar | None
    ) -> Completion:
        import llama_cpp  # noqa: PLC0415

        llm = self._llm
        started = time.perf_counter()
        prompt = self._prompter.tokens(request)
        # llama.cpp may round the context up; llama-cpp-python's token buffer keeps the size
        # that was asked for, and overrunning it corrupts state, so the smaller one rules.
        allowed = budget(len(prompt), request.max_tokens, self.n_ctx)
        llm.set_seed(request.seed if request.seed is not None else self._seed)
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        tokens: list[int] = []
        logprobs: list[float] = []
        finish = "length"
        first_token_at: float | None = None
        text = ""
        split = self._prompter.split(request, prompt) if allowed else 0
        generator = llm.generate(  # lazy: nothing runs until the first token is asked for
            prompt[split:],
            reset=False,  # _prime has set the cache; generate's own prefix match would not
            top_k=40,
            top_p=request.top_p,
            min_p=0.05,
            temp=request.temperature,
            repeat_penalty=1.0,
        )
        try:
            if allowed:
                self._prime(prompt, split)
            for token in generator if allowed else ():
                if first_token_at is None:
                    first_token_at = time.perf_counter()
                if stop.is_set():
                    finish = "cancelled"
                    break
                if llama_cpp.llama_vocab_is_eog(vocab, token):
                    finish = "stop"
                    break
                if request.logprobs:
                    logprobs.append(self._chosen_logprob(int(token)))
                tokens.append(int(token))
                if request.stop or so_far is not None:
                    stopped = watch(self._prompter, request, tokens, prompt, so_far)
                    if stopped is not None:
                        text, finish = stopped, "stop"
                        break
                if len(tokens) >= allowed:
                    break
        except (RuntimeError, ValueError) as exc:  # llama_decode failures, buffer overruns
            raise BackendError(
                f"llama.cpp failed while generating on {self.device}: {exc} "
                f"{_log_reason()}. If the context is full, lower max_tokens or raise n_ctx"
            ) from exc
        finally:
            generator.close()
        ended = time.perf_counter()
        if not (request.stop and finish == "stop"):
            text = self._prompter.text(tokens, prompt)
        first = first_token_at if first_token_at is not None else ended
        return Completion(
            text=text,
            tokens_in=len(prompt),
            tokens_out=len(tokens),
            timings=Timings(prompt_s=first - started, generation_s=ended - first),
            finish_reason=finish,
            device=self.device,
            model=self.model,
            logprobs=tuple(logprobs) if request.logprobs else None,
        )

    def _chosen_logprob(self, token: int) -> float:
        """log p(token) under the distribution llama.cpp just sampled from (pre-temperature)."""
        import llama_cpp  # noqa: PLC0415

        pointer = llama_cpp.llama_get_logits_ith(self._llm.ctx, -1)
        return chosen_logprob(np.ctypeslib.as_array(pointer, shape=(self._n_vocab,)), token)


class LoadedModel(msgspec.Struct, frozen=True, kw_only=True):
    """A model loaded for a config: what both llama.cpp backends start from."""

    llm: Any
    """The ``llama_cpp.Llama`` (tokenizer, metadata, weights)."""
    model: ModelFile
    device: str
    threads: int
    load_s: float


async def load_model(config: BackendConfig, *, n_ctx: int | None = None) -> LoadedModel:
    """Pick the device, resolve (and if needed pull) the model, load it off the loop.

    ``n_ctx`` overrides the config's for the ``Llama``'s own context (see :func:`_load`).
    """
    # Device first: a config this build cannot run should fail before a model download.
    device, n_gpu_layers = select_device(config.kind, config.n_gpu_layers)
    model = await anyio.to_thread.run_sync(lambda: resolve_model(config.model))
    threads = config.n_threads or physical_cores()
    started = time.perf_counter()
    llm = await run_in_thread(
        lambda _stop: _load(model, device, n_gpu_layers, threads, config, n_ctx=n_ctx),
        discard=lambda loaded: loaded.close(),
    )
    load_s = time.perf_counter() - started
    log.info("backend.loaded", model=model.name, device=device, load_s=round(load_s, 3))
    return LoadedModel(llm=llm, model=model, device=device, threads=threads, load_s=load_s)


def with_load_time(completion: Completion, load_s: float) -> Completion:
    """``completion`` carrying the model's load time: a backend's first answer reports it."""
    if not load_s:
        return completion
    timings = msgspec.structs.replace(completion.timings, load_s=load_s)
    return msgspec.structs.replace(completion, timings=timings)


def _extra_buffers(config: BackendConfig) -> bool:
    if config.extra_buffers is not None:
        return config.extra_buffers
    return "amx_int8" not in cpu_simd()


@contextlib.contextmanager
def _model_params(*, extra_buffers: bool) -> Iterator[None]:
    """Set model parameters that ``Llama()`` does not take as arguments.

    ``Llama.__init__`` builds its model parameters from ``llama_model_default_params`` and
    loads at once; the defaults are swapped for the load only (loads hold ``_LOAD_LOCK``).
    """
    import llama_cpp.llama_cpp as native  # noqa: PLC0415

    default = native.llama_model_default_params

    def params() -> Any:
        chosen = default()
        chosen.use_extra_bufts = extra_buffers
        return chosen

    native.llama_model_default_params = params
    try:
        yield
    finally:
        native.llama_model_default_params = default


def _load(
    model: ModelFile,
    device: str,
    n_gpu_layers: int,
    threads: int,
    config: BackendConfig,
    *,
    n_ctx: int | None = None,
) -> Llama:
    """Load ``model``; ``n_ctx`` overrides the config's for the Llama's own context (a shared
    host decodes in contexts of its own and keeps this one small)."""
    from llama_cpp import Llama  # noqa: PLC0415

    _install_log_capture()
    with _LOAD_LOCK, _model_params(extra_buffers=_extra_buffers(config)):
        _LOG_TAIL.clear()
        try:
            return Llama(
                model_path=model.path,
                n_gpu_layers=n_gpu_layers if device != "cpu" else 0,
                n_ctx=config.n_ctx if n_ctx is None else n_ctx,
                n_threads=threads,
                n_threads_batch=threads,
                seed=config.seed,
                # flash attention: faster on every device here, and a shared host needs it
                # for its batches (one attention pass per KV stream instead of a KQ matrix
                # each); both use it, so a shared answer equals an unshared one
                flash_attn=True,
                verbose=False,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            reason = _log_reason() or str(exc)
            hint = (
                "out of memory: try a smaller n_ctx, fewer n_gpu_layers (partial offload) or "
                "a smaller model"
                if "memory" in reason.lower() or "alloc" in reason.lower()
                else "check that the file is a GGUF this llama.cpp version supports"
            )
            raise BackendError(
                f"llama.cpp could not load {model.name} ({model.path}) on {device} "
                f"with n_ctx={config.n_ctx}: {reason}; {hint}"
            ) from exc
