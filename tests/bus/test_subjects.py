from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmteams.bus import SubjectKind, Subjects
from lmteams.errors import ConfigError

tokens = st.from_regex(r"[A-Za-z0-9_-]{1,20}", fullmatch=True)


def test_subject_tree_layout() -> None:
    s = Subjects("alpha")
    assert s.tasks == "lmt.alpha.tasks"
    assert s.agent("a1") == "lmt.alpha.agent.a1"
    assert s.role("worker") == "lmt.alpha.role.worker"
    assert s.results("t-1") == "lmt.alpha.results.t-1"
    assert s.gossip("ping") == "lmt.alpha.gossip.ping"
    assert s.control("a1") == "lmt.alpha.control.a1"
    assert s.all(SubjectKind.RESULTS) == "lmt.alpha.results.>"
    assert s.tasks_stream == "LMT_alpha_TASKS"


@given(team=tokens, name=tokens)
def test_build_then_parse_round_trips(team: str, name: str) -> None:
    s = Subjects(team)
    for kind, subject in [
        (SubjectKind.AGENT, s.agent(name)),
        (SubjectKind.ROLE, s.role(name)),
        (SubjectKind.RESULTS, s.results(name)),
        (SubjectKind.CONTROL, s.control(name)),
        (SubjectKind.GOSSIP, s.gossip(name)),
    ]:
        parsed = Subjects.parse(subject)
        assert (parsed.team, parsed.kind, parsed.name) == (team, kind, name)
    assert Subjects.parse(s.tasks).kind is SubjectKind.TASKS


@pytest.mark.parametrize("bad", ["", "a.b", "a b", "*", ">", "x" * 129, "é"])
def test_invalid_tokens_are_refused_with_a_clear_message(bad: str) -> None:
    with pytest.raises(ConfigError, match="NATS subject token"):
        Subjects(bad)
    with pytest.raises(ConfigError, match="agent id"):
        Subjects("ok").agent(bad)


@pytest.mark.parametrize(
    "subject", ["foo.bar.tasks", "lmt.t", "lmt.t.nonsense.x", "lmt.t.agent", "lmt.t.tasks.extra"]
)
def test_parse_rejects_subjects_outside_the_tree(subject: str) -> None:
    with pytest.raises(ConfigError):
        Subjects.parse(subject)
