"""The planner on mixed devices: speedups over the best single agent, efficiency over capacity.

A team of a slow CPU and a fast GPU is barely faster than the GPU alone; the plan must say so
rather than count the CPU alone as the baseline (which printed 10.8x for two agents).
"""

from __future__ import annotations

import json

import pytest
from rich.console import Console
from typer.testing import CliRunner

from lmteams.cli import _plan as plan_cli
from lmteams.cli import app
from lmteams.errors import ConfigError
from lmteams.study import device_rate, plan, predict_makespan, shipped_graph

MIXED = ("cpu-x86", "rtx-4090-cuda")
runner = CliRunner()


def test_mixed_devices_speed_up_over_the_fastest_single_agent() -> None:
    graph = shipped_graph("mixed-p05")
    chosen = plan(graph, MIXED, max_agents=8)
    cpu, gpu = (device_rate(d, graph) for d in MIXED)
    assert gpu > 10 * cpu
    assert chosen.baseline_device == "rtx-4090-cuda"
    assert chosen.baseline_s == pytest.approx(predict_makespan(graph, [gpu]))
    two = next(
        o for o in chosen.options if o.n_agents == 2 and o.architecture == "centralized-greedy"
    )
    assert two.capacity == pytest.approx((cpu + gpu) / gpu)
    assert two.speedup <= two.capacity  # was 10.8x: the CPU agent alone as the baseline
    assert two.efficiency == pytest.approx(two.speedup / two.capacity)
    for o in chosen.options:
        assert o.speedup == pytest.approx(chosen.baseline_s / o.makespan_s)
        assert o.speedup <= o.work_span * (1 + 1e-9), o
        assert o.work_span <= o.capacity * (1 + 1e-9), o
        assert 0 < o.efficiency <= 1 + 1e-9, o
    # the CPU alone is slower than the baseline, not the unit
    one_cpu = next(o for o in chosen.options if o.n_agents == 1)
    assert one_cpu.devices == ("cpu-x86",) and one_cpu.speedup == pytest.approx(cpu / gpu)


def test_equal_devices_keep_the_plain_definitions() -> None:
    chosen = plan(shipped_graph("fully-parallel-20"), ["cpu-x86"], max_agents=4)
    greedy = [o for o in chosen.options if o.architecture == "centralized-greedy"]
    assert [o.capacity for o in greedy] == pytest.approx([1, 2, 3, 4])
    assert [o.speedup for o in greedy] == pytest.approx([1, 2, 20 / 7, 4])
    assert [o.efficiency for o in greedy] == pytest.approx([1, 1, 20 / 21, 1])
    assert [o.work_span for o in greedy] == pytest.approx([1, 2, 3, 4])


def test_plan_refuses_an_empty_option_list() -> None:
    with pytest.raises(ConfigError, match="at least one architecture"):
        plan(shipped_graph("mixed-p05"), ["cpu-x86"], architectures=())


def test_plan_cli_names_its_baseline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plan_cli, "_out", Console(width=200))
    args = ["plan", "mixed-p05", "--devices", ",".join(MIXED), "--max-agents", "8"]
    table = runner.invoke(app, args)
    assert table.exit_code == 0, table.output
    assert "speedup vs 1x rtx-4090-cuda" in table.output
    assert "efficiency: speedup / capacity" in table.output
    assert "over one rtx-4090-cuda agent" in table.output.splitlines()[-1]
    as_json = runner.invoke(app, [*args, "--json"])
    assert as_json.exit_code == 0, as_json.output
    data = json.loads(as_json.output)["plan"]
    assert data["baseline_device"] == "rtx-4090-cuda"
    assert max(o["speedup"] / o["capacity"] for o in data["options"]) <= 1 + 1e-9
    assert max(o["speedup"] for o in data["options"] if o["n_agents"] == 2) < 1.1
