"""The OpenAI-compatible backend: a model behind any ``/v1`` server, streamed token by token.

llama.cpp's server, llama-cpp-python's server, vLLM, Ollama and hosted APIs all speak this
protocol, so one backend lets an agent answer with whatever model a user already serves.
Every call is streamed (server-sent events), even by ``generate``: the first content chunk
marks the end of prompt processing, so ``Timings`` mean what they mean for the local backend
(``prompt_s`` is the time to first token, ``generation_s`` the rest), and a cancelled caller
closes the HTTP stream, which is how such servers learn to stop generating.

Token counts come from the server's ``usage``, asked for with ``stream_options.include_usage``
(llama.cpp's server, vLLM, Ollama and OpenAI send it). A server that ignores the option
(llama-cpp-python's does) gets its output counted as the content chunks it streamed, one
token each on llama.cpp-based servers, and its prompt estimated from its length
(:func:`~lmteams.hardware.estimate_tokens`); ``OpenAIBackend.usage_reported`` says which.

Failures are split by what a retry can do. A server that cannot be reached, times out or
answers 5xx / 429 raises :class:`~lmteams.errors.BackendUnavailableError` (a worker hands the
task back for a later try or another agent); one that refuses the request itself (unknown
model, bad key, a prompt over its context) raises :class:`~lmteams.errors.BackendError`.
Both name the URL and the cause. The SDK's own retries are off: the task path retries, with
its own delays and limits, and a dead endpoint must fail in bounded time.
"""

from __future__ import annotations

import os
import time
import urllib.parse
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self

import anyio
import msgspec
import structlog

from lmteams.errors import BackendError, BackendUnavailableError, ConfigError
from lmteams.hardware._sim import estimate_tokens
from lmteams.hardware._types import BackendConfig, Completion, GenerateRequest, Timings

if TYPE_CHECKING:
    from openai import AsyncOpenAI

__all__ = ("OpenAIBackend", "CompletionStream", "openai_device")

log = structlog.get_logger(__name__)

_EXTRA: Final = "pip install 'lmteams[openai]'"
_CONNECT_S: Final = 10.0
"""The longest wait for a TCP connection; ``request_timeout_s`` if that is shorter."""


def _base_url(config: BackendConfig) -> str:
    """``base_url`` as the SDK wants it: a bare ``http://host:port`` gets ``/v1`` appended."""
    url = (config.base_url or "").strip().rstrip("/")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"backend kind 'openai' needs base_url = http(s)://host[:port][/path], "
            f"got {config.base_url!r} (e.g. http://127.0.0.1:8000/v1)"
        )
    return url if parts.path else f"{url}/v1"


def openai_device(base_url: str | None) -> str:
    """The device label of an endpoint: ``openai:<host>[:<port>]``, never its credentials.

    Profiles are cached by it, so one server measured once serves every agent that uses it.
    """
    parts = urllib.parse.urlsplit((base_url or "").strip())
    host = parts.hostname or "unknown"
    return f"openai:{host}:{parts.port}" if parts.port else f"openai:{host}"


class OpenAIBackend:
    """A model served over the OpenAI protocol; open it with :func:`open_backend`.

    Calls are not serialised here: the server decides how many requests it runs at once
    (vLLM batches them, llama.cpp's servers queue them), and nothing on this side is shared
    between calls but the HTTP connection pool.
    """

    def __init__(self, client: AsyncOpenAI, *, config: BackendConfig, url: str) -> None:
        self._client = client
        self._config = config
        self._url = url
        self._device = openai_device(url)
        self._closed = False
        self.usage_reported: bool | None = None
        """Whether the last finished call had the server's ``usage`` (None before any)."""

    @classmethod
    async def open(cls, config: BackendConfig) -> OpenAIBackend:
        """A client for ``config.base_url``; the key is read from ``$<api_key_env>``.

        Nothing is sent yet: a dead endpoint shows on the first call, as it would on any
        later one (servers come and go while an agent runs).
        """
        url = _base_url(config)
        try:
            from openai import AsyncOpenAI, Timeout  # noqa: PLC0415 - an optional extra
        except ImportError as exc:
            raise ConfigError(
                f"backend kind 'openai' needs the openai package: {_EXTRA} ({exc})"
            ) from exc
        timeout = config.request_timeout_s
        if not timeout > 0:
            raise ConfigError(f"request_timeout_s must be more than 0, got {timeout}")
        # Local servers take any key, and the SDK refuses to start without one.
        key = os.environ.get(config.api_key_env) or "unused"
        client = AsyncOpenAI(
            base_url=url,
            api_key=key,
            max_retries=0,
            timeout=Timeout(timeout, connect=min(timeout, _CONNECT_S)),
        )
        log.info(
            "backend.opened",
            url=url,
            model=config.model,
            api_key_env=config.api_key_env,
            api_key_set=config.api_key_env in os.environ,
        )
        return cls(client, config=config, url=url)

    @property
    def device(self) -> str:
        return self._device

    @property
    def model(self) -> str:
        return self._config.model

    @property
    def url(self) -> str:
        """The endpoint's base URL (``.../v1``), for messages and logs."""
        return self._url

    def stream(self, request: GenerateRequest) -> CompletionStream:
        """Stream one answer as text pieces: ``async with backend.stream(r) as pieces``.

        Leaving the block early (``break``, cancellation) closes the HTTP stream, and
        ``pieces.completion`` is then the text so far with finish reason ``"cancelled"``.
        """
        if self._closed:
            raise BackendError(f"backend for {self.model} at {self._url} is closed")
        return CompletionStream(self, request)

    async def generate(self, request: GenerateRequest) -> Completion:
        """The whole answer, streamed underneath (for the timings and a prompt cancel)."""
        async with self.stream(request) as pieces:
            async for _ in pieces:
                pass
        assert pieces.completion is not None  # set when the pieces ran out
        return pieces.completion

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await self._client.close()

    # -- for CompletionStream ---------------------------------------------------------------

    async def _open_stream(self, request: GenerateRequest) -> Any:
        """Send the request; the server's refusals arrive here, before any chunk."""
        common: dict[str, Any] = {
            "model": self._config.model,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "seed": request.seed if request.seed is not None else self._config.seed,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.stop:
            common["stop"] = list(request.stop)
        try:
            if request.chat:
                messages: list[Any] = []  # the SDK's TypedDicts; plain dicts on the wire
                if request.system:
                    messages.append({"role": "system", "content": request.system})
                messages.append({"role": "user", "content": request.prompt})
                if request.logprobs:
                    common["logprobs"] = True
                return await self._client.chat.completions.create(messages=messages, **common)
            prompt = f"{request.system}\n\n{request.prompt}" if request.system else request.prompt
            if request.logprobs:
                common["logprobs"] = 1
            return await self._client.completions.create(prompt=prompt, **common)
        except Exception as exc:
            raise self._failure(exc) from exc

    def _failure(self, exc: Exception) -> Exception:
        """The lmteams error for an SDK error: transient ones say so by their class."""
        import openai  # noqa: PLC0415

        where = f"the OpenAI-compatible server at {self._url} (model {self.model!r})"
        if isinstance(exc, openai.APITimeoutError):
            return BackendUnavailableError(
                f"{where} did not answer within {self._config.request_timeout_s:g} s "
                "(request_timeout_s): is it overloaded or stuck?"
            )
        if isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__ or exc
            return BackendUnavailableError(
                f"cannot reach {where}: {type(cause).__name__}: {cause}. Is the server running "
                "and base_url right?"
            )
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            detail = _error_detail(exc.body) or exc.message
            if status >= 500 or status == 429:
                return BackendUnavailableError(f"{where} answered {status}: {detail}")
            hint = {
                401: f"set the API key in ${self._config.api_key_env} (api_key_env)",
                403: f"the key in ${self._config.api_key_env} may not use this model",
                404: "check the model name against the server's /v1/models and base_url",
            }.get(status, "the server refused the request itself")
            return BackendError(f"{where} refused the request ({status}: {detail}); {hint}")
        if isinstance(exc, openai.OpenAIError):
            return BackendError(f"{where} failed: {type(exc).__name__}: {exc}")
        return exc

    def _completion(
        self, request: GenerateRequest, text: str, tally: _Tally, finish: str
    ) -> Completion:
        usage = tally.usage
        self.usage_reported = usage is not None
        if usage is not None:
            tokens_in, tokens_out = usage
        else:
            tokens_in = estimate_tokens(request.prompt) + estimate_tokens(request.system or "")
            tokens_out = tally.chunks
        ended = time.perf_counter()
        first = tally.first_at if tally.first_at is not None else ended
        logprobs = tuple(tally.logprobs) if request.logprobs and tally.logprobs else None
        return Completion(
            text=text,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            timings=Timings(prompt_s=first - tally.started, generation_s=ended - first),
            finish_reason=finish,
            device=self._device,
            model=self.model,
            logprobs=logprobs,
        )


class _Tally(msgspec.Struct, kw_only=True):
    """What a stream has counted so far."""

    started: float
    first_at: float | None = None
    chunks: int = 0
    usage: tuple[int, int] | None = None
    finish: str | None = None
    logprobs: list[float] = msgspec.field(default_factory=list)


class CompletionStream:
    """One streamed answer: an async context manager, and inside it an iterator of pieces."""

    def __init__(self, backend: OpenAIBackend, request: GenerateRequest) -> None:
        self._backend = backend
        self._request = request
        self._response: Any = None
        self._chunks: AsyncIterator[Any] | None = None
        self._pieces: list[str] = []
        self._tally = _Tally(started=time.perf_counter())
        self.completion: Completion | None = None
        """The whole answer once the stream has ended (or was left: ``"cancelled"``)."""

    async def __aenter__(self) -> Self:
        self._tally.started = time.perf_counter()
        self._response = await self._backend._open_stream(self._request)
        self._chunks = aiter(self._response)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with anyio.CancelScope(shield=True):  # a cancelled caller must still hang up
            await self._response.close()
        if self.completion is None:  # left before the end: a cancel, a break, an error
            self._finish("cancelled")

    @property
    def closed(self) -> bool:
        """Whether the HTTP stream is closed (the server then stops generating for it)."""
        return self._response is not None and bool(self._response.response.is_closed)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> str:
        assert self._chunks is not None, "use the stream inside `async with`"
        while self.completion is None:
            try:
                chunk = await anext(self._chunks)
            except StopAsyncIteration:
                if self._tally.finish is None:  # cut short, yet closed cleanly
                    raise BackendError(
                        f"the OpenAI-compatible server at {self._backend.url} ended the stream "
                        "before the answer finished (no finish_reason): see the server's log "
                        "(llama-cpp-python's server does this for a prompt over its context)"
                    ) from None
                self._finish(_finish_reason(self._tally.finish))
                break
            except Exception as exc:
                raise self._backend._failure(exc) from exc
            piece = self._read(chunk)
            if piece:
                return piece
        raise StopAsyncIteration

    def _read(self, chunk: Any) -> str:
        """Count one chunk; its text, or "" for a role, usage or finish-only chunk."""
        tally = self._tally
        if chunk.usage is not None:
            tally.usage = (chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
        if not chunk.choices:
            return ""
        choice = chunk.choices[0]
        tally.finish = choice.finish_reason or tally.finish
        piece = choice.delta.content if hasattr(choice, "delta") else choice.text
        tally.logprobs.extend(_logprobs(choice.logprobs))
        if not piece:
            return ""
        if tally.first_at is None:
            tally.first_at = time.perf_counter()
        tally.chunks += 1
        self._pieces.append(piece)
        return str(piece)

    def _finish(self, finish: str) -> None:
        text = "".join(self._pieces)
        self.completion = self._backend._completion(self._request, text, self._tally, finish)


def _finish_reason(reason: str | None) -> str:
    """``length`` stays; end of turn, a stop string, a filter or a tool call are all a stop."""
    return "length" if reason == "length" else "stop"


def _logprobs(block: Any) -> list[float]:
    """Token logprobs of one chunk, chat (``content[].logprob``) or completion style."""
    if block is None:
        return []
    content = getattr(block, "content", None)
    if content is not None:
        return [float(item.logprob) for item in content]
    return [float(x) for x in getattr(block, "token_logprobs", None) or () if x is not None]


def _error_detail(body: object) -> str:
    """The server's own words from an error body (``{"error": {"message": ...}}`` or alike)."""
    if isinstance(body, Mapping):
        inner = body.get("error", body)
        if isinstance(inner, Mapping):
            return str(inner.get("message") or inner.get("detail") or "")
        return str(body.get("detail") or inner)
    return str(body) if body else ""
