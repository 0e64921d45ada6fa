"""Backends stream their answers: the pieces joined are what ``generate`` answers."""

from __future__ import annotations

import pytest

from lmteams.hardware import (
    BackendConfig,
    GenerateRequest,
    ModelFile,
    SimulatedBackend,
    StreamingBackend,
    open_backend,
)

GREEDY = GenerateRequest(prompt="List three colours.", max_tokens=24, seed=1)


async def _streamed(backend: StreamingBackend, request: GenerateRequest) -> tuple[list[str], str]:
    async with backend.stream(request) as pieces:
        got = [piece async for piece in pieces]
    assert pieces.completion is not None
    return got, pieces.completion.text


@pytest.mark.parametrize("share", [False, True], ids=["llama", "shared"])
async def test_llama_stream_joins_to_generate(default_model: ModelFile, share: bool) -> None:
    config = BackendConfig(kind="cpu", model=default_model.name, share=share, n_ctx=512)
    async with open_backend(config) as backend:
        assert isinstance(backend, StreamingBackend)
        whole = await backend.generate(GREEDY)
        pieces, text = await _streamed(backend, GREEDY)
        stopped = GenerateRequest(prompt=GREEDY.prompt, max_tokens=24, seed=1, stop=("\n",))
        cut_pieces, cut_text = await _streamed(backend, stopped)
    assert whole.text and "".join(pieces) == text == whole.text
    assert "".join(cut_pieces) == cut_text and "\n" not in cut_text


async def test_sim_streams_in_pieces_over_its_modelled_time() -> None:
    backend = SimulatedBackend("rpi5-cpu", time_scale=0.5)
    request = GenerateRequest(prompt="What is the capital of France?", max_tokens=32)
    pieces, text = await _streamed(backend, request)
    assert len(pieces) >= 2 and "".join(pieces) == text
