"""Task graphs: validation messages, structure (order, critical path, levels), files.

Moved from the study with the graphs themselves; the job fields are tested here too, and
job files (the ``[job]`` table, the paper's lists as jobs) in ``test_jobfile``.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmteams.errors import ConfigError, GraphError
from lmteams.jobs._graph import Subtask, TaskGraph
from lmteams.jobs._graphio import dumps_toml, load_graph, save_graph
from lmteams.jobs._options import JobOptions


def _t(task_id: str, *deps: str, work: int = 300) -> Subtask:
    return Subtask(id=task_id, title=f"do {task_id}", deps=deps, work_tokens=work)


def _g(*subtasks: Subtask) -> TaskGraph:
    return TaskGraph(name="g", subtasks=subtasks)


# --- validation --------------------------------------------------------------------------------


def test_cycle_is_reported_with_its_path() -> None:
    with pytest.raises(GraphError, match=r"cycle: b -> d -> c -> b") as info:
        _g(_t("a"), _t("b", "a", "d"), _t("c", "b"), _t("d", "c"))
    assert "task graph 'g'" in str(info.value)


def test_self_dependency_is_a_cycle() -> None:
    with pytest.raises(GraphError, match=r"cycle: a -> a"):
        _g(_t("a", "a"))


def test_unknown_dependency_names_both_ids() -> None:
    with pytest.raises(GraphError, match=r"subtask 'b' depends on unknown subtask 'zz'"):
        _g(_t("a"), _t("b", "a", "zz"))


def test_duplicate_id_names_the_id_and_positions() -> None:
    with pytest.raises(GraphError, match=r"duplicate subtask id 'a' \(subtasks #1 and #3\)"):
        _g(_t("a"), _t("b"), _t("a"))


def test_empty_graph_and_bad_work_and_empty_id() -> None:
    with pytest.raises(GraphError, match="has no subtasks"):
        _g()
    with pytest.raises(GraphError, match=r"subtask 'a' has work_tokens=0; work must be a positive"):
        _g(_t("a", work=0))
    with pytest.raises(GraphError, match="#1 has an empty id"):
        _g(_t(""))


def test_negative_max_tokens_and_unknown_final_are_named() -> None:
    with pytest.raises(GraphError, match=r"subtask 'a' has max_tokens=-1; use a positive"):
        _g(Subtask(id="a", title="A", max_tokens=-1))
    with pytest.raises(GraphError, match=r"task graph 'g': final = 'zz' is not a subtask id"):
        TaskGraph(name="g", subtasks=(_t("a"),), final="zz")


def test_graph_error_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        _g()


def test_decoding_validates_too(tmp_path: Path) -> None:
    bad = {"name": "x", "subtasks": [{"id": "a", "title": "A", "deps": ["a"]}]}
    file = tmp_path / "bad.json"
    file.write_text(json.dumps(bad))
    with pytest.raises(GraphError, match=r"bad\.json: task graph 'x' has a dependency cycle"):
        load_graph(file)


# --- structure ---------------------------------------------------------------------------------


DIAMOND = _g(
    _t("top"),
    _t("left", "top", work=100),
    _t("right", "top", work=900),
    _t("bottom", "left", "right"),
    _t("solo"),
)


def test_sizes_and_parallel_fraction() -> None:
    assert DIAMOND.work == 300 + 100 + 900 + 300 + 300
    assert DIAMOND.cp == 3
    assert DIAMOND.parallel_fraction == pytest.approx((5 - 3) / 5)
    assert DIAMOND.span == 300 + 900 + 300


def test_critical_path_by_tasks_and_by_tokens() -> None:
    assert DIAMOND.critical_path() == ("top", "left", "bottom")  # tie: the one written first
    assert DIAMOND.critical_path(weighted=True) == ("top", "right", "bottom")


def test_topological_order_keeps_written_order_among_ready_tasks() -> None:
    assert DIAMOND.topological_order() == ("top", "left", "right", "bottom", "solo")


def test_levels_and_ready_sets() -> None:
    assert DIAMOND.levels() == (("top", "solo"), ("left", "right"), ("bottom",))
    assert DIAMOND.ready(()) == ("top", "solo")
    assert DIAMOND.ready({"top"}) == ("left", "right", "solo")
    assert DIAMOND.ready({"top", "left"}) == ("right", "solo")
    assert DIAMOND.ready(DIAMOND.ids) == ()
    with pytest.raises(GraphError, match="nope"):
        DIAMOND.ready({"nope"})


def test_sinks_are_the_result_unless_a_final_subtask_is_named() -> None:
    assert DIAMOND.sinks == ("bottom", "solo")
    assert DIAMOND.result_ids == ("bottom", "solo")
    named = msgspec.structs.replace(DIAMOND, final="left")
    assert named.result_ids == ("left",)


def test_token_limit_defaults_to_the_work_estimate() -> None:
    assert _t("a", work=120).token_limit == 120
    assert Subtask(id="a", title="A", work_tokens=120, max_tokens=40).token_limit == 40


def test_long_chains_need_no_recursion() -> None:
    n = 5000
    chain = _g(*(_t(f"t{i}", *((f"t{i - 1}",) if i else ())) for i in range(n)))
    assert chain.cp == n
    assert len(chain.levels()) == n


@st.composite
def dags(draw: st.DrawFn) -> TaskGraph:
    n = draw(st.integers(1, 12))
    subtasks = []
    for i in range(n):
        deps = draw(st.sets(st.integers(0, i - 1), max_size=3)) if i else set()
        work = draw(st.integers(1, 1000))
        subtasks.append(_t(f"t{i}", *(f"t{d}" for d in sorted(deps)), work=work))
    return TaskGraph(name="random", subtasks=tuple(subtasks))


@given(dags())
@settings(max_examples=150, deadline=None)
def test_structure_is_consistent(graph: TaskGraph) -> None:
    order = graph.topological_order()
    assert sorted(order) == sorted(graph.ids)
    position = {t: i for i, t in enumerate(order)}
    for s in graph.subtasks:
        assert all(position[d] < position[s.id] for d in s.deps)
    for path in (graph.critical_path(), graph.critical_path(weighted=True)):
        for before, after in itertools.pairwise(path):
            assert before in graph.subtask(after).deps
        assert graph.subtask(path[0]).deps == ()
    assert graph.cp == len(graph.levels())
    assert graph.span <= graph.work
    assert 0.0 <= graph.parallel_fraction < 1.0


# --- files -------------------------------------------------------------------------------------


def test_toml_written_by_hand_reads_back(tmp_path: Path) -> None:
    file = tmp_path / "g.toml"
    file.write_text(
        'name = "hand"\ndescription = "written by a person"\n\n'
        '[[subtasks]]\nid = "a"\ntitle = "first"\n\n'
        '[[subtasks]]\nid = "b"\ntitle = "second"\ndeps = ["a"]\nwork_tokens = 50\n'
    )
    graph = load_graph(file)
    assert graph.ids == ("a", "b")
    assert graph.subtask("a").work_tokens == 300
    assert graph.subtask("b").deps == ("a",)


def test_typos_and_bad_files_are_graph_errors(tmp_path: Path) -> None:
    typo = tmp_path / "typo.toml"
    typo.write_text('name = "x"\n[[subtasks]]\nid = "a"\ntitle = "A"\ndepends = ["b"]\n')
    with pytest.raises(GraphError, match=r"typo\.toml.*depends"):
        load_graph(typo)
    broken = tmp_path / "broken.toml"
    broken.write_text("name = \n")
    with pytest.raises(GraphError, match=r"invalid task graph .*broken\.toml"):
        load_graph(broken)
    with pytest.raises(GraphError, match=r"cannot read task graph .*missing\.json"):
        load_graph(tmp_path / "missing.json")
    other = tmp_path / "g.yaml"
    other.write_text("")
    with pytest.raises(GraphError, match=r"must end in \.toml or \.json"):
        load_graph(other)
    with pytest.raises(GraphError, match=r"must end in \.toml or \.json"):
        save_graph(DIAMOND, tmp_path / "g.txt")


_text = st.text(st.characters(codec="utf-8"), max_size=30)
_plain = st.text(st.characters(codec="utf-8", exclude_characters="{"), max_size=30)  # no template
_options = st.builds(
    JobOptions,
    architecture=st.sampled_from(["centralized", "decentralized"]),
    scheduling=st.sampled_from(["async", "rounds"]),
    agents=st.integers(0, 9),
    backups=st.booleans(),
    lease_s=st.floats(0.1, 86_400),
    choose=st.sampled_from(["first", "model"]),
    timeout_s=st.floats(0.001, 1e9),
)


@st.composite
def job_graphs(draw: st.DrawFn) -> TaskGraph:
    """Any text in every text field (plain prompts: templates are tested apart)."""
    return TaskGraph(
        name=draw(_text),
        description=draw(_text),
        subtasks=(
            Subtask(
                id="a",
                title=draw(_text),
                prompt=draw(_plain),
                work_tokens=7,
                system=draw(_text),
                strategy=draw(_text),
                roles=tuple(draw(st.lists(_text, max_size=3))),
                max_tokens=draw(st.integers(0, 10_000)),
            ),
            Subtask(id='b "quoted"', title="t", deps=("a",), prompt="{{ outputs['a'] }}!"),
        ),
        final=draw(st.sampled_from(["", "a"])),
        job=draw(_options),
    )


@given(job_graphs())
@settings(max_examples=60, deadline=None)
def test_toml_and_json_round_trip_any_text(
    tmp_path_factory: pytest.TempPathFactory, graph: TaskGraph
) -> None:
    folder = tmp_path_factory.mktemp("rt")
    for suffix in (".toml", ".json"):
        assert load_graph(save_graph(graph, folder / f"g{suffix}")) == graph


def test_toml_text_is_readable() -> None:
    text = dumps_toml(DIAMOND)
    assert '[[subtasks]]\nid = "left"\ntitle = "do left"\ndeps = ["top"]\nwork_tokens = 100' in text
    assert "[job]" not in text
    assert "max_tokens" not in text  # fields left at their defaults are not written


def test_toml_writes_job_fields_only_when_set() -> None:
    graph = TaskGraph(
        name="j",
        final="b",
        job=JobOptions(architecture="decentralized", agents=3),
        subtasks=(
            Subtask(id="a", title="A", roles=("coder",), max_tokens=64),
            Subtask(id="b", title="B", deps=("a",), strategy="vote", system="Be brief."),
        ),
    )
    text = dumps_toml(graph)
    assert 'final = "b"\n\n[job]\narchitecture = "decentralized"\nagents = 3\n' in text
    assert 'work_tokens = 300\nmax_tokens = 64\nroles = ["coder"]\n' in text
    assert 'system = "Be brief."\nstrategy = "vote"' in text
    assert msgspec.json.decode(msgspec.json.encode(DIAMOND), type=TaskGraph) == DIAMOND
