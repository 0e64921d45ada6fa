"""One loaded model decoding many agents' sequences together: one batch per token step.

A model's weights are read once per ``llama_decode`` whatever the batch holds, so eight
sequences stepped in one batch cost little more than one. The host keeps one llama.cpp
context with a slot (sequence id) per concurrent request and one decode loop in a worker
thread: each turn puts the next token of every decoding sequence, and chunks of newly
admitted prompts, into a single batch. Requests beyond the slots wait in FIFO order.

Answers do not depend on the company a request keeps. Prompts are evaluated in the pieces
LlamaBackend evaluates them in, each piece in a batch of its own. The context is not unified
(``kv_unified=False``): each slot has its own KV stream, so a sequence's cells sit at the
same indices as in a context of its own, and every row of a batch is computed by the same
kernels in the same order as when it runs alone. A greedy answer is therefore the unshared
:class:`~lmteams.hardware.LlamaBackend`'s answer, bit for bit (tested). A unified cache
interleaves the sequences' cells, which changes the order of attention's sums, and so the
last bits of the logits.

Prefix reuse: a slot keeps the KV of what it last ran. A new request goes to the free slot
whose cache holds the request's whole system part (cut where :class:`~._prompting.Prompter`
cuts it), and only the rest is evaluated. When no free slot holds it but another slot does
(a team's agents share one system prompt, and start together), its KV is copied across
streams (``llama_memory_seq_cp``) instead of evaluated again: a copy of the cells the same
piece computed, at the same indices, so answers do not change. Without it, N agents that
start together would evaluate the system part N - 1 more times than N unshared ones, each of
which keeps it from its previous call.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.from_thread
import anyio.lowlevel
import msgspec
import numpy as np
import structlog

from lmteams.errors import BackendError
from lmteams.hardware._llama import _log_reason, load_model
from lmteams.hardware._models import ModelFile
from lmteams.hardware._prompting import Prompter, budget, chosen_logprob, watch
from lmteams.hardware._streaming import TextSoFar
from lmteams.hardware._types import BackendConfig, Completion, GenerateRequest, Timings

if TYPE_CHECKING:
    from llama_cpp import Llama

__all__ = ("SharedModelHost", "SharedStatistics")

log = structlog.get_logger(__name__)

_N_BATCH: Final = 512
"""Tokens per ``llama_decode``: llama-cpp-python's default, so prompts chunk alike."""
_IDLE_WAIT_S: Final = 1.0
_OWN_CONTEXT: Final = 256
"""The tokenizer's ``Llama`` keeps a context of its own; it decodes nothing, so keep it small."""


class SharedStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """What a shared host has done since it was loaded, over all the agents attached."""

    calls: int
    completed: int
    cancelled: int
    failed: int
    tokens_in: int
    tokens_out: int
    tokens_reused: int
    """Prompt tokens whose KV a slot kept from its previous request, not evaluated again."""
    views: int
    """Backends attached now."""
    slots: int
    """Sequences the context can decode at once now."""
    running: int
    """Requests holding a slot now."""
    waiting: int
    """Requests queued for a slot now."""
    steps: int
    """``llama_decode`` calls: each advances every decoding sequence by one token."""
    busy_s: float
    """Seconds the loop spent decoding (a request was running)."""
    aggregate_tokens_per_s: float
    """Generated tokens over ``busy_s``: the whole host's decode rate."""
    sequence_tokens_per_s: float
    """Generated tokens after each request's first, over its generation seconds: the rate
    one agent sees (lower than the aggregate when several share the steps)."""


class _Job:
    """One request from submission to its answer; fields written by the loop thread."""

    __slots__ = (
        "allowed", "cancelled", "done", "error", "prompt", "request", "result", "seed",
        "so_far", "split", "token",
    )  # fmt: skip

    def __init__(  # noqa: PLR0917 - private, built in one place
        self,
        request: GenerateRequest,
        prompt: list[int],
        split: int,
        allowed: int,
        seed: int,
        so_far: TextSoFar | None,
    ) -> None:
        self.request = request
        self.prompt = prompt
        self.split = split
        self.allowed = allowed
        self.seed = seed
        self.so_far = so_far
        self.token = anyio.lowlevel.current_token()
        self.done = anyio.Event()
        self.cancelled = False
        self.result: Completion | None = None
        self.error: BaseException | None = None


class _Slot:
    """One sequence id of the context: what its KV holds, and the request it runs."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.cached: list[int] = []
        """Tokens whose KV this slot's stream holds, positions 0..len-1."""
        self.job: _Job | None = None
        self.pieces: list[list[int]] = []
        """The prompt's pieces still to evaluate, each in a batch of its own."""
        self.system_pieces = 0
        """How many of ``pieces`` are the system part: another slot's copy may replace them."""
        self.todo: list[int] = []
        """The token just sampled, to evaluate in the next decode batch."""
        self.out: list[int] = []
        self.logprobs: list[float] = []
        self.sampler: Any = None
        self.admitted_at = 0.0
        self.first_at: float | None = None
        self.output = -1
        """Row of this slot's logits in the last batch, -1 when it asked for none."""


class SharedModelHost:
    """One model, one context, several slots; attach views with :mod:`._shared`."""

    def __init__(
        self,
        llm: Llama,
        *,
        model: ModelFile,
        device: str,
        threads: int,
        n_ctx: int,
        max_slots: int,
        load_s: float,
    ) -> None:
        import llama_cpp  # noqa: PLC0415

        self._llm = llm
        self._model = model
        self._device = device
        self._threads = threads
        self._n_ctx = n_ctx
        self._max_slots = max(1, max_slots)
        self.load_s = load_s
        self._prompter = Prompter(llm, model.name)
        self._n_vocab = int(llm.n_vocab())
        self._vocab = llama_cpp.llama_model_get_vocab(llm.model)
        self._cond = threading.Condition()
        self._waiting: deque[_Job] = deque()
        self._views = 0
        self._closing = False
        self._broken: BaseException | None = None
        self._ctx: Any = None
        self._batch: Any = None
        self._slots: list[_Slot] = []
        self._stats_lock = threading.Lock()
        self._counts = dict.fromkeys(
            ("calls", "completed", "cancelled", "failed", "tokens_in", "tokens_out",
             "tokens_reused", "steps"), 0,
        )  # fmt: skip
        self._busy_s = 0.0
        self._sequence_tokens = 0
        self._sequence_s = 0.0
        self._thread = threading.Thread(target=self._run, name="lmteams-shared-host", daemon=True)
        self._thread.start()

    @classmethod
    async def open(cls, config: BackendConfig) -> SharedModelHost:
        """Load the model as LlamaBackend does; the decode contexts come with the slots."""
        loaded = await load_model(config, n_ctx=_OWN_CONTEXT)
        return cls(
            loaded.llm,
            model=loaded.model,
            device=loaded.device,
            threads=loaded.threads,
            n_ctx=config.n_ctx,
            max_slots=config.share_slots,
            load_s=loaded.load_s,
        )

    @property
    def device(self) -> str:
        return self._device

    @property
    def model(self) -> str:
        return self._model.name

    @property
    def n_ctx(self) -> int:
        """Context of one slot: each request gets this much, whoever else is running."""
        return self._n_ctx

    @property
    def closed(self) -> bool:
        return self._closing

    def attach(self) -> None:
        """One more view: the slots grow to match (up to the maximum) when the loop is idle."""
        with self._cond:
            if self._closing:
                raise BackendError(f"the shared host of {self.model} is closed")
            self._views += 1
            self._cond.notify()

    def detach(self) -> int:
        """One view fewer; the number left."""
        with self._cond:
            self._views -= 1
            return self._views

    def statistics(self) -> SharedStatistics:
        with self._stats_lock:
            counts = dict(self._counts)
            busy, seq_tokens, seq_s = self._busy_s, self._sequence_tokens, self._sequence_s
        return SharedStatistics(
            **counts,
            views=self._views,
            slots=len(self._slots),
            running=sum(s.job is not None for s in self._slots),
            waiting=len(self._waiting),
            busy_s=busy,
            aggregate_tokens_per_s=counts["tokens_out"] / busy if busy else 0.0,
            sequence_tokens_per_s=seq_tokens / seq_s if seq_s else 0.0,
        )

    async def count_tokens(self, request: GenerateRequest) -> int:
        return await anyio.to_thread.run_sync(lambda: len(self._prompter.tokens(request)))

    async def generate(
        self, request: GenerateRequest, *, seed: int, so_far: TextSoFar | None = None
    ) -> Completion:
        """Queue ``request`` and wait for its answer; cancelling frees its slot next step.

        ``so_far`` (a stream's) is shown the text at most once per stream interval.
        """
        prompt, split, allowed = await anyio.to_thread.run_sync(lambda: self._prepare(request))
        job = _Job(request, prompt, split, allowed, seed, so_far)  # on the loop: it holds its token
        self._count("calls")
        if not job.allowed:  # nothing to generate: no need to evaluate the prompt
            self._count("completed")
            return self._completion(job, [], [], "length", time.perf_counter(), None)
        with self._cond:
            if self._closing or self._broken is not None:
                raise BackendError(
                    f"the shared host of {self.model} is closed"
                    + (f": {self._broken}" if self._broken is not None else "")
                )
            self._waiting.append(job)
            self._cond.notify()
        try:
            await job.done.wait()
        finally:
            if not job.done.is_set():
                with self._cond:
                    job.cancelled = True
                    if job in self._waiting:  # never admitted: nothing to free
                        self._waiting.remove(job)
                        self._count("cancelled")
                    self._cond.notify()
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

    async def aclose(self) -> None:
        """Stop the loop (failing what still waits) and free the model."""
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._cond.notify()
        await anyio.to_thread.run_sync(self._thread.join)
        await anyio.to_thread.run_sync(self._llm.close)

    # -- caller side, in a worker thread ------------------------------------------------------

    def _prepare(self, request: GenerateRequest) -> tuple[list[int], int, int]:
        """Tokens, system cut and token budget; an overflow fails here, before any queue."""
        prompt = self._prompter.tokens(request)
        allowed = budget(len(prompt), request.max_tokens, self._n_ctx)
        return prompt, self._prompter.split(request, prompt) if allowed else 0, allowed

    # -- the decode loop, in its own thread ---------------------------------------------------

    def _run(self) -> None:
        try:
            while self._turn():
                self._step()
        except BaseException as exc:  # the loop must never die silently with callers waiting
            log.exception("shared_host.failed", model=self.model)
            self._broken = exc
        finally:
            self._shutdown()

    def _turn(self) -> bool:
        """Wait for work, resize when idle, admit waiting jobs; false when closing."""
        with self._cond:
            while not self._busy() and not self._waiting and not self._closing:
                if self._ctx is None or self._wanted_slots() != len(self._slots):
                    break
                self._cond.wait(timeout=_IDLE_WAIT_S)
            if self._closing:
                return False
            if self._ctx is not None and self._wanted_slots() == len(self._slots):
                self._admit()
                return True
            if self._busy():  # drain before a resize, so the new slots come soon
                return True
            slots = self._wanted_slots()
        self._rebuild(slots)  # outside the lock: callers keep queueing (and the loop runs)
        return True

    def _busy(self) -> bool:
        return any(s.job is not None for s in self._slots)

    def _wanted_slots(self) -> int:
        return min(self._max_slots, max(1, self._views))

    def _rebuild(self, slots: int) -> None:
        import llama_cpp  # noqa: PLC0415

        self._free_context()
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = slots * self._n_ctx
        params.n_batch = params.n_ubatch = _N_BATCH
        params.n_seq_max = slots
        params.kv_unified = False  # one stream per slot: see the module docstring
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED  # as LlamaBackend
        params.n_threads = params.n_threads_batch = self._threads
        params.no_perf = True
        ctx = llama_cpp.llama_init_from_model(self._llm.model, params)
        if not ctx:
            raise BackendError(
                f"llama.cpp could not create a context of {slots} x {self._n_ctx} tokens for "
                f"{self.model} on {self.device}: {_log_reason()}; lower share_slots or n_ctx"
            )
        self._ctx = ctx
        self._batch = llama_cpp.llama_batch_init(_N_BATCH, 0, 1)
        self._slots = [_Slot(i) for i in range(slots)]
        log.info("shared_host.slots", model=self.model, slots=slots)

    def _admit(self) -> None:
        """Give waiting jobs free slots, FIFO; each to the slot that shares most of its prefix.

        Ties go to the lowest slot. llama.cpp cuts a batch over several KV streams into
        ubatches of consecutive sequence ids (and equal tokens per sequence), each a pass
        over the weights; so batches are built in slot order and busy slots kept low.
        """
        import llama_cpp  # noqa: PLC0415

        memory = llama_cpp.llama_get_memory(self._ctx)
        while self._waiting:
            free = [s for s in self._slots if s.job is None]
            if not free:
                return
            job = self._waiting.popleft()
            split, system = job.split, job.prompt[: job.split]
            # the whole system part or nothing, as LlamaBackend: the pieces must match its
            slot = max(free, key=lambda s: (split > 0 and s.cached[:split] == system, -s.index))
            reuse = split if split > 0 and slot.cached[:split] == system else 0
            if not llama_cpp.llama_memory_seq_rm(memory, slot.index, reuse, -1):
                llama_cpp.llama_memory_seq_rm(memory, slot.index, -1, -1)
                reuse = 0
            slot.cached = slot.cached[:reuse]
            slot.job, slot.todo = job, []
            head = _pieces(job.prompt[reuse:split])
            slot.pieces, slot.system_pieces = head + _pieces(job.prompt[split:]), len(head)
            slot.out, slot.logprobs, slot.first_at = [], [], None
            slot.admitted_at = time.perf_counter()
            slot.sampler = _sampler(job) if job.request.temperature != 0 else None
            self._count("tokens_reused", reuse)

    def _step(self) -> None:
        """One turn: a batch of every decoding slot's next token, then one prompt piece.

        A prompt is evaluated in the pieces LlamaBackend uses (system part, then the rest,
        each cut at ``_N_BATCH``), each in a ``llama_decode`` of its own: a batch over
        several streams is cut into ubatches of equal tokens per sequence, and a piece cut
        differently is computed by other kernels (one row and many rows round differently).
        """
        for slot in self._slots:
            if slot.job is not None and slot.job.cancelled:
                self._finish(slot, "cancelled")
        decoding = [s for s in self._slots if s.job is not None and s.first_at is not None]
        if decoding:  # in slot order: see _admit on why that matters
            self._decode([(s, s.todo, True) for s in decoding])
        prefilling = [s for s in self._slots if s.job is not None and s.first_at is None]
        if prefilling:
            slot = min(prefilling, key=lambda s: s.admitted_at)
            if slot.system_pieces and not slot.cached:  # none of it evaluated yet
                self._copy_system(slot)
            piece = slot.pieces.pop(0)
            slot.system_pieces = max(0, slot.system_pieces - 1)
            self._decode([(slot, piece, not slot.pieces)])

    def _copy_system(self, slot: _Slot) -> None:
        """Take the system part's KV from a slot that holds it, if one does, not evaluate it.

        Looked for when the piece is due, not at admission: agents starting together find the
        first one's system part evaluated by then. A cross-stream copy is of a whole stream,
        done at the next ``llama_decode``; the cells past the system part are dropped here.
        """
        import llama_cpp  # noqa: PLC0415

        job = slot.job
        assert job is not None
        split = job.split
        system = job.prompt[:split]
        donor = next((s for s in self._slots if s is not slot and s.cached[:split] == system), None)
        if donor is None:
            return
        memory = llama_cpp.llama_get_memory(self._ctx)
        llama_cpp.llama_memory_seq_cp(memory, donor.index, slot.index, -1, -1)
        if not llama_cpp.llama_memory_seq_rm(memory, slot.index, split, -1):
            llama_cpp.llama_memory_seq_rm(memory, slot.index, -1, -1)  # cannot cut: evaluate
            return
        slot.cached = system
        del slot.pieces[: slot.system_pieces]
        slot.system_pieces = 0
        self._count("tokens_reused", split)

    def _decode(self, work: list[tuple[_Slot, list[int], bool]]) -> None:
        """One ``llama_decode`` of ``(slot, tokens, wants logits)``; then sample those slots."""
        import llama_cpp  # noqa: PLC0415

        batch, n = self._batch, 0
        for slot, tokens, wanted in work:
            for token in tokens:
                batch.token[n] = token
                batch.pos[n] = len(slot.cached)
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = slot.index
                batch.logits[n] = False
                slot.cached.append(token)
                n += 1
            batch.logits[n - 1] = wanted
            slot.output = n - 1 if wanted else -1
        batch.n_tokens = n
        started = time.perf_counter()
        code = llama_cpp.llama_decode(self._ctx, batch)
        with self._stats_lock:
            self._counts["steps"] += 1
            self._busy_s += time.perf_counter() - started
        if code != 0:
            error = BackendError(
                f"llama.cpp failed while generating on {self.device}: llama_decode returned "
                f"{code} {_log_reason()}. If the context is full, lower max_tokens or raise n_ctx"
            )
            memory = llama_cpp.llama_get_memory(self._ctx)
            for slot, _, _ in work:
                llama_cpp.llama_memory_seq_rm(memory, slot.index, -1, -1)
                slot.cached = []
                self._finish(slot, "failed", error=error)
            return
        for slot, _, wanted in work:
            if wanted:
                self._sampled(slot)

    def _sampled(self, slot: _Slot) -> None:
        """Take the slot's next token from its logits row, then see whether it is done."""
        import llama_cpp  # noqa: PLC0415

        job = slot.job
        assert job is not None
        if slot.first_at is None:
            slot.first_at = time.perf_counter()
        pointer = llama_cpp.llama_get_logits_ith(self._ctx, slot.output)
        logits = np.ctypeslib.as_array(pointer, shape=(self._n_vocab,))
        if slot.sampler is None:
            token = int(np.argmax(logits))  # llama.cpp's greedy sampler: the first maximum
        else:
            token = int(llama_cpp.llama_sampler_sample(slot.sampler, self._ctx, slot.output))
        if llama_cpp.llama_vocab_is_eog(self._vocab, token):
            self._finish(slot, "stop")
            return
        if job.request.logprobs:
            slot.logprobs.append(chosen_logprob(logits, token))
        slot.out.append(token)
        if job.request.stop or job.so_far is not None:
            stopped = watch(self._prompter, job.request, slot.out, job.prompt, job.so_far)
            if stopped is not None:
                self._finish(slot, "stop", text=stopped)
                return
        if len(slot.out) >= job.allowed:
            self._finish(slot, "length")
            return
        slot.todo = [token]

    def _finish(
        self,
        slot: _Slot,
        finish: str,
        *,
        text: str | None = None,
        error: BaseException | None = None,
    ) -> None:
        import llama_cpp  # noqa: PLC0415

        job = slot.job
        assert job is not None
        slot.job, slot.todo, slot.pieces = None, [], []
        if slot.sampler is not None:
            llama_cpp.llama_sampler_free(slot.sampler)
            slot.sampler = None
        if error is not None:
            job.error = error
            self._count("failed")
        else:
            job.result = self._completion(
                job, slot.out, slot.logprobs, finish, slot.admitted_at, slot.first_at, text
            )
            self._count("cancelled" if finish == "cancelled" else "completed")
            self._count("tokens_in", len(job.prompt))
            self._count("tokens_out", len(slot.out))
            if slot.first_at is not None and len(slot.out) > 1:
                with self._stats_lock:
                    self._sequence_tokens += len(slot.out) - 1
                    self._sequence_s += job.result.timings.generation_s
        if not job.cancelled:
            _wake(job)

    def _completion(  # noqa: PLR0917 - private, called twice
        self,
        job: _Job,
        tokens: list[int],
        logprobs: list[float],
        finish: str,
        started: float,
        first_at: float | None,
        text: str | None = None,
    ) -> Completion:
        ended = time.perf_counter()
        first = first_at if first_at is not None else ended
        return Completion(
            text=self._prompter.text(tokens, job.prompt) if text is None else text,
            tokens_in=len(job.prompt),
            tokens_out=len(tokens),
            timings=Timings(prompt_s=first - started, generation_s=ended - first),
            finish_reason=finish,
            device=self.device,
            model=self.model,
            logprobs=tuple(logprobs) if job.request.logprobs else None,
        )

    def _count(self, key: str, by: int = 1) -> None:
        with self._stats_lock:
            self._counts[key] += by

    def _shutdown(self) -> None:
        """Fail whatever still runs or waits, then free the context (the loop is ending)."""
        error = BackendError(
            f"the shared host of {self.model} closed"
            + (f": {self._broken}" if self._broken is not None else "")
        )
        for slot in self._slots:
            if slot.job is not None:
                self._finish(slot, "failed", error=error)
        with self._cond:
            self._closing = True
            waiting, self._waiting = list(self._waiting), deque()
        for job in waiting:
            job.error = error
            self._count("failed")
            _wake(job)
        self._free_context()

    def _free_context(self) -> None:
        import llama_cpp  # noqa: PLC0415

        for slot in self._slots:
            if slot.sampler is not None:
                llama_cpp.llama_sampler_free(slot.sampler)
        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx is not None:
            llama_cpp.llama_free(self._ctx)
            self._ctx = None
        self._slots = []


def _pieces(tokens: list[int]) -> list[list[int]]:
    """``tokens`` cut as ``Llama.eval`` cuts them: ``_N_BATCH`` at a time from the start."""
    return [tokens[i : i + _N_BATCH] for i in range(0, len(tokens), _N_BATCH)]


def _sampler(job: _Job) -> Any:
    """The chain ``Llama.generate`` builds for these settings, seeded per request."""
    import llama_cpp  # noqa: PLC0415

    request = job.request
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    if request.temperature > 0:
        for link in (
            llama_cpp.llama_sampler_init_top_k(40),
            llama_cpp.llama_sampler_init_typical(1.0, 1),
            llama_cpp.llama_sampler_init_top_p(request.top_p, 1),
            llama_cpp.llama_sampler_init_min_p(0.05, 1),
            llama_cpp.llama_sampler_init_temp(request.temperature),
        ):
            llama_cpp.llama_sampler_chain_add(chain, link)
    llama_cpp.llama_sampler_chain_add(
        chain, llama_cpp.llama_sampler_init_dist(ctypes.c_uint32(job.seed).value)
    )
    return chain


def _wake(job: _Job) -> None:
    """Set the job's event on the event loop that waits for it (the loop may be gone)."""
    with contextlib.suppress(RuntimeError):  # that loop has closed: nobody waits any more
        anyio.from_thread.run_sync(job.done.set, token=job.token)
