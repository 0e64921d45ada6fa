"""A sweep's report and files: the documented CSV schema, the paper's cells set beside ours,
fault settings as columns and labels, and Amdahl never called a bound."""

from __future__ import annotations

import csv
import json
import re
import statistics
from pathlib import Path

import pytest
from study_sweeps import simulated_sweep
from typer.testing import CliRunner

from lmteams.cli._study import study_app
from lmteams.errors import ConfigError
from lmteams.study import PaperData, count_runs, load_experiment, paper_speedups, shipped_graph
from lmteams.study._report import CELLS_CSV_COLUMNS, RUNS_CSV_COLUMNS, write_report

DOC = Path(__file__).parents[2] / "docs" / "runs-csv.md"


def _documented(section: str) -> list[list[str]]:
    """The rows of the table under ``## {section}`` in docs/runs-csv.md."""
    text = DOC.read_text(encoding="utf-8").split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


def _header(path: Path) -> list[str]:
    with path.open(encoding="utf-8") as fh:
        return next(csv.reader(fh))


@pytest.fixture(scope="module")
def paper_graph_report(tmp_path_factory: pytest.TempPathFactory, paper: PaperData) -> Path:
    graphs = [paper.graphs["mathutilities20/p05"], shipped_graph("fully-parallel-20")]
    runs = simulated_sweep(
        graphs,
        [2, 4],
        repetitions=3,
        architectures=("centralized-greedy", "decentralized"),
        schedulings=("rounds",),
        faults=((0.0, 0.0), (0.1, 0.05)),
        sigma=0.3,
    )
    out = tmp_path_factory.mktemp("report")
    write_report(runs, out, name="sim", paper_data=paper.root, seed=5)
    return out


def test_the_csv_headers_are_the_documented_schema(paper_graph_report: Path) -> None:
    for section, columns, file in (
        ("runs.csv", RUNS_CSV_COLUMNS, "runs.csv"),
        ("cells.csv", CELLS_CSV_COLUMNS, "cells.csv"),
    ):
        rows = _documented(section)
        names = [row[0].strip("`") for row in rows]
        assert names == list(columns) == _header(paper_graph_report / file), section
        for name, kind, unit, meaning in rows:
            assert kind.split()[0] in {"str", "int", "float", "bool"} and unit and meaning, name


def test_each_measured_cell_is_set_beside_the_papers_matching_cells(
    paper_graph_report: Path, paper: PaperData
) -> None:
    report = (paper_graph_report / "report.md").read_text(encoding="utf-8")
    beside = report.split("## Beside the paper", 1)[1]
    cells = paper_speedups(paper.runs)
    for arch, mode in (("centralized-greedy", "preassigned"), ("decentralized", "decentralized")):
        for n in (2, 4):
            mine = [
                c.speedup
                for c in cells
                if (c.domain, c.p_label, c.mode, c.n_agents) == ("mathutilities20", "p05", mode, n)
            ]
            assert len(mine) == 3  # one per model
            expected = f"{statistics.fmean(mine):.2f} ({min(mine):.2f}-{max(mine):.2f})"
            rows = [
                line
                for line in beside.splitlines()
                if line.startswith(f"| mathutilities20/p05 | 0.50 | {arch} | rounds |")
                and f"| {n} |" in line
            ]
            assert len(rows) == 2  # one per fault setting
            assert all(f"| {mode} | 3 | {expected} |" in row for row in rows), rows
    # p = 1 is not a p the paper ran: those cells are counted, not matched
    assert "| fully-parallel-20 |" not in beside
    assert "8 measured cells have paper cells beside them; 8 have none" in beside


def test_amdahl_is_never_called_a_bound(paper_graph_report: Path) -> None:
    report = (paper_graph_report / "report.md").read_text(encoding="utf-8")
    bound_words = r"(?:upper )?(?:bound|ceiling|limit)"
    assert not re.search(rf"Amdahl(?:'s)?(?: law| prediction)?\s+{bound_words}", report)
    assert "upper bound" not in report
    assert "Amdahl is a prediction, the work/span bound min(n, W/S) the ceiling" in report
    with (paper_graph_report / "cells.csv").open(encoding="utf-8") as fh:
        cells = list(csv.DictReader(fh))
    assert any(float(c["work_span"]) > float(c["amdahl"]) for c in cells)


def test_stats_json_records_the_bootstrap_seed_and_the_tests(paper_graph_report: Path) -> None:
    stats = json.loads((paper_graph_report / "stats.json").read_text(encoding="utf-8"))
    assert stats["bootstrap_seed"] == 5 and stats["bootstrap_resamples"] == 2000
    assert {t["test"] for t in stats["tests"]} == {"kruskal-wallis"}  # rounds only: no U
    report = (paper_graph_report / "report.md").read_text(encoding="utf-8")
    assert "seed 5" in report and "| kruskal-wallis | rounds: across architectures |" in report


def test_fault_settings_are_columns_and_labels_of_a_real_sweep(tmp_path: Path) -> None:
    config = tmp_path / "faults.toml"
    config.write_text(
        'name = "faults"\ngraphs = ["parallel-p09"]\nteam_sizes = [2]\n'
        'architectures = ["centralized-greedy"]\nscheduling = ["async"]\n'
        "repetitions = 2\nseed = 4\ntime_scale = 0.002\n"
        "[[faults]]\n"
        "[[faults]]\nstraggler_rate = 0.2\nstraggler_factor = 4.0\ncrash_rate = 0.05\n",
        encoding="utf-8",
    )
    experiment = load_experiment(config)
    assert count_runs(experiment) == 8  # 2 fault settings x (baseline + n=2) x 2 repetitions
    out = tmp_path / "out"
    result = CliRunner().invoke(study_app, ["run", str(config), "--out", str(out)])
    assert result.exit_code == 0, result.output
    with (out / "runs.csv").open(encoding="utf-8") as fh:
        runs = list(csv.DictReader(fh))
    settings = {
        (r["straggler_rate"], r["straggler_factor"], r["crash_rate"], r["faults"]) for r in runs
    }
    assert settings == {
        ("0.0", "3.0", "0.0", "no faults"),
        ("0.2", "4.0", "0.05", "stragglers 20% x4, crashes 5%"),
    }
    assert {r["max_failures"] for r in runs} == {"3"} and {r["seed"] for r in runs} == {"4", "5"}
    # every run's speedup is over its own condition's pooled 1-agent mean
    for label in ("no faults", "stragglers 20% x4, crashes 5%"):
        mine = [r for r in runs if r["faults"] == label]
        base = statistics.fmean(float(r["makespan_s"]) for r in mine if r["n_agents"] == "1")
        for r in mine:
            assert float(r["baseline_s"]) == pytest.approx(base)
            assert float(r["speedup"]) == pytest.approx(base / float(r["makespan_s"]))
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "| parallel-p09 | 0.90 | centralized-greedy | async | steady | no faults | 2 | 2 |" in (
        report
    )
    assert "| stragglers 20% x4, crashes 5% | 2 | 2 |" in report
    assert json.loads((out / "stats.json").read_text())["bootstrap_seed"] == 4


def test_a_fault_setting_out_of_range_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(
        'graphs = ["mixed-p05"]\n[[faults]]\nstraggler_rate = 0.1\nstraggler_factor = 0.5\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match="straggler_factor must be >= 1"):
        load_experiment(config)


def test_a_failed_job_is_a_recorded_run_and_the_sweep_goes_on(tmp_path: Path) -> None:
    config = tmp_path / "crashes.toml"
    config.write_text(
        'graphs = ["parallel-p09"]\nteam_sizes = [2]\narchitectures = ["centralized-greedy"]\n'
        'scheduling = ["async"]\ntime_scale = 0.002\ncrash_rate = 0.9\n',
        encoding="utf-8",
    )
    out = tmp_path / "out"
    result = CliRunner().invoke(study_app, ["run", str(config), "--out", str(out)])
    assert result.exit_code == 0, result.output
    with (out / "runs.csv").open(encoding="utf-8") as fh:
        runs = list(csv.DictReader(fh))
    assert [(r["n_agents"], r["succeeded"]) for r in runs] == [("1", "False"), ("2", "False")]
    assert all("injected failure" in r["error"] for r in runs)
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "Failed runs (a subtask out of retries): 2, left out of every statistic" in report
