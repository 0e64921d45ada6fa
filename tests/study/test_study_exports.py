"""``lmteams.study.__all__`` is exactly the public surface (anyio's test_all_attributes)."""

from __future__ import annotations

import types

from lmteams import errors, study


def test_all_lists_every_public_name() -> None:
    public = {
        name
        for name, value in vars(study).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert isinstance(study.__all__, tuple)
    assert set(study.__all__) == public
    assert len(study.__all__) == len(set(study.__all__))


def test_graph_error_is_a_config_error() -> None:
    assert issubclass(errors.GraphError, errors.ConfigError)
    assert "GraphError" in errors.__all__
