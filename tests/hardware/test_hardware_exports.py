"""``lmteams.hardware.__all__`` is exactly the public surface (anyio's test_all_attributes)."""

from __future__ import annotations

import types

from lmteams import hardware


def test_all_lists_every_public_name() -> None:
    public = {
        name
        for name, value in vars(hardware).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert isinstance(hardware.__all__, tuple)
    assert set(hardware.__all__) == public
    assert len(hardware.__all__) == len(set(hardware.__all__))


def test_contract_names_are_exported() -> None:
    for name in (
        "GenerateRequest",
        "Timings",
        "Completion",
        "Backend",
        "BackendConfig",
        "open_backend",
    ):
        assert name in hardware.__all__
