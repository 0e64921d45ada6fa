"""Prompts as token lists: chat template, the shared system prefix, budgets, stops, logprobs.

Both llama.cpp backends (one sequence per model in :mod:`._llama`, many sequences on one
model in :mod:`._host`) must turn a request into exactly the same tokens and cut it at
exactly the same point, or a shared agent's greedy answer would differ from an unshared
one's. So the rules live here once, and both call them.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt
import structlog

from lmteams.errors import BackendError
from lmteams.hardware._streaming import TextSoFar
from lmteams.hardware._types import GenerateRequest

if TYPE_CHECKING:
    from llama_cpp import Llama

__all__ = ("Prompter", "chat_formatter", "budget", "stop_cut", "watch", "chosen_logprob")

log = structlog.get_logger(__name__)

_SENTINEL: Final = "\u2063lmteams-prefix\u2063"
_PREFIXES_KEPT: Final = 16
"""System prefixes remembered: a team has a handful of roles, each with its own system."""


class Prompter:
    """Tokenizes requests for one loaded model; safe to call from several threads."""

    def __init__(self, llm: Llama, model_name: str) -> None:
        self._llm = llm
        self._model_name = model_name
        self._formatter = chat_formatter(llm)
        self._warned_no_template = False
        self._prefixes: OrderedDict[tuple[bool, str | None], list[int]] = OrderedDict()

    def tokens(self, request: GenerateRequest) -> list[int]:
        """The prompt as the model evaluates it: the GGUF's chat template, or raw text."""
        if request.chat and self._formatter is not None:
            messages = [{"role": "system", "content": request.system}] if request.system else []
            messages.append({"role": "user", "content": request.prompt})
            try:
                text = self._formatter(messages=messages).prompt
            except Exception as exc:  # jinja templates raise anything
                raise BackendError(
                    f"the chat template of {self._model_name} failed: {exc}"
                ) from exc
            return self._tokenize(text, add_bos=False)
        if request.chat and not self._warned_no_template:
            self._warned_no_template = True
            log.warning(
                "backend.no_chat_template", model=self._model_name, fallback="raw completion"
            )
        text = f"{request.system}\n\n{request.prompt}" if request.system else request.prompt
        return self._tokenize(text, add_bos=True)

    def prefix(self, request: GenerateRequest) -> list[int]:
        """Tokens of the prompt's system part: what every request with this system shares.

        Rendered with a sentinel user message and cut before it, so the template's own
        default system prompt counts too.
        """
        key = (request.chat and self._formatter is not None, request.system)
        cached = self._prefixes.get(key)
        if cached is not None:
            return cached
        if key[0]:
            messages = [{"role": "system", "content": request.system}] if request.system else []
            messages.append({"role": "user", "content": _SENTINEL})
            try:
                text = self._formatter(messages=messages).prompt
            except Exception:  # jinja raises anything; then nothing is shared
                text = ""
            head, found, _ = text.partition(_SENTINEL)
            prefix = self._tokenize(head, add_bos=False) if found else []
        elif request.system:
            prefix = self._tokenize(f"{request.system}\n\n", add_bos=True)
        else:
            prefix = []
        self._prefixes[key] = prefix
        while len(self._prefixes) > _PREFIXES_KEPT:
            self._prefixes.popitem(last=False)
        return prefix

    def split(self, request: GenerateRequest, prompt: list[int]) -> int:
        """Where the prompt is cut: the longest start it shares with its system part.

        Fixed by the request alone, never by what ran before; at least one token is left
        after it, so there is always something to evaluate before sampling.
        """
        split = 0
        for ours, theirs in zip(self.prefix(request), prompt[:-1], strict=False):
            if ours != theirs:
                break
            split += 1
        return split

    def text(self, tokens: list[int], prompt: list[int]) -> str:
        """Generated tokens as text (``prompt`` decides how the first token's space reads)."""
        raw: bytes = self._llm.detokenize(tokens, prev_tokens=prompt)
        return raw.decode("utf-8", errors="ignore")

    def _tokenize(self, text: str, *, add_bos: bool) -> list[int]:
        return list(self._llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True))


def budget(prompt_tokens: int, max_tokens: int, n_ctx: int) -> int:
    """How many tokens may be generated: ``max_tokens`` clipped to the context left."""
    if not prompt_tokens:
        raise BackendError("empty prompt: there is nothing to complete")
    if prompt_tokens >= n_ctx:
        raise BackendError(
            f"context overflow: the prompt is {prompt_tokens} tokens but n_ctx is {n_ctx}; "
            "shorten the prompt or open the backend with a larger BackendConfig.n_ctx"
        )
    return max(0, min(max_tokens, n_ctx - prompt_tokens))


def stop_cut(text: str, stops: tuple[str, ...]) -> int:
    """Where the first stop string starts in ``text``, or -1."""
    return min((i for s in stops if (i := text.find(s)) >= 0), default=-1)


def watch(
    prompter: Prompter,
    request: GenerateRequest,
    tokens: list[int],
    prompt: list[int],
    so_far: TextSoFar | None,
) -> str | None:
    """After each token: the text cut at a stop string once one appears, else None.

    A stream's ``so_far`` is shown the text when due; the detokenize is shared with the stop
    check, so neither decoder pays twice for a streamed request with stop strings.
    """
    text = prompter.text(tokens, prompt) if request.stop else None
    if text is not None and (cut := stop_cut(text, request.stop)) >= 0:
        return text[:cut]
    if so_far is not None and so_far.due():
        so_far.show(text if text is not None else prompter.text(tokens, prompt))
    return None


def chosen_logprob(logits: npt.NDArray[np.float32], token: int) -> float:
    """log p(token) under the distribution the logits row gives (pre-temperature)."""
    peak = float(logits.max())
    log_z = peak + math.log(float(np.exp(logits - peak).sum()))
    return float(logits[token]) - log_z


def chat_formatter(llm: Llama) -> Any:
    """The GGUF's own chat template, rendered the way llama-cpp-python renders it."""
    import llama_cpp  # noqa: PLC0415 - keep `import lmteams.hardware` free of the C library
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter  # noqa: PLC0415

    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        return None
    vocab = llama_cpp.llama_model_get_vocab(llm.model)

    def text_of(token: int) -> str:
        if token < 0:
            return ""
        return bytes(llama_cpp.llama_vocab_get_text(vocab, token)).decode("utf-8", "replace")

    return Jinja2ChatFormatter(
        template=template,
        eos_token=text_of(int(llm.token_eos())),
        bos_token=text_of(int(llm.token_bos())),
    )
