"""The command's surface: every verb is listed, the version prints, errors keep brackets."""

from __future__ import annotations

import pytest

from .conftest import lmteams


def test_help_lists_every_verb() -> None:
    done = lmteams("--help")
    assert done.returncode == 0
    for verb in ("demo", "up", "down", "status", "plan", "bus", "agent", "task", "hardware",
                 "model", "study"):  # fmt: skip
        assert verb in done.stdout
    assert lmteams("--version").stdout.strip() == "0.1.0"
    sub = lmteams("task", "publish", "--help")
    for option in ("--wait", "--json", "--rounds", "--normalizer", "--seed"):
        assert option in sub.stdout


def test_error_messages_keep_their_square_brackets(capsys: pytest.CaptureFixture[str]) -> None:
    from lmteams.cli._common import fail
    from lmteams.errors import ConfigError

    exit_ = fail(ConfigError("needs pyarrow: pip install 'lmteams[study]'"))
    assert exit_.exit_code == 1
    assert "pip install 'lmteams[study]'" in capsys.readouterr().err
