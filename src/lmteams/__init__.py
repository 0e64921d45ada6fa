"""lmteams: run and study teams of language models as distributed systems, over NATS.

``async with lmteams.connect(url, team="t") as team: result = await team.submit("...")``
(``team.run_job(graph)`` runs a whole task graph: ``team`` is a ``lmteams.jobs.JobClient``).

The names below load on first use (PEP 562): ``import lmteams.bus`` on an edge device must
not pull in the agents, consensus, llama.cpp or numpy, and nothing registers itself on
import (agent daemons call ``lmteams.agents.load_strategies()``).
"""

from __future__ import annotations

import importlib
import typing

from lmteams.errors import LmteamsError

if typing.TYPE_CHECKING:
    from lmteams.agents import Result, Task, TeamClient
    from lmteams.jobs import JobClient, connect

__version__ = "0.1.0"

__all__ = (
    "connect",
    "JobClient",
    "TeamClient",
    "Task",
    "Result",
    "LmteamsError",
    "__version__",
)

_LAZY = {"connect": "lmteams.jobs", "JobClient": "lmteams.jobs", "TeamClient": "lmteams.agents"}
_LAZY |= {"Task": "lmteams.agents", "Result": "lmteams.agents"}


def __getattr__(name: str) -> typing.Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lmteams' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
