"""Turning free-text answers into comparable votes.

Two agents that both say 42 must count as one answer even when one writes "42." and the other
"17 + 25 = 42". Normalisers are small and pluggable; ``auto`` guesses from the text itself.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable

from lmteams.errors import ConfigError

__all__ = ("Normalizer", "normalize", "register_normalizer", "normalizer")

Normalizer = Callable[[str], str]
"""Text in, canonical vote out; "" means the answer could not be read (an abstention)."""

_NUMBER = re.compile(r"-?\d+(?:[.,]\d+)?")
_YESNO = re.compile(r"\b(yes|no|true|false)\b", re.IGNORECASE)
_CHOICE = re.compile(
    r"(?:^|\b(?:answer|option|choice)\s*(?:is|:)?\s*\(?)\s*\(?([A-Ea-e])\)?(?:[.):]|\s|$)"
)
_LEADS = re.compile(r"^(?:the\s+)?(?:final\s+)?answer\s*(?:is|:)\s*", re.IGNORECASE)
_PUNCT = str.maketrans("", "", string.punctuation)


def _number(text: str) -> str:
    """The number that states the result, in canonical decimal form.

    Small models restate the question before answering ("3 times 7 is 21", "35 + 13 = 48"),
    so the answer is the first number after the last '=' or ' is ', else the last number.
    """
    for marker in ("=", " is "):
        if marker in text:
            match = _NUMBER.search(text.rsplit(marker, 1)[-1])
            if match is not None:
                break
    else:
        numbers = _NUMBER.findall(text)
        match = _NUMBER.search(numbers[-1]) if numbers else None
    if match is None:
        return ""
    value = float(match.group().replace(",", "."))
    return str(int(value)) if value.is_integer() else f"{value:g}"


def _yesno(text: str) -> str:
    match = _YESNO.search(text)
    if match is None:
        return ""
    return "yes" if match.group(1).lower() in ("yes", "true") else "no"


def _choice(text: str) -> str:
    match = _CHOICE.search(text.strip())
    return match.group(1).upper() if match else ""


def _text(text: str) -> str:
    first = text.strip().splitlines()[0] if text.strip() else ""
    first = _LEADS.sub("", first)
    return " ".join(first.lower().translate(_PUNCT).split())


def _exact(text: str) -> str:
    return text.strip()


def _auto(text: str) -> str:
    head = text.strip().lower()
    if head.startswith(("yes", "no", "true", "false")):
        return _yesno(text)
    if _NUMBER.search(text):
        return _number(text)
    return _text(text)


_NORMALIZERS: dict[str, Normalizer] = {
    "auto": _auto,
    "number": _number,
    "yesno": _yesno,
    "choice": _choice,
    "text": _text,
    "exact": _exact,
}


def register_normalizer(name: str, fn: Normalizer) -> None:
    """Add a normaliser usable from Python (wire tasks name the built-in ones)."""
    _NORMALIZERS[name] = fn


def normalizer(name: str) -> Normalizer:
    try:
        return _NORMALIZERS[name]
    except KeyError:
        raise ConfigError(
            f"unknown normalizer {name!r}: use one of {', '.join(sorted(_NORMALIZERS))}"
        ) from None


def normalize(text: str, kind: str = "auto") -> str:
    return normalizer(kind)(text)
