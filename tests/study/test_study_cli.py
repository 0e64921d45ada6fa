"""``lmteams study``: the verbs print what the package computes, as tables or JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from lmteams.cli._study import parse_team_sizes, resolve_graph, study_app
from lmteams.errors import ConfigError
from lmteams.study import chain_plus_free, save_graph

runner = CliRunner()


def test_graphs_lists_shipped_and_paper_graphs(paper_dir: Path) -> None:
    table = runner.invoke(study_app, ["graphs", "--paper-data", str(paper_dir)])
    assert table.exit_code == 0, table.output
    assert "serial-p02" in table.output
    assert "mathutilities20/p05" in table.output
    as_json = runner.invoke(study_app, ["graphs", "--json"])
    assert as_json.exit_code == 0, as_json.output
    rows = {r["name"]: r for r in json.loads(as_json.output)}
    assert rows["svgutils/p09"]["cp"] == 2
    assert rows["mixed-p05"] == {
        "name": "mixed-p05", "n": 20, "cp": 10, "p": 0.5, "work_tokens": 6000, "span_tokens": 3000,
    }  # fmt: skip


def test_graphs_with_a_wrong_paper_dir_fails(tmp_path: Path) -> None:
    result = runner.invoke(study_app, ["graphs", "--paper-data", str(tmp_path / "no")])
    assert result.exit_code == 1
    assert "does not exist" in result.output


def test_paper_table_and_json(paper_dir: Path, log_events: list[dict[str, Any]]) -> None:
    table = runner.invoke(study_app, ["paper", "--paper-data", str(paper_dir)])
    assert table.exit_code == 0, table.output
    assert "preassigned" in table.output
    assert "cells n>=2: 211, mean 1.05x" in table.output
    as_json = runner.invoke(study_app, ["paper", "--paper-data", str(paper_dir), "--json"])
    assert as_json.exit_code == 0, as_json.output
    data = json.loads(as_json.output)
    assert data["summary"]["cells"]["count"] == 211
    assert len(data["rows"]) > 211
    assert any(e["event"] == "paper.runs.read" for e in log_events)
    rows = runner.invoke(study_app, ["paper", "--paper-data", str(paper_dir), "--rows"])
    assert rows.exit_code == 0, rows.output
    assert "gpt-5.2" in rows.output


def test_predict_prints_all_three_predictions() -> None:
    result = runner.invoke(
        study_app, ["predict", "fully-parallel-20", "--agents", "1..4", "--json"]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["n_agents"] for r in rows] == [1, 2, 3, 4]
    assert [r["simulated"] for r in rows] == pytest.approx([1.0, 2.0, 20 / 7, 4.0])
    table = runner.invoke(
        study_app,
        ["predict", "mixed-p05", "--agents", "2,5", "--policy", "preassigned", "--barrier"],
    )
    assert table.exit_code == 0, table.output
    assert "preassigned, barrier" in table.output
    assert "1.67" in table.output


def test_predict_reads_files_and_paper_keys(tmp_path: Path, paper_dir: Path) -> None:
    file = save_graph(chain_plus_free("mine", 3, 3), tmp_path / "mine.toml")
    result = runner.invoke(study_app, ["predict", str(file), "--agents", "2"])
    assert result.exit_code == 0, result.output
    assert "mine: N=6 CP=3" in result.output
    assert resolve_graph("svgutils/p02", paper_dir).cp == 16


def test_predict_explains_bad_input() -> None:
    unknown = runner.invoke(study_app, ["predict", "nope"])
    assert unknown.exit_code == 1
    assert "unknown graph 'nope'" in unknown.output
    bad_policy = runner.invoke(study_app, ["predict", "mixed-p05", "--policy", "random"])
    assert bad_policy.exit_code == 1
    assert "policy must be one of" in bad_policy.output


def test_parse_team_sizes() -> None:
    assert parse_team_sizes("1..8") == list(range(1, 9))
    assert parse_team_sizes("1,2, 4") == [1, 2, 4]
    assert parse_team_sizes("3") == [3]
    assert parse_team_sizes("1..2,5") == [1, 2, 5]
    for bad in ("0..3", "4..2", "x", ""):
        with pytest.raises(ConfigError):
            parse_team_sizes(bad)
