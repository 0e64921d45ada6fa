"""Each package's curated surface: ``__all__`` lists exactly what it re-exports."""

from __future__ import annotations

import importlib
import types

import pytest

PACKAGES = [
    "lmteams",
    "lmteams.bus",
    "lmteams.agents",
    "lmteams.hardware",
    "lmteams.study",
    "lmteams.errors",
    "lmteams.testing",
    "lmteams.logging",
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
    assert exported - set(vars(module)) == set(), "__all__ names something missing"
    assert public - exported == set(), "public names missing from __all__"


def test_every_error_is_an_lmteams_error_with_a_docstring() -> None:
    errors = importlib.import_module("lmteams.errors")
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, errors.LmteamsError), name
        assert name.endswith("Error"), name
        assert cls.__doc__, name
