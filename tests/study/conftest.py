"""The paper's data, found the way the CLI finds it; missing data fails loudly, never skips."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmteams.errors import ConfigError
from lmteams.study import PaperData, paper_data_dir


@pytest.fixture(scope="session")
def paper_dir() -> Path:
    try:
        return paper_data_dir()
    except ConfigError as exc:
        pytest.fail(f"this test needs the paper's data (always present in CI): {exc}")


@pytest.fixture(scope="session")
def paper(paper_dir: Path) -> PaperData:
    return PaperData(paper_dir)
