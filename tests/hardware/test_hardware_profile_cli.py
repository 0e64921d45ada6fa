"""Profiling (cached per device, model and threads) and the thin CLI verbs."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest
import typer
from typer.testing import CliRunner

from lmteams.cli._hardware import hardware_app, model_app
from lmteams.hardware import BackendConfig, ModelFile, cached_profiles, profile

SIM = BackendConfig(kind="sim", sim_device="apple-m2-metal", time_scale=0.0, n_threads=2)


async def test_profile_is_cached_until_refreshed(models_dir: Path) -> None:
    first = await profile(SIM)
    assert first.device == "sim:apple-m2-metal"
    assert first.load_s == pytest.approx(0.4)
    assert first.generation_tokens_per_s > 0
    assert first.prompt_tokens_per_s > first.generation_tokens_per_s
    assert first.rss_mb > 0
    assert (models_dir / "profiles.json").is_file()
    assert await profile(SIM) == first
    assert list(cached_profiles().values()) == [first]
    again = await profile(msgspec.structs.replace(SIM, seed=5), refresh=True)
    assert again.generation_tokens_per_s != first.generation_tokens_per_s


@pytest.mark.slow
async def test_profile_the_real_cpu_backend(models_dir: Path, default_model: ModelFile) -> None:
    measured = await profile(BackendConfig(kind="cpu", model=default_model.path), refresh=True)
    assert measured.device == "cpu"
    assert measured.load_s > 0
    assert measured.prompt_tokens_per_s > 0
    assert measured.generation_tokens_per_s > 0


def _app() -> typer.Typer:
    app = typer.Typer()
    app.add_typer(hardware_app)
    app.add_typer(model_app)
    return app


def test_cli_hardware_table_and_json() -> None:
    runner = CliRunner()
    table = runner.invoke(_app(), ["hardware"])
    assert table.exit_code == 0, table.output
    assert "GPU offload" in table.output
    as_json = runner.invoke(_app(), ["hardware", "--json"])
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.output)["physical_cores"] > 0


def test_cli_hardware_profile_sim(models_dir: Path) -> None:
    args = ["hardware", "profile", "--backend", "sim", "--sim-device", "h100-cuda", "--json"]
    result = CliRunner().invoke(_app(), args, env={"LMTEAMS_MODELS": str(models_dir)})
    assert result.exit_code == 0, result.output
    body = result.output[result.output.index("{") :]
    assert json.loads(body)["device"] == "sim:h100-cuda"


def test_cli_model_list_and_path(models_dir: Path) -> None:
    runner = CliRunner()
    listed = runner.invoke(_app(), ["model", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    names = {m["name"] for m in json.loads(listed.output)}
    assert {"smollm2-135m", "gemma3-270m"} <= names
    path = runner.invoke(_app(), ["model", "path", "smollm2-135m"])
    assert path.exit_code == 0
    assert path.output.strip().startswith(str(models_dir))
    unknown = runner.invoke(_app(), ["model", "path", "nope"])
    assert unknown.exit_code == 1
    assert "known catalogue names" in unknown.output
