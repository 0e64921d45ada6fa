"""Prompt templates: what a dependent is asked, and what a template may not do."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from lmteams.errors import GraphError
from lmteams.jobs._graph import Subtask, TaskGraph
from lmteams.jobs._template import APPENDIX_HEADING, literal, render_prompt


def _job(combine: str, *, combine_deps: tuple[str, ...] = ("left", "right")) -> TaskGraph:
    return TaskGraph(
        name="essay",
        description="two halves and a whole",
        subtasks=(
            Subtask(id="left", title="Write the first half", prompt="About {{ job.name }}."),
            Subtask(id="right", title="Write the second half"),
            Subtask(id="whole", title="Combine", deps=combine_deps, prompt=combine),
        ),
    )


OUTPUTS = {"left": "LEFT-TEXT", "right": "RIGHT-TEXT", "unrelated": "NOT-A-DEP"}


def _render(graph: TaskGraph, task_id: str, outputs: dict[str, str] = OUTPUTS) -> str:
    return render_prompt(graph, graph.subtask(task_id), outputs)


# --- rendering -------------------------------------------------------------------------------


def test_explicit_template_places_its_dependencies_outputs() -> None:
    graph = _job("Join:\n{{ outputs['left'] }}\n---\n{{ outputs.right }}\n(for {{ task.id }})")
    assert _render(graph, "whole") == "Combine\nJoin:\nLEFT-TEXT\n---\nRIGHT-TEXT\n(for whole)"


def test_looping_over_deps_sees_them_in_deps_order_with_titles() -> None:
    loop = "{% for d in deps %}[{{ d.id }}|{{ d.title }}|{{ d.output }}]{% endfor %}"
    graph = _job(loop, combine_deps=("right", "left"))
    assert _render(graph, "whole") == (
        "Combine\n[right|Write the second half|RIGHT-TEXT][left|Write the first half|LEFT-TEXT]"
    )


def test_default_appendix_gives_dependents_their_dependencies_outputs() -> None:
    graph = _job("Merge the halves into one essay.")
    assert _render(graph, "whole") == (
        "Combine\nMerge the halves into one essay.\n\n"
        f"{APPENDIX_HEADING}\n"
        "- Write the first half (left):\nLEFT-TEXT\n"
        "- Write the second half (right):\nRIGHT-TEXT"
    )


def test_default_appendix_with_an_empty_template() -> None:
    graph = _job("")
    text = _render(graph, "whole")
    assert text.startswith(f"Combine\n{APPENDIX_HEADING}\n- Write the first half (left):")
    assert "LEFT-TEXT" in text
    assert "RIGHT-TEXT" in text


def test_only_dependencies_outputs_reach_a_prompt() -> None:
    graph = _job("{% for d in deps %}{{ d.output }}{% endfor %}")
    assert "NOT-A-DEP" not in _render(graph, "whole")
    assert "NOT-A-DEP" not in _render(_job("plain"), "whole")


def test_without_outputs_a_prompt_is_title_then_text() -> None:
    """The study's planning renders before anything ran: no appendix, deps render as ""."""
    assert _render(_job("Merge."), "whole", {}) == "Combine\nMerge."
    assert _render(_job("[{{ outputs['left'] }}]"), "whole", {}) == "Combine\n[]"
    assert _render(_job("x"), "left", {}) == "Write the first half\nAbout essay."
    assert _render(_job("x"), "right", {}) == "Write the second half"


def test_only_given_outputs_are_appended() -> None:
    text = _render(_job("Merge."), "whole", {"right": "R"})
    assert text == f"Combine\nMerge.\n\n{APPENDIX_HEADING}\n- Write the second half (right):\nR"


def test_outputs_are_not_re_rendered_as_templates() -> None:
    hostile = {"left": "{{ task.__class__ }}", "right": "{% raw %}"}
    text = _render(_job("{{ outputs.left }} {{ outputs.right }}"), "whole", hostile)
    assert text == "Combine\n{{ task.__class__ }} {% raw %}"


# --- the sandbox -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "template",
    [
        "{{ task.__class__ }}",
        "{{ deps[0].__class__.__mro__ }}",
        "{{ outputs['__class__'] }}",
        "{{ task|attr('__class__') }}",
        "{{ outputs._secret }}",
    ],
)
def test_private_attributes_are_refused_before_anything_runs(template: str) -> None:
    with pytest.raises(GraphError, match=r"subtask 'whole' prompt reads '_.*off limits"):
        _job(template)


def test_sandbox_refuses_what_the_checks_cannot_see() -> None:
    """A name built at render time gets past the static checks; the sandbox stops it."""
    graph = _job("{% set n = '__cla' ~ 'ss__' %}{{ task|attr(n) }}")
    with pytest.raises(GraphError, match=r"subtask 'whole' prompt did not render: .*unsafe"):
        _render(graph, "whole")


def test_templates_cannot_mutate_what_they_see() -> None:
    graph = _job("{{ outputs.clear() }}")
    with pytest.raises(GraphError, match=r"did not render: .*unsafe"):
        _render(graph, "whole")


def test_a_typo_at_render_time_is_an_error_not_an_empty_string() -> None:
    graph = _job("{% for d in deps %}{{ d.outptu }}{% endfor %}")
    with pytest.raises(GraphError, match=r"subtask 'whole' prompt did not render: .*outptu"):
        _render(graph, "whole")


# --- validation ------------------------------------------------------------------------------


def test_template_naming_a_non_dependency_is_refused() -> None:
    for template in ("{{ outputs['left'] }}", "{{ outputs.left }}", "{{ outputs.get('left') }}"):
        with pytest.raises(
            GraphError,
            match=r"subtask 'whole' prompt uses the output of 'left', which is not one of "
            r"its deps \(right\)",
        ):
            _job(template, combine_deps=("right",))


def test_dict_methods_on_outputs_are_not_taken_for_dependency_ids() -> None:
    graph = _job("{% for k, v in outputs.items() %}{{ k }}={{ v }};{% endfor %}")
    assert _render(graph, "whole") == "Combine\nleft=LEFT-TEXT;right=RIGHT-TEXT;"


def test_unknown_variable_and_unknown_fields_are_refused() -> None:
    with pytest.raises(GraphError, match=r"prompt uses unknown variable\(s\) output, tsk"):
        _job("{{ output['left'] }} {{ tsk.id }}")
    with pytest.raises(GraphError, match=r"task has no field 'name' \(it has id, title\)"):
        _job("{{ task.name }}")
    with pytest.raises(GraphError, match=r"job has no field 'title'"):
        _job("{{ job['title'] }}")


def test_loop_variables_and_jinja_globals_are_not_unknown() -> None:
    graph = _job("{% for i in range(2) %}{% set x = i %}{{ x }}{% endfor %}{{ task.title }}")
    assert _render(graph, "whole").startswith("Combine\n01Combine")


def test_syntax_error_names_the_subtask_and_line() -> None:
    with pytest.raises(
        GraphError,
        match=r"task graph 'essay': subtask 'whole' prompt: template syntax error on "
        r"line 2",
    ):
        _job("fine\n{{ outputs['left' }}")


# --- plain text ------------------------------------------------------------------------------


@given(st.text(max_size=60))
@example("{{ x }}\r\n{% raw %}\r{#")
@settings(max_examples=200, deadline=None)
def test_literal_renders_any_text_to_itself(text: str) -> None:
    graph = TaskGraph(name="g", subtasks=(Subtask(id="a", title="T", prompt=literal(text)),))
    assert render_prompt(graph, graph.subtasks[0], {}) == f"T\n{text}".strip()


def test_literal_keeps_plain_text_as_it_is() -> None:
    assert literal("no braces {here} at all") == "no braces {here} at all"
    assert literal("{{ x }}") != "{{ x }}"
