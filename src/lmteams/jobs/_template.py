"""Prompt templates: how a subtask's prompt uses what its dependencies produced.

A subtask's ``prompt`` is a jinja2 template (a language people already write), rendered in
jinja2's immutable sandbox with strict undefined names, because job files come from users
and a template must neither reach Python internals nor print an empty string where a typo
was. A template sees:

- ``task``: ``.id``, ``.title`` of the subtask itself;
- ``job``: ``.name``, ``.description`` of the graph;
- ``deps``: the dependencies in the subtask's ``deps`` order, each with ``.id``, ``.title``
  and ``.output``;
- ``outputs``: dependency id -> output.

A subtask with dependencies whose template mentions neither ``deps`` nor ``outputs`` gets its
dependencies' outputs appended in a fixed plain form, so a dependent always sees what its
dependencies produced (the study's old scheduler threw them away). An output that is not
given (planning, token estimates) renders as "" and is left out of that appendix.

What can be checked before anything runs is checked by :func:`check_templates`, on the
parsed template rather than by rendering it: syntax, unknown variables, ``outputs['x']``
naming a non-dependency, fields ``task`` and ``job`` lack, and names starting with ``_``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import jinja2
import jinja2.meta
from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from lmteams.errors import GraphError

if TYPE_CHECKING:
    from lmteams.jobs._graph import Subtask, TaskGraph

__all__ = ("APPENDIX_HEADING", "check_templates", "literal", "render_prompt")

APPENDIX_HEADING: Final = "Results of the subtasks this one builds on:"
"""Heads the outputs appended to a prompt whose template does not place them itself."""

_ENV: Final = ImmutableSandboxedEnvironment(
    undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=False
)
_CONTEXT: Final = frozenset({"task", "job", "deps", "outputs"})
_FIELDS: Final = {"task": ("id", "title"), "job": ("name", "description")}
_DICT_METHODS: Final = frozenset(name for name in dir(dict) if not name.startswith("_"))
_DELIMITERS: Final = ("{{", "{%", "{#")


@dataclass(frozen=True, slots=True)
class _Task:
    id: str
    title: str


@dataclass(frozen=True, slots=True)
class _Job:
    name: str
    description: str


@dataclass(frozen=True, slots=True)
class _Dep:
    id: str
    title: str
    output: str


@dataclass(frozen=True, slots=True)
class _Compiled:
    """One template source, parsed and compiled once, with what the checks need of it."""

    template: jinja2.Template | None  # None: plain text, rendered as itself
    variables: frozenset[str]  # names the template reads from its context
    outputs: tuple[str, ...]  # ids named as outputs['x'], outputs.x or outputs.get('x')
    fields: tuple[tuple[str, str], ...]  # (task|job, field) read
    private: tuple[str, ...]  # attribute or key names starting with "_"

    @property
    def places_outputs(self) -> bool:
        return bool(self.variables & {"deps", "outputs"})


_PLAIN: Final = _Compiled(None, frozenset(), (), (), ())


def _const_str(node: nodes.Node) -> str | None:
    if isinstance(node, nodes.Const) and isinstance(node.value, str):
        return node.value
    return None


def _read(node: nodes.Node) -> tuple[str, str | None]:
    """(the name read from, the attribute or constant key) of ``x.attr`` / ``x['key']``."""
    if isinstance(node, nodes.Getattr):
        key: str | None = node.attr
    elif isinstance(node, nodes.Getitem):
        key = _const_str(node.arg)
    else:
        return "", None
    owner = node.node.name if isinstance(node.node, nodes.Name) else ""
    return owner, key


@functools.lru_cache(maxsize=1024)
def _compile(source: str) -> _Compiled:
    """Parse and compile ``source``; raises jinja2's ``TemplateSyntaxError``."""
    if not any(d in source for d in _DELIMITERS):
        return _PLAIN  # every jinja2 construct starts with one of them: nothing to compile
    ast = _ENV.parse(source)
    named: list[str] = []
    fields: list[tuple[str, str]] = []
    private: list[str] = []
    for node in ast.find_all((nodes.Getattr, nodes.Getitem)):
        owner, key = _read(node)
        if key is None:
            continue
        if key.startswith("_"):
            private.append(key)
        if owner == "outputs" and not (isinstance(node, nodes.Getattr) and key in _DICT_METHODS):
            named.append(key)
        elif owner in _FIELDS:
            fields.append((owner, key))
    for call in ast.find_all(nodes.Call):
        if isinstance(call.node, nodes.Getattr) and _read(call.node) == ("outputs", "get"):
            key = _const_str(call.args[0]) if call.args else None
            if key is not None:
                named.append(key)
    for flt in ast.find_all(nodes.Filter):
        key = _const_str(flt.args[0]) if flt.name == "attr" and flt.args else None
        if key is not None and key.startswith("_"):
            private.append(key)
    return _Compiled(
        template=_ENV.from_string(ast),
        variables=frozenset(jinja2.meta.find_undeclared_variables(ast)),
        outputs=tuple(dict.fromkeys(named)),
        fields=tuple(dict.fromkeys(fields)),
        private=tuple(dict.fromkeys(private)),
    )


def _compiled(graph: TaskGraph, subtask: Subtask) -> _Compiled:
    try:
        return _compile(subtask.prompt)
    except jinja2.TemplateSyntaxError as exc:
        raise GraphError(
            f"{_where(graph, subtask)}: template syntax error on line {exc.lineno}: {exc.message}"
        ) from exc


def _where(graph: TaskGraph, subtask: Subtask) -> str:
    return f"task graph {graph.name!r}: subtask {subtask.id!r} prompt"


def check_templates(graph: TaskGraph) -> None:
    """Raise :class:`GraphError` for the first template that cannot render as written."""
    allowed = _CONTEXT | _ENV.globals.keys()
    for s in graph.subtasks:
        compiled = _compiled(graph, s)
        where = _where(graph, s)
        unknown = sorted(compiled.variables - allowed)
        if unknown:
            raise GraphError(
                f"{where} uses unknown variable(s) {', '.join(unknown)}; "
                "a template sees task, job, deps and outputs"
            )
        if compiled.private:
            raise GraphError(
                f"{where} reads {compiled.private[0]!r}: names starting with '_' are "
                "off limits in templates"
            )
        for owner, key in compiled.fields:
            if key not in _FIELDS[owner]:
                raise GraphError(
                    f"{where}: {owner} has no field {key!r} (it has {', '.join(_FIELDS[owner])})"
                )
        for dep in compiled.outputs:
            if dep not in s.deps:
                deps = ", ".join(s.deps) or "none"
                raise GraphError(
                    f"{where} uses the output of {dep!r}, which is not one of its deps ({deps})"
                )


def render_prompt(graph: TaskGraph, subtask: Subtask, outputs: Mapping[str, str]) -> str:
    """What an agent is asked: the subtask's title, then its rendered template.

    ``outputs`` may hold any subtasks' outputs; the template sees its dependencies' only.
    """
    compiled = _compiled(graph, subtask)
    deps = tuple(dict.fromkeys(subtask.deps))
    given = {d: outputs[d] for d in deps if d in outputs}
    if compiled.template is None:
        text = subtask.prompt
    else:
        context = {
            "task": _Task(subtask.id, subtask.title),
            "job": _Job(graph.name, graph.description),
            "deps": [_Dep(d, graph.subtask(d).title, given.get(d, "")) for d in deps],
            "outputs": {d: given.get(d, "") for d in deps},
        }
        try:
            text = compiled.template.render(context)
        except Exception as exc:  # a user's template: any failure is theirs, named as such
            raise GraphError(f"{_where(graph, subtask)} did not render: {exc}") from exc
    if given and not compiled.places_outputs:
        results = "".join(
            f"\n- {graph.subtask(d).title} ({d}):\n{output}" for d, output in given.items()
        )
        head = f"{text.rstrip()}\n\n" if text.strip() else ""
        text = f"{head}{APPENDIX_HEADING}{results}"
    return f"{subtask.title}\n{text}".strip()


def literal(text: str) -> str:
    """A template that renders to ``text`` itself: plain text from formats without templates."""
    if not any(d in text for d in _DELIMITERS):
        return text
    # Printed as expressions: every brace (so none opens a tag) and every carriage return
    # (jinja2 would turn one into a newline).
    return text.replace("{", "{{ '{' }}").replace("\r", "{{ '\\r' }}")
