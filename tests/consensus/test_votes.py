from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmteams.consensus import (
    _normalize,
    majority_probability,
    normalize,
    plurality,
    register_normalizer,
)
from lmteams.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "kind", "expected"),
    [
        ("42", "auto", "42"),
        ("42.", "auto", "42"),
        ("17 + 25 = 42", "auto", "42"),
        ("The answer is 42 because 6*7.", "number", "42"),
        ("3 times 7 is 21.", "number", "21"),
        ("I count 3, then 4, then 5", "number", "5"),
        ("3.50", "number", "3.5"),
        ("-7", "number", "-7"),
        ("Yes, it is.", "auto", "yes"),
        ("no", "yesno", "no"),
        ("I think that is true", "yesno", "yes"),
        ("B) because", "choice", "B"),
        ("The answer is (c).", "choice", "C"),
        ("  The answer is: Paris!  \nmore", "text", "paris"),
        ("Paris", "auto", "paris"),
        ("  exact Text ", "exact", "exact Text"),
        ("nothing numeric", "number", ""),
    ],
)
def test_normalizers(text: str, kind: str, expected: str) -> None:
    assert normalize(text, kind) == expected


def test_unknown_normalizer_and_custom_one(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="unknown normalizer"):
        normalize("x", "nope")
    # the registry is process-wide: register into a copy that the test's end throws away
    registry = dict(_normalize._NORMALIZERS)
    monkeypatch.setattr(_normalize, "_NORMALIZERS", registry)
    register_normalizer("upper", str.upper)
    assert normalize("ab", "upper") == "AB"
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="unknown normalizer"):  # no other test sees it
        normalize("ab", "upper")


def test_plurality_weights_abstentions_and_deterministic_ties() -> None:
    t = plurality([("42", 1), ("13", 1), ("42", 1), ("", 1)])
    assert (t.winner, t.support, t.total, t.tied) == ("42", 2, 3, False)
    tie = plurality([("b", 1), ("a", 1)])
    assert (tie.winner, tie.tied) == ("a", True)
    assert plurality([("x", 0.2), ("y", 0.1), ("y", 0.05)]).winner == "x"
    assert plurality([("", 1)]).winner == ""


@given(st.lists(st.tuples(st.sampled_from("abc"), st.floats(0.01, 5)), min_size=1))
def test_plurality_is_order_independent(ballots: list[tuple[str, float]]) -> None:
    assert plurality(ballots).winner == plurality(list(reversed(ballots))).winner


def test_majority_probability_is_the_jury_curve() -> None:
    assert majority_probability(0.7, 1) == pytest.approx(0.7)
    assert majority_probability(0.7, 3) == pytest.approx(0.784)
    assert majority_probability(0.7, 7) > majority_probability(0.7, 3)
    assert majority_probability(0.4, 7) < 0.4  # voting hurts below one half
    assert majority_probability(0.5, 5) == pytest.approx(0.5)
