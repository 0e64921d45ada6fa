"""``lmteams study paper`` carries every figure the paper reports, each checked against an
independent computation over the released parquet files (pyarrow joins and group-bys here,
Python loops in the module), and against the values summaries of the paper quote."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from scipy import stats
from typer.testing import CliRunner

from lmteams.cli._study import study_app
from lmteams.study import PaperData, findings_markdown, paper_findings, run_speedups
from lmteams.testing import capture_logs

runner = CliRunner()
_TEAM_METRICS = (
    "success_rate",
    "tokens",
    "messages",
    "test_failures",
    "concurrent_writes",
    "rewrites",
    "idle_rounds",
    "straggler_gap_s",
)
_MODE = {"preassigned": "preassign_nolead", "decentralized": "decentralized"}


@pytest.fixture(scope="module")
def findings(paper_dir: Path) -> dict[str, Any]:
    with capture_logs():  # keeps debug lines out of the JSON on stdout
        result = runner.invoke(study_app, ["paper", "--paper-data", str(paper_dir), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert {"rows", "summary", "findings"} <= data.keys()
    found: dict[str, Any] = data["findings"]
    return found


@pytest.fixture(scope="module")
def runs(paper_dir: Path) -> pa.Table:
    return pq.read_table(paper_dir / "runs.parquet")


@pytest.fixture(scope="module")
def events(paper_dir: Path) -> pa.Table:
    return pq.read_table(
        paper_dir / "events.parquet",
        columns=["type", "ts", "run_dir", "round", "path", "returncode"],
    )


def _team(findings: dict[str, Any], metric: str, mode: str, n: int | None) -> dict[str, Any]:
    matches = [
        f
        for f in findings["by_team_size"]
        if (f["metric"], f["mode"], f["n_agents"]) == (metric, mode, n)
    ]
    assert len(matches) == 1, (metric, mode, n)
    return matches[0]


def _stat(findings: dict[str, Any], metric: str, mode: str) -> dict[str, Any]:
    (match,) = [f for f in findings["statistics"] if (f["metric"], f["mode"]) == (metric, mode)]
    return match


def _mode_runs(runs: pa.Table, mode: str, n: int | None = None, *, ok: bool = False) -> pa.Table:
    mask = pc.equal(runs["mode"], _MODE[mode])
    if n is not None:
        mask = pc.and_(mask, pc.equal(runs["n_teammates"], n))
    if ok:
        mask = pc.and_(mask, runs["success"])
    return runs.filter(mask)


def _per_run_mean(per_run: pa.Table, column: str, runs: pa.Table) -> float:
    """Mean of a per-run count over ``runs``, runs without a row counting zero."""
    joined = runs.select(["run_dir"]).join(per_run, "run_dir", join_type="left outer")
    return float(pc.sum(pc.fill_null(joined[column], 0)).as_py()) / runs.num_rows


def test_every_figure_of_the_paper_is_in_the_json(findings: dict[str, Any]) -> None:
    for metric in _TEAM_METRICS:
        for mode in _MODE:
            sizes = range(2, 6) if metric == "straggler_gap_s" else range(1, 6)
            for n in (*sizes, None):
                figure = _team(findings, metric, mode, n)
                assert math.isfinite(figure["value"]) and figure["count"] > 0
                assert figure["source"]  # every figure says what it is
    for mode in ("all", *_MODE):
        for metric in ("speedup_median", "speedup_mean", "kruskal_h"):
            assert math.isfinite(_stat(findings, metric, mode)["value"])
    assert {f["model"] for f in findings["latency"]} == {
        "anthropic_claude-sonnet-4-6",
        "google_gemini-3-flash-preview",
        "openai_gpt-5.2",
    }
    assert findings["runs"] == 1413


def test_kruskal_wallis_per_mode_and_pooled(findings: dict[str, Any], paper: PaperData) -> None:
    pre = _stat(findings, "kruskal_h", "preassigned")
    assert pre["value"] == pytest.approx(62.2, abs=0.05)
    assert pre["quoted"] == pytest.approx(61.4)  # the paper's, 0.8 below the recomputation
    assert pre["p_value"] < 1e-10
    assert _stat(findings, "kruskal_h", "all")["value"] == pytest.approx(62.9, abs=0.05)
    # decentralized: scipy directly over the per-run speedups grouped by p
    team = [r for r in run_speedups(paper.runs) if r.mode == "decentralized"]
    groups = [[r.speedup for r in team if r.p_label == p] for p in ("p02", "p05", "p09")]
    dec = _stat(findings, "kruskal_h", "decentralized")
    assert dec["value"] == pytest.approx(float(stats.kruskal(*groups).statistic), rel=1e-9)
    assert dec["quoted"] is None


def test_speedup_medians_beside_the_papers(findings: dict[str, Any]) -> None:
    for mode, quoted in (("decentralized", 0.88), ("preassigned", 1.36)):
        figure = _stat(findings, "speedup_median", mode)
        assert figure["quoted"] == quoted
        assert figure["value"] == pytest.approx(quoted, abs=0.02)
    mean = _stat(findings, "speedup_mean", "all")
    assert mean["quoted"] == 2.19
    assert mean["value"] < 1.5  # the quoted mean is not what the released runs give


def test_tokens_per_team_size_match_a_group_by(findings: dict[str, Any], runs: pa.Table) -> None:
    ok = runs.filter(runs["success"])
    total = pc.add(ok["total_input_tokens"], ok["total_output_tokens"])
    means = (
        ok.append_column("tokens", total)
        .group_by(["mode", "n_teammates"])
        .aggregate([("tokens", "mean")])
        .to_pylist()
    )
    by_key = {(r["mode"], r["n_teammates"]): r["tokens_mean"] for r in means}
    for mode, raw in _MODE.items():
        for n in range(1, 6):
            assert _team(findings, "tokens", mode, n)["value"] == pytest.approx(by_key[raw, n])
    # the paper's growth for decentralized teams, about 181k at n = 1 to 581k at n = 5
    for n, quoted in ((1, 181_000), (5, 581_000)):
        figure = _team(findings, "tokens", "decentralized", n)
        assert figure["quoted"] == quoted
        assert figure["value"] == pytest.approx(quoted, rel=0.005)


def test_success_rates_and_concurrent_writes(findings: dict[str, Any], runs: pa.Table) -> None:
    for mode in _MODE:
        mine = _mode_runs(runs, mode)
        rate = pc.mean(pc.cast(mine["success"], pa.float64())).as_py()
        assert _team(findings, "success_rate", mode, None)["value"] == pytest.approx(rate)
        five = _mode_runs(runs, mode, 5)
        writes = pc.mean(five["concurrent_writes"]).as_py()
        assert _team(findings, "concurrent_writes", mode, 5)["value"] == pytest.approx(writes)
    # decentralized teams fail more and collide more as they grow; pre-assigned ones do not
    assert (
        _team(findings, "success_rate", "decentralized", 5)["value"]
        < _team(findings, "success_rate", "preassigned", 5)["value"]
    )


def test_event_counts_match_joins(
    findings: dict[str, Any], runs: pa.Table, events: pa.Table
) -> None:
    replies = events.filter(pc.equal(events["type"], "agent_reply"))
    messages = replies.group_by("run_dir").aggregate([("type", "count")])
    ok = _mode_runs(runs, "preassigned", 3, ok=True)
    got = _team(findings, "messages", "preassigned", 3)["value"]
    assert got == pytest.approx(_per_run_mean(messages, "type_count", ok))

    failed = events.filter(
        pc.and_(
            pc.equal(events["type"], "run_tests"),
            pc.is_in(events["returncode"], pa.array([1.0, 2.0, 3.0])),
        )
    )
    failures = failed.group_by("run_dir").aggregate([("type", "count")])
    dec = _mode_runs(runs, "decentralized")
    got = _team(findings, "test_failures", "decentralized", None)["value"]
    assert got == pytest.approx(_per_run_mean(failures, "type_count", dec))

    edits = events.filter(pc.equal(events["type"], "edit_file")).select(
        ["run_dir", "path", "round"]
    )
    first = edits.group_by(["run_dir", "path"]).aggregate([("round", "min")])
    later = edits.join(first, ["run_dir", "path"]).filter(
        pc.greater(pc.field("round"), pc.field("round_min"))
    )
    rewrites = later.group_by("run_dir").aggregate([("path", "count")])
    got = _team(findings, "rewrites", "decentralized", None)["value"]
    assert got == pytest.approx(_per_run_mean(rewrites, "path_count", dec))

    def rounds(kind: str) -> pa.Table:
        mine = events.filter(pc.and_(pc.equal(events["type"], kind), pc.is_valid(events["round"])))
        return mine.group_by(["run_dir", "round"]).aggregate([("type", "count")])

    idle = rounds("agent_reply").join(
        rounds("complete_task"), ["run_dir", "round"], join_type="left anti"
    )
    per_run = idle.group_by("run_dir").aggregate([("round", "count")])
    pre = _mode_runs(runs, "preassigned")
    got = _team(findings, "idle_rounds", "preassigned", None)["value"]
    assert got == pytest.approx(_per_run_mean(per_run, "round_count", pre))


def _latencies(events: pa.Table) -> pa.Table:
    """Each reply's time since its round started, kept inside (0, 180) s as the notebook does."""
    starts = events.filter(pc.equal(events["type"], "round_start")).select(
        ["run_dir", "round", "ts"]
    )
    replies = events.filter(
        pc.and_(pc.equal(events["type"], "agent_reply"), pc.is_valid(events["round"]))
    ).select(["run_dir", "round", "ts"])
    joined = replies.join(starts, ["run_dir", "round"], right_suffix="_start")
    latency = pc.subtract(joined["ts"], joined["ts_start"])
    joined = joined.append_column("latency", latency)
    return joined.filter(pc.and_(pc.greater(latency, 0.0), pc.less(latency, 180.0)))


def test_straggler_gap_and_latency_fits(
    findings: dict[str, Any], runs: pa.Table, events: pa.Table
) -> None:
    timed = _latencies(events)
    per_round = timed.group_by(["run_dir", "round"]).aggregate(
        [("latency", "max"), ("latency", "mean"), ("latency", "count")]
    )
    per_round = per_round.filter(pc.greater_equal(per_round["latency_count"], 2))
    five = _mode_runs(runs, "preassigned", 5).select(["run_dir"])
    gaps = per_round.join(five, "run_dir", join_type="inner")
    gap = pc.mean(pc.subtract(gaps["latency_max"], gaps["latency_mean"])).as_py()
    figure = _team(findings, "straggler_gap_s", "preassigned", 5)
    assert figure["value"] == pytest.approx(gap)
    assert figure["count"] == gaps.num_rows

    ok = runs.filter(pc.and_(runs["success"], pc.equal(runs["mode"], "preassign_nolead")))
    gpt = ok.filter(pc.equal(ok["model_dir"], "openai_gpt-5.2")).select(["run_dir"])
    samples = timed.join(gpt, "run_dir", join_type="inner")["latency"].to_pylist()
    logs = [math.log(x) for x in samples]
    (fit,) = [f for f in findings["latency"] if f["model"] == "openai_gpt-5.2"]
    assert fit["calls"] == len(samples)
    assert fit["mu"] == pytest.approx(statistics.fmean(logs))
    assert fit["sigma"] == pytest.approx(statistics.pstdev(logs))
    assert fit["value"] == pytest.approx(math.exp(fit["mu"]))


def test_table_output_and_markdown(
    paper_dir: Path, paper: PaperData, log_events: list[dict[str, Any]]
) -> None:
    table = runner.invoke(study_app, ["paper", "--paper-data", str(paper_dir)])
    assert table.exit_code == 0, table.output
    assert "paper findings by team size" in table.output
    assert "181k (paper 181k)" in table.output
    assert "straggler_gap_s: " in table.output  # the legend, one line per definition
    # piped output is not wrapped: every row of the team-size table stays on one line
    rows = [line for line in table.output.splitlines() if "preassigned" in line]
    assert any(line.count("│") >= 8 for line in rows), rows
    lines = findings_markdown(paper_findings(paper))
    assert all("\n" not in line for line in lines)
    text = "\n".join(lines)
    for metric in (*_TEAM_METRICS, "kruskal_h", "speedup_median", "latency_fit"):
        assert f"`{metric}`" in text
    header = next(line for line in lines if line.startswith("| figure | mode | n=1"))
    assert header.count("|") == 9  # figure, mode, n = 1..5, all
