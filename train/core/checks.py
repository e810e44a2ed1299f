"""Answer checkers: the shape every verifier of a reply's answer takes, and the plainest one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Checker = Callable[[str | None, dict[str, Any]], bool]


def exact_match(answer: str | None, record: dict[str, Any]) -> bool:
    """The answer equals the reference after stripping whitespace (enough for the arithmetic world)."""
    if answer is None or record.get("answer") is None:
        return False
    return "".join(answer.split()) == "".join(str(record["answer"]).split())
