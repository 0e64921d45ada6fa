"""Each package's curated surface: ``__all__`` lists exactly what it re-exports, and
importing a package loads only what it needs and registers nothing."""

from __future__ import annotations

import importlib
import subprocess
import sys
import types

import pytest

PACKAGES = [
    "lmteams",
    "lmteams.bus",
    "lmteams.agents",
    "lmteams.consensus",
    "lmteams.gossip",
    "lmteams.hardware",
    "lmteams.interop",
    "lmteams.study",
    "lmteams.errors",
    "lmteams.testing",
    "lmteams.logging",
    "lmteams.tracing",
]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_matches_public_names(name: str) -> None:
    module = importlib.import_module(name)
    exported = set(module.__all__)
    assert isinstance(module.__all__, tuple), "__all__ is a tuple"
    assert len(exported) == len(module.__all__), "no duplicates in __all__"
    public = {
        attr
        for attr, value in vars(module).items()
        if not attr.startswith("_")
        and not isinstance(value, types.ModuleType)
        and getattr(value, "__module__", name).startswith("lmteams")
        and attr not in {"annotations"}
    }
    missing = {n for n in exported if not hasattr(module, n)}  # lazy names resolve too
    assert missing == set(), "__all__ names something missing"
    assert public - exported == set(), "public names missing from __all__"


def test_every_error_is_an_lmteams_error_with_a_docstring() -> None:
    errors = importlib.import_module("lmteams.errors")
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, errors.LmteamsError), name
        assert name.endswith("Error"), name
        assert cls.__doc__, name


def _fresh(code: str) -> str:
    """What ``code`` prints in a new interpreter: ``sys.modules`` there is untouched."""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_importing_the_bus_loads_neither_the_stack_nor_numpy() -> None:
    loaded = "import lmteams.bus, sys; print([m in sys.modules for m in NAMES])".replace(
        "NAMES", repr(["numpy", "llama_cpp", "lmteams.consensus", "lmteams.agents"])
    )
    assert _fresh(loaded) == "[False, False, False, False]"


def test_top_level_names_load_on_first_use() -> None:
    code = (
        "import lmteams, sys; before = 'lmteams.agents' in sys.modules; "
        "client = lmteams.TeamClient; print(before, 'lmteams.agents' in sys.modules, "
        "client is sys.modules['lmteams.agents'].TeamClient)"
    )
    assert _fresh(code) == "False True True"


def test_strategies_register_by_call_not_by_import() -> None:
    code = (
        "import lmteams, lmteams.consensus, lmteams.cli; "
        "from lmteams.agents import registered_strategies, load_strategies; "
        "print(registered_strategies()); print(load_strategies()); print(load_strategies())"
    )
    lines = _fresh(code).splitlines()
    assert lines[0] == "('single',)"  # imports changed nothing
    everything = "('single', 'debate', 'quorum', 'vote', 'weighted')"
    assert lines[1:] == [everything, everything]  # loading is explicit and idempotent


def test_a_provider_that_is_not_a_function_is_refused() -> None:
    from lmteams.agents import load_strategies

    with pytest.raises(TypeError, match="not a function"):
        load_strategies("lmteams.consensus:__doc__")
