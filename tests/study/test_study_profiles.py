"""Real devices are planned and run at their measured profiles, never at a silent 100 tokens/s.

A profile planted in a private cache must be what ``device_rate``, the planner and a study
team use; with none, the planner says its figure is an assumption and how to measure it, and
a study team measures the model once (real SmolLM2) before it runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest
from rich.console import Console
from typer.testing import CliRunner

from lmteams.bus import Bus
from lmteams.cli import _plan as plan_cli
from lmteams.cli import app
from lmteams.hardware import (
    DEVICE_CLASSES,
    DeviceProfile,
    cached_profiles,
    estimate_tokens,
    resolve_model,
)
from lmteams.hardware._profile import profile_key
from lmteams.study import (
    chain_plus_free,
    describe_rate,
    device_rate,
    open_team,
    plan,
    shipped_graph,
    subtask_prompt,
)

GEN, PROMPT = 37.5, 410.0  # nothing on this machine measures exactly these
runner = CliRunner()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private profile cache: profiles.json lives beside the models (``LMTEAMS_MODELS``)."""
    root = tmp_path / "models"
    monkeypatch.setenv("LMTEAMS_MODELS", str(root))
    return root


def _plant(cache: Path, model: str, generation: float = GEN, prompt: float = PROMPT) -> None:
    planted = DeviceProfile(
        device="cpu",
        model=model,
        threads=1,
        load_s=0.1,
        prompt_tokens_per_s=prompt,
        generation_tokens_per_s=generation,
        rss_mb=1.0,
        measured_at="2026-01-01T00:00:00+00:00",
    )
    cache.mkdir(parents=True, exist_ok=True)
    key = profile_key("cpu", model, 1)
    (cache / "profiles.json").write_bytes(msgspec.json.encode({key: planted}))


def test_device_rate_uses_a_planted_profile(cache: Path) -> None:
    _plant(cache, "smollm2-135m")
    assert device_rate("llama") == GEN
    assert device_rate("llama:smollm2-135m") == GEN
    graph = chain_plus_free("g", 2, 2, work_tokens=40)
    seconds = sum(
        estimate_tokens(subtask_prompt(graph, s)) / PROMPT + s.work_tokens / GEN
        for s in graph.subtasks
    )
    assert device_rate("llama", graph) == pytest.approx(graph.work / seconds)
    described = describe_rate("llama", graph)
    assert described.source == "measured"
    assert described.profile_key == "cpu|smollm2-135m|1"
    assert described.generation_tokens_per_s == GEN
    # another model has no profile: an assumption, said to be one
    other = describe_rate("llama:gemma3-270m")
    assert other.source == "assumed"
    assert "lmteams hardware profile" in other.note and "gemma3-270m" in other.note


def test_without_a_profile_the_rate_is_labelled_an_assumption(cache: Path) -> None:
    described = describe_rate("llama")
    assert described.source == "assumed"
    assert described.tokens_per_s == DEVICE_CLASSES["cpu-x86"].generation_tokens_per_s
    assert "--backend cpu --threads 1 --model smollm2-135m" in described.note
    assert describe_rate("cpu-x86").source == "modelled"
    assert cached_profiles() == {}  # looking never measures


def test_planner_plans_at_the_measured_rate(cache: Path) -> None:
    graph = shipped_graph("mixed-p05")
    _plant(cache, "smollm2-135m", generation=2 * GEN)
    measured = plan(graph, ["llama", "cpu-x86"], max_agents=2)
    assert [r.source for r in measured.rates] == ["measured", "modelled"]
    assert measured.assumed == ()
    assert measured.rates[0].tokens_per_s == device_rate("llama", graph)
    one_llama = next(o for o in measured.options if o.n_agents == 1)
    _plant(cache, "smollm2-135m", generation=GEN)
    slower = plan(graph, ["llama", "cpu-x86"], max_agents=2)
    one_slower = next(o for o in slower.options if o.n_agents == 1)
    # half the measured generation rate: the llama agent's makespan grows accordingly
    assert one_slower.makespan_s > 1.5 * one_llama.makespan_s


def test_plan_cli_says_which_rates_are_measured_and_which_assumed(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(plan_cli, "_out", Console(width=400))
    _plant(cache, "smollm2-135m")
    args = [
        "plan",
        "mixed-p05",
        "--devices",
        "llama,llama:gemma3-270m,cpu-x86",
        "--max-agents",
        "3",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    rates = [line for line in result.output.splitlines() if line.startswith("rate ")]
    assert len(rates) == 3, result.output
    llama, gemma, cpu = rates
    assert llama.startswith("rate llama: ") and ", measured (profile cpu|smollm2-135m|1" in llama
    assert (
        gemma.startswith("rate llama:gemma3-270m: ") and ", assumed: no measured profile" in gemma
    )
    assert "lmteams hardware profile --backend cpu --threads 1 --model gemma3-270m" in gemma
    assert cpu.startswith("rate cpu-x86: ") and cpu.endswith("modelled")
    as_json = runner.invoke(app, [*args, "--json"])
    assert as_json.exit_code == 0, as_json.output
    sources = {r["device"]: r["source"] for r in json.loads(as_json.output)["plan"]["rates"]}
    assert sources == {"llama": "measured", "llama:gemma3-270m": "assumed", "cpu-x86": "modelled"}


@pytest.mark.slow
async def test_a_study_team_uses_a_cached_profile_and_measures_a_missing_one_once(
    bus: Bus, cache: Path
) -> None:
    model = resolve_model("smollm2-135m").path  # a path: the private cache holds no model
    spec = f"llama:{model}"
    _plant(cache, model)
    async with open_team(bus, [spec], 1, team="planted") as team:
        assert team.members[0].tokens_per_s == GEN  # the planted figure, not re-measured
    assert cached_profiles()[profile_key("cpu", model, 1)].generation_tokens_per_s == GEN

    (cache / "profiles.json").unlink()
    async with open_team(bus, [spec, spec], 2, team="measured") as team:
        profiles = cached_profiles()
        assert list(profiles) == [profile_key("cpu", model, 1)]  # one model, measured once
        measured = profiles[profile_key("cpu", model, 1)]
        assert measured.generation_tokens_per_s > 0 and measured.generation_tokens_per_s != GEN
        assert [m.tokens_per_s for m in team.members] == [measured.generation_tokens_per_s] * 2
    assert describe_rate(spec).source == "measured"


@pytest.mark.slow
def test_plan_measure_profiles_an_unprofiled_llama_device_first(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(plan_cli, "_out", Console(width=400))
    spec = f"llama:{resolve_model('smollm2-135m').path}"
    args = ["plan", "mixed-p05", "--devices", spec, "--max-agents", "2", "--json"]
    before = runner.invoke(app, args)
    assert before.exit_code == 0, before.output
    assert json.loads(before.output)["plan"]["rates"][0]["source"] == "assumed"
    measured = runner.invoke(app, [*args, "--measure"])
    assert measured.exit_code == 0, measured.output
    rate = json.loads(measured.output)["plan"]["rates"][0]
    assert rate["source"] == "measured" and rate["generation_tokens_per_s"] > 0
    assert rate["generation_tokens_per_s"] != DEVICE_CLASSES["cpu-x86"].generation_tokens_per_s
