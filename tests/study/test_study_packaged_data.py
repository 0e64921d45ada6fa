"""The paper's data ships with lmteams: a bare copy of the repository finds it, pip gets it.

The copy is what ``git clone`` would give (tracked files plus new ones git does not ignore),
put in a temporary folder with nothing beside it, and run with the environment's Python but
the copy's ``src`` first on the path, so a data folder that lives only outside the package
(beside the checkout) or only in this checkout cannot make the test pass.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from lmteams.study import load_graph, packaged_paper_data, paper_graphs

REPO = Path(__file__).resolve().parents[2]


def _clone_like_copy(target: Path) -> Path:
    """Copy what a clone of the working tree would hold into ``target``."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():  # a file deleted but not yet committed is listed too
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def _run_in(copy: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in {"LMTEAMS_PAPER_DATA", "PYTHONPATH"}}
    env["PYTHONPATH"] = str(copy / "src")
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )


def test_a_bare_copy_of_the_repository_finds_the_papers_data(tmp_path: Path) -> None:
    copy = _clone_like_copy(tmp_path / "clone")
    away = tmp_path / "elsewhere"  # nothing beside it but the copy
    away.mkdir()
    probe = (
        "import json, lmteams\n"
        "from lmteams.study import paper_data_dir, read_runs, paper_graphs\n"
        "root = paper_data_dir()\n"
        "print(json.dumps({'module': lmteams.__file__, 'root': str(root),\n"
        "    'runs': len(read_runs()), 'graphs': sorted(paper_graphs(root))}))\n"
    )
    found = _run_in(copy, away, "-c", probe)
    assert found.returncode == 0, found.stderr
    facts = json.loads(found.stdout.strip().splitlines()[-1])
    assert Path(facts["module"]).is_relative_to(copy / "src")  # the copy, not this checkout
    assert Path(facts["root"]) == (copy / "src/lmteams/study/paperdata").resolve()
    assert facts["runs"] == 1413 and len(facts["graphs"]) == 9
    # and the verb a user runs first
    paper = _run_in(copy, away, "-m", "lmteams", "study", "paper", "--json")
    assert paper.returncode == 0, paper.stderr
    assert json.loads(paper.stdout)["summary"]["cells"]["count"] == 211


def test_every_packaged_data_file_is_in_the_package_data_globs() -> None:
    """What ``pip install`` copies: setuptools' package-data globs, relative to ``lmteams``."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    globs = config["tool"]["setuptools"]["package-data"]["lmteams"]
    package = REPO / "src" / "lmteams"
    shipped = {p for g in globs for p in package.glob(g)}
    files = {p for p in packaged_paper_data().rglob("*") if p.is_file()}
    assert len(files) >= 13  # 2 parquet files, 9 task lists, README, LICENSE
    assert files <= shipped, sorted(str(f.relative_to(package)) for f in files - shipped)


def test_a_copied_paper_task_list_loads_as_a_graph(tmp_path: Path) -> None:
    source = packaged_paper_data() / "tasks" / "amdahl_svgutils" / "p05.json"
    copied = shutil.copy(source, tmp_path / "x.json")
    graph = load_graph(copied)
    reference = paper_graphs(packaged_paper_data())["svgutils/p05"]
    assert graph.name == "x"
    assert graph.subtasks == reference.subtasks and graph.cp == 10
    assert graph.description == reference.description
