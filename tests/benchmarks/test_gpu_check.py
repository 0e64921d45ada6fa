"""benchmarks/gpu_check.py on a CPU, for real (SmolLM2, a few tokens), and its shell wrappers.

The GPU run cannot happen here; what can is the whole of gpu_check.py with three CPU agents:
every step runs and passes, agents advertise the rates their profile step measured (so
placement is driven by measured profiles), and the last line is the one JSON object the GPU
run will print. The shell scripts are parsed (``bash -n``) and refuse clearly to run
without their bundle.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lmteams.hardware import cached_profiles, resolve_model
from lmteams.hardware._profile import profile_key

ROOT = Path(__file__).parents[2]
SCRIPTS = ("gpu_check.sh", "gpu_prepare.sh")


@pytest.fixture
def private_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A model cache of our own holding the real SmolLM2 (linked): profiles land here."""
    model = Path(resolve_model("smollm2-135m").path)
    root = tmp_path / "models"
    root.mkdir()
    (root / model.name).symlink_to(model)
    monkeypatch.setenv("LMTEAMS_MODELS", str(root))
    return root


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_gpu_check_runs_every_step_on_cpu(private_models: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu",
         "--quick", "--cpu-threads", "1"],
        capture_output=True, text=True, timeout=580, check=False, cwd=ROOT, env=os.environ,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads(done.stdout.strip().splitlines()[-1])
    assert data["pass"] is True and data["device"] == "cpu"
    steps = data["steps"]
    assert set(steps) == {"detect", "profile", "team", "llm_overhead"}
    assert all(s["pass"] is True and s["seconds"] > 0 for s in steps.values()), steps

    measured = steps["profile"]["profiles"]["cpu/1"]
    assert measured["device"] == "cpu" and measured["generation_tokens_per_s"] > 0
    # the profile step went through the cache the agents read their rates from
    cached = cached_profiles()[profile_key("cpu", "smollm2-135m", 1)]
    assert cached.generation_tokens_per_s == measured["generation_tokens_per_s"]
    team = steps["team"]
    assert sum(team["served"].values()) == team["tasks"] == 6
    assert set(team["served"]) == {"cpu-0", "cpu-1", "cpu-2"}
    rate = round(measured["generation_tokens_per_s"], 1)
    assert team["advertised_tokens_per_s"] == dict.fromkeys(team["served"], rate)
    assert team["tokens_out"] > 0

    names = {f["name"]: f for f in data["figures"]}
    assert names["profile_generation_tokens_per_s_cpu_over_cpu"]["ratio"] == 1.0
    share = names["team_share_of_cpu-0_over_fair_share"]
    assert share["ratio"] == pytest.approx(team["served"]["cpu-0"] / 6 * 3, abs=1e-3)
    overhead = {f["name"] for f in steps["llm_overhead"]["figures"]}
    assert "llm_tokens_per_s_through_agent" in overhead
    assert data["machine"]["versions"]["llama-cpp-python"] != "not installed"


@pytest.mark.parametrize("script", SCRIPTS)
def test_shell_scripts_parse(script: str) -> None:
    done = subprocess.run(
        ["bash", "-n", str(ROOT / "benchmarks" / script)], capture_output=True, text=True,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_gpu_check_sh_without_a_bundle_says_how_to_make_one(tmp_path: Path) -> None:
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--bundle", str(tmp_path / "none")],
        capture_output=True, text=True, check=False, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 2
    assert "gpu_prepare.sh" in done.stderr and "no bundle" in done.stderr


def test_gpu_check_sh_run_stage_before_build_refuses(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    (bundle / "part1").mkdir(parents=True)
    (bundle / "part1" / "manifest.json").write_text("{}")
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--stage", "run", "--bundle",
         str(bundle)],
        capture_output=True, text=True, check=False, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 1
    assert "run --stage build first" in done.stderr
    # still one JSON line, saying which stage failed
    line = json.loads(done.stdout.strip().splitlines()[-1])
    assert line["pass"] is False and line["steps"]["run"]["pass"] is False
