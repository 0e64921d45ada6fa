"""Job files: a graph file with a ``[job]`` table loads as a job; a bad one is a clear error.

Every error names the file and the problem, so a user can fix a job before anything runs.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import msgspec
import pytest

from lmteams.errors import GraphError
from lmteams.jobs._graph import TaskGraph
from lmteams.jobs._graphio import load_graph, paper_graphs
from lmteams.jobs._messages import JobRequest, JobSpec, SubmitJob
from lmteams.jobs._options import JobOptions
from lmteams.jobs._template import APPENDIX_HEADING, render_prompt
from lmteams.study import packaged_paper_data

GOOD = """\
name = "report"
description = "two findings and a summary"
final = "summary"

[job]
architecture = "decentralized"
scheduling = "rounds"
agents = 3
lease_s = 5.0

[[subtasks]]
id = "facts"
title = "List the facts"
prompt = "Facts about {{ job.name }}."

[[subtasks]]
id = "risks"
title = "List the risks"
roles = ["analyst"]
max_tokens = 80

[[subtasks]]
id = "summary"
title = "Summarise"
deps = ["facts", "risks"]
strategy = "vote"
system = "You are terse."
prompt = '''
Facts: {{ outputs.facts }}
Risks: {{ outputs["risks"] }}
'''
"""


def _write(folder: Path, text: str, name: str = "job.toml") -> Path:
    file = folder / name
    file.write_text(textwrap.dedent(text))
    return file


def test_a_job_file_loads_with_its_options_and_fields(tmp_path: Path) -> None:
    graph = load_graph(_write(tmp_path, GOOD))
    assert graph.job == JobOptions(
        architecture="decentralized", scheduling="rounds", agents=3, lease_s=5.0
    )
    assert graph.final == "summary"
    assert graph.result_ids == ("summary",)
    risks, summary = graph.subtask("risks"), graph.subtask("summary")
    assert (risks.roles, risks.token_limit) == (("analyst",), 80)
    assert (summary.strategy, summary.system) == ("vote", "You are terse.")
    prompt = render_prompt(graph, summary, {"facts": "sky is blue", "risks": "rain"})
    assert prompt == "Summarise\nFacts: sky is blue\nRisks: rain"


def test_old_graph_files_without_job_fields_still_load(tmp_path: Path) -> None:
    graph = load_graph(
        _write(tmp_path, 'name = "old"\n[[subtasks]]\nid = "a"\ntitle = "A"\nprompt = "p"\n')
    )
    assert graph.job == JobOptions()
    assert (graph.final, graph.subtasks[0].strategy, graph.subtasks[0].roles) == ("", "", ())


_SUBTASKS = """
[[subtasks]]
id = "a"
title = "A"

[[subtasks]]
id = "b"
title = "B"
"""


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ('deps = ["c"]', r"dependency cycle: c -> c"),
        ('deps = ["nope"]', r"subtask 'c' depends on unknown subtask 'nope'"),
        (
            'deps = ["a"]\nprompt = "{{ outputs[\'b\'] }}"',
            r"subtask 'c' prompt uses the output of 'b', which is not one of its deps \(a\)",
        ),
        ('prompt = "{{ result }}"', r"subtask 'c' prompt uses unknown variable\(s\) result"),
        ('prompt = "{% for x in deps %}"', r"subtask 'c' prompt: template syntax error on line 1"),
        ('prompt = "{{ task.__init__ }}"', r"subtask 'c' prompt reads '__init__'"),
        ("max_tokens = -5", r"subtask 'c' has max_tokens=-5"),
        ('depends = ["a"]', r"depends"),
    ],
)
def test_bad_subtasks_are_named(tmp_path: Path, extra: str, problem: str) -> None:
    file = _write(
        tmp_path, f'name = "bad"\n{_SUBTASKS}\n[[subtasks]]\nid = "c"\ntitle = "C"\n{extra}\n'
    )
    with pytest.raises(GraphError, match=problem) as info:
        load_graph(file)
    assert str(file) in str(info.value)


@pytest.mark.parametrize(
    ("before", "after", "problem"),
    [
        (
            '[job]\narchitecture = "ring"',
            "",
            r"'ring' - at `\$\.job\.architecture` \(use one of: centralized, decentralized\)",
        ),
        (
            '[job]\nscheduling = "lockstep"',
            "",
            r"\$\.job\.scheduling` \(use one of: async, rounds\)",
        ),
        ("[job]\nlease_s = 0", "", r">=\s*0\.1.*\$\.job\.lease_s"),
        ("[job]\nagents = -1", "", r">=\s*0.*\$\.job\.agents"),
        ("[job]\nagnets = 2", "", r"unknown field `agnets`.*\$\.job"),
        ('final = "zz"', "", r"final = 'zz' is not a subtask id"),
        ("", '[[subtasks]]\nid = "a"\ntitle = "again"', r"duplicate subtask id 'a'"),
    ],
)
def test_bad_job_options_and_graph_fields_are_named(
    tmp_path: Path, before: str, after: str, problem: str
) -> None:
    file = _write(tmp_path, f'name = "bad"\n{before}\n{_SUBTASKS}\n{after}\n')
    with pytest.raises(GraphError, match=problem) as info:
        load_graph(file)
    assert str(file) in str(info.value)


def test_bad_json_job_on_the_wire_is_refused_too() -> None:
    """A plain NATS client's SubmitJob is decoded through the same validation."""
    body = {
        "type": "submit-job",
        "job": {"id": "j1", "graph": {"name": "g", "subtasks": [{"id": "a", "title": "A"}]}},
    }
    good = msgspec.json.decode(msgspec.json.encode(body), type=JobRequest)
    assert isinstance(good, SubmitJob)
    body["job"]["graph"]["subtasks"][0]["prompt"] = "{{ outputs.zz }}"  # type: ignore[index]
    with pytest.raises(GraphError, match=r"uses the output of 'zz'"):
        msgspec.json.decode(msgspec.json.encode(body), type=JobRequest)


# --- the paper's nine task lists as jobs -------------------------------------------------------


@pytest.fixture(scope="module")
def paper_jobs() -> dict[str, TaskGraph]:
    return paper_graphs(packaged_paper_data())


def test_the_papers_nine_task_lists_load_as_jobs(paper_jobs: dict[str, TaskGraph]) -> None:
    assert len(paper_jobs) == 9
    for key, graph in paper_jobs.items():
        spec = JobSpec(id=key.replace("/", "-"), graph=graph)
        wire = msgspec.json.encode(SubmitJob(job=spec))
        assert msgspec.json.decode(wire, type=JobRequest) == SubmitJob(job=spec), key


def test_paper_files_loaded_directly_are_the_same_jobs(paper_jobs: dict[str, TaskGraph]) -> None:
    tasks = Path(packaged_paper_data()) / "tasks"
    for key, graph in paper_jobs.items():
        domain, level = key.split("/")
        assert load_graph(tasks / f"amdahl_{domain}" / f"{level}.json") == graph


def test_every_paper_subtask_sees_its_dependencies_outputs(
    paper_jobs: dict[str, TaskGraph],
) -> None:
    for graph in paper_jobs.values():
        outputs = {s.id: f"<output of {s.id}>" for s in graph.subtasks}
        for s in graph.subtasks:
            prompt = render_prompt(graph, s, outputs)
            assert prompt.startswith(s.title), (graph.name, s.id)
            if s.prompt:
                assert s.prompt.strip() in prompt  # descriptions are plain text, kept verbatim
            assert all(f"({d}):\n<output of {d}>" in prompt for d in s.deps), (graph.name, s.id)
            assert (APPENDIX_HEADING in prompt) == bool(s.deps), (graph.name, s.id)
