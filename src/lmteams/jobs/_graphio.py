"""Task graphs (jobs) in and out of files: TOML and JSON, the paper's task lists, shipped graphs.

People write graphs in TOML; code and the shipped set use JSON. Both decode strictly through
msgspec, so a typo'd field or a wrong type is an error that names the field rather than a
silently ignored key. The paper's own task-list format (``project`` and ``tasks``) is told
apart by its keys, wherever the file lies, and decoded leniently because it carries fields
(status, owner, files) that belong to their harness, not to a graph. Its descriptions are
plain text, so they become templates that render to themselves.
"""

from __future__ import annotations

import json
import tomllib
import typing
from importlib import resources
from pathlib import Path
from typing import Final

import msgspec

from lmteams.errors import GraphError
from lmteams.jobs._graph import DEFAULT_WORK_TOKENS, Subtask, TaskGraph
from lmteams.jobs._options import JobOptions
from lmteams.jobs._template import literal

__all__ = (
    "SHIPPED_GRAPHS",
    "chain_plus_free",
    "dumps_toml",
    "load_graph",
    "load_paper_tasks",
    "paper_graphs",
    "save_graph",
    "shipped_graph",
    "shipped_graphs",
    "write_shipped_graphs",
)

_PAPER_DOMAIN_PREFIX: Final = "amdahl_"
_PAPER_LEVELS: Final = ("p02", "p05", "p09")
_GRAPHS_DIR: Final = ("study", "graphs")  # package data of lmteams, read without importing study


def load_graph(path: str | Path) -> TaskGraph:
    """Read a ``.toml`` or ``.json`` graph; any problem is a :class:`GraphError` naming the file."""
    file = Path(path)
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise GraphError(f"cannot read task graph {file}: {exc.strerror or exc}") from exc
    suffix = file.suffix.lower()
    try:
        if suffix == ".toml":
            return msgspec.convert(tomllib.loads(raw.decode()), TaskGraph)
        if suffix == ".json":
            doc = msgspec.json.decode(raw)
            if _is_paper_list(doc):
                return _paper_graph(file, msgspec.convert(doc, _PaperTaskList))
            return msgspec.convert(doc, TaskGraph)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, msgspec.DecodeError) as exc:
        raise GraphError(f"invalid task graph {file}: {exc}{_accepted(str(exc))}") from exc
    except GraphError as exc:
        raise GraphError(f"{file}: {exc}") from exc
    raise GraphError(f"task graph {file} must end in .toml or .json, not {suffix or '(none)'}")


def _accepted(message: str) -> str:
    """The values a ``[job]`` choice takes, when msgspec refused one without naming them."""
    head, _, field = message.partition(" - at `$.job.")
    if not head.startswith("Invalid enum value"):
        return ""
    values = typing.get_args(typing.get_type_hints(JobOptions).get(field.rstrip("`"), ""))
    return f" (use one of: {', '.join(values)})" if values else ""


def save_graph(graph: TaskGraph, path: str | Path) -> Path:
    """Write ``graph`` as TOML or JSON, chosen by the file's suffix."""
    file = Path(path)
    suffix = file.suffix.lower()
    if suffix == ".toml":
        file.write_text(dumps_toml(graph), encoding="utf-8")
    elif suffix == ".json":
        file.write_bytes(_dumps_json(graph))
    else:
        raise GraphError(f"task graph {file} must end in .toml or .json, not {suffix or '(none)'}")
    return file


def _dumps_json(graph: TaskGraph) -> bytes:
    return msgspec.json.format(msgspec.json.encode(graph), indent=2) + b"\n"


def _toml_str(value: str) -> str:
    # JSON's escapes are all valid TOML basic-string escapes; TOML also forbids a raw DEL.
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_value(value: object) -> str:
    """One value of the shapes a graph has: str, bool, int, float, or an array of strings."""
    if isinstance(value, str):
        return _toml_str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)  # Python's int and float reprs are TOML (inf and nan included)
    if isinstance(value, tuple | list):
        return f"[{', '.join(_toml_value(v) for v in value)}]"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def _changed(struct: msgspec.Struct, skip: tuple[str, ...] = ()) -> list[str]:
    """``key = value`` lines for the fields of ``struct`` that differ from their defaults."""
    return [
        f"{f.name} = {_toml_value(getattr(struct, f.name))}"
        for f in msgspec.structs.fields(struct)
        if f.name not in skip and getattr(struct, f.name) != f.default
    ]


def dumps_toml(graph: TaskGraph) -> str:
    """The graph as TOML that :func:`load_graph` reads back to an equal graph.

    Written by hand because the standard library reads TOML but does not write it, and the
    shape is fixed: a few strings, a ``[job]`` table, and an array of tables. Fields newer
    than the graph format are written only when set, so old graphs read as they always did.
    """
    lines = [f"name = {_toml_str(graph.name)}", f"description = {_toml_str(graph.description)}"]
    if graph.final:
        lines.append(f"final = {_toml_str(graph.final)}")
    options = _changed(graph.job)
    if options:
        lines += ["", "[job]", *options]
    fixed = ("id", "title", "deps", "work_tokens")
    for s in graph.subtasks:
        lines += ["", "[[subtasks]]", *(f"{k} = {_toml_value(getattr(s, k))}" for k in fixed)]
        lines += _changed(s, skip=fixed)
    return "\n".join(lines) + "\n"


# --- the paper's task lists ------------------------------------------------------------------


class _PaperTask(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    title: str
    description: str = ""
    dependencies: tuple[str, ...] = ()


class _PaperTaskList(msgspec.Struct, frozen=True, kw_only=True):
    project: str
    description: str = ""
    tasks: tuple[_PaperTask, ...]


def _is_paper_list(doc: object) -> bool:
    """The paper's lists have ``tasks`` where a graph has ``subtasks``."""
    return isinstance(doc, dict) and "tasks" in doc and "subtasks" not in doc


def _paper_key(path: Path) -> str:
    """``<domain>/pXX`` inside the paper's ``tasks/amdahl_<domain>`` folders, else the stem."""
    if path.parent.name.startswith(_PAPER_DOMAIN_PREFIX):
        return f"{path.parent.name.removeprefix(_PAPER_DOMAIN_PREFIX)}/{path.stem}"
    return path.stem


def _paper_graph(file: Path, listing: _PaperTaskList) -> TaskGraph:
    subtasks = tuple(
        Subtask(
            id=t.id,
            title=t.title,
            deps=t.dependencies,
            work_tokens=DEFAULT_WORK_TOKENS,
            prompt=literal(t.description),
        )
        for t in listing.tasks
    )
    description = f"{listing.project}: {listing.description}".strip()
    try:
        return TaskGraph(name=_paper_key(file), description=description, subtasks=subtasks)
    except GraphError as exc:
        raise GraphError(f"{file}: {exc}") from exc


def load_paper_tasks(path: str | Path) -> TaskGraph:
    """One of the paper's task lists as a graph (named ``<domain>/pXX`` in the paper's tree).

    The task description becomes the subtask's prompt (a template that renders to the
    description); work is the default estimate, since the paper's lists do not size their
    tasks.
    """
    file = Path(path)
    try:
        listing = msgspec.json.decode(file.read_bytes(), type=_PaperTaskList)
    except OSError as exc:
        raise GraphError(f"cannot read paper task list {file}: {exc.strerror or exc}") from exc
    except msgspec.DecodeError as exc:
        raise GraphError(f"invalid paper task list {file}: {exc}") from exc
    return _paper_graph(file, listing)


def paper_graphs(paper_data_dir: str | Path) -> dict[str, TaskGraph]:
    """All nine paper graphs keyed like ``mathutilities20/p05``, sorted by key."""
    tasks_dir = Path(paper_data_dir) / "tasks"
    files = sorted(
        f for f in tasks_dir.glob(f"{_PAPER_DOMAIN_PREFIX}*/*.json") if f.stem in _PAPER_LEVELS
    )
    if not files:
        raise GraphError(f"no paper task lists under {tasks_dir} (expected */p02|p05|p09.json)")
    return {_paper_key(f): load_paper_tasks(f) for f in files}


# --- shipped graphs --------------------------------------------------------------------------


def chain_plus_free(
    name: str,
    chain: int,
    free: int,
    *,
    work_tokens: int = DEFAULT_WORK_TOKENS,
    description: str = "",
) -> TaskGraph:
    """The paper's shape: a ``chain``-task dependency chain plus ``free`` independent tasks.

    Ids are ``task-1`` .. ``task-N`` with the chain first, as in the paper's lists, so
    ``CP = max(chain, 1)`` and ``p = (N - CP) / N``.
    """
    if chain < 0 or free < 0:
        raise GraphError(f"chain and free must be >= 0 (got chain={chain}, free={free})")
    subtasks = [
        Subtask(
            id=f"task-{i}",
            title=f"chain step {i} of {chain}",
            deps=(f"task-{i - 1}",) if i > 1 else (),
            work_tokens=work_tokens,
        )
        for i in range(1, chain + 1)
    ]
    subtasks += [
        Subtask(
            id=f"task-{chain + j}",
            title=f"independent task {j} of {free}",
            work_tokens=work_tokens,
        )
        for j in range(1, free + 1)
    ]
    n = chain + free
    text = description or f"{chain}-task chain plus {free} independent tasks (N={n})"
    return TaskGraph(name=name, description=text, subtasks=tuple(subtasks))


SHIPPED_GRAPHS: Final[dict[str, tuple[int, int]]] = {
    "serial-p02": (16, 4),
    "mixed-p05": (10, 10),
    "parallel-p09": (2, 18),
    "fully-serial-20": (20, 0),
    "fully-parallel-20": (0, 20),
}
"""Name -> (chain, free) of the graphs shipped in ``lmteams/study/graphs``."""


def write_shipped_graphs(directory: str | Path) -> list[Path]:
    """Regenerate the shipped JSON files (a test checks they match this code)."""
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    return [
        save_graph(chain_plus_free(name, chain, free), target / f"{name}.json")
        for name, (chain, free) in SHIPPED_GRAPHS.items()
    ]


def shipped_graph(name: str) -> TaskGraph:
    """A graph that ships with lmteams, by name (``serial-p02``, ``parallel-p09``, ...)."""
    resource = resources.files("lmteams").joinpath(*_GRAPHS_DIR, f"{name}.json")
    if not resource.is_file():
        known = ", ".join(SHIPPED_GRAPHS)
        raise GraphError(f"no shipped task graph {name!r}; shipped graphs are: {known}")
    try:
        return msgspec.json.decode(resource.read_bytes(), type=TaskGraph)
    except msgspec.DecodeError as exc:
        raise GraphError(f"shipped task graph {name!r} is invalid: {exc}") from exc


def shipped_graphs() -> dict[str, TaskGraph]:
    """Every shipped graph, found by listing the package data rather than trusting a list."""
    folder = resources.files("lmteams").joinpath(*_GRAPHS_DIR)
    names = sorted(
        entry.name.removesuffix(".json")
        for entry in folder.iterdir()
        if entry.name.endswith(".json")
    )
    return {name: shipped_graph(name) for name in names}
