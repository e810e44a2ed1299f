"""What every MARS reward shares: the call contract, answer extraction, and failure handling.

A reward is a picklable callable with a stable ``__name__`` called the way trl's ``GRPOTrainer`` calls reward
functions: ``reward(completions, **columns) -> list[float | None]``. ``None`` means "does not apply to this
sample". A failure inside a reward is logged and becomes ``None`` for that sample: a reward never crashes
training.
"""

from __future__ import annotations

import logging
from typing import Any

from train.core.modes import DEFAULT_THINK_END, DEFAULT_THINK_START, completion_text, parse_response

logger = logging.getLogger("rewards")


def extract_answer(
    completion: Any, think_start: str = DEFAULT_THINK_START, think_end: str = DEFAULT_THINK_END
) -> str | None:
    """The answer part of a completion: the text after the closed think block.

    With no think block the whole text is the answer (the block may have been prefilled in the prompt). An
    unclosed think block has no answer: ``None``. Nothing inside the think block is ever read as the answer.
    """
    return parse_response(completion_text(completion), think_start, think_end).answer


def column(columns: dict[str, Any], key: str, n: int) -> list[Any]:
    """Column ``key`` as a list of length ``n`` (``None`` everywhere when trl did not pass it)."""
    values = columns.get(key)
    if values is None:
        return [None] * n
    values = list(values)
    if len(values) != n:
        raise ValueError(f"column {key!r} has {len(values)} values for {n} completions")
    return values


class Reward:
    """Base class: subclasses set ``name`` and implement ``score(completion, **row) -> float | None``.

    ``__call__`` follows trl's batch contract and turns an exception on one sample into ``None`` (logged with
    the sample's index), so one bad row never stops a run. Subclasses that can score a batch faster than one
    sample at a time override ``__call__`` and keep that guarantee.
    """

    name = "reward"
    think_start = DEFAULT_THINK_START
    think_end = DEFAULT_THINK_END

    @property
    def __name__(self) -> str:  # trl logs rewards by __name__
        return self.name

    def score(self, completion: Any, **row: Any) -> float | None:
        raise NotImplementedError

    def __call__(self, completions: list[Any], **columns: Any) -> list[float | None]:
        n = len(completions)
        keys = [k for k, v in columns.items() if isinstance(v, (list, tuple)) and len(v) == n]
        out: list[float | None] = []
        for i, completion in enumerate(completions):
            row = {k: columns[k][i] for k in keys}
            out.append(self.safe_score(completion, i, **row))
        return out

    def safe_score(self, completion: Any, index: int = 0, **row: Any) -> float | None:
        try:
            value = self.score(completion, **row)
        except Exception as exc:  # a reward never crashes training
            logger.warning("reward %s failed on sample %d: %s: %s", self.name, index, type(exc).__name__, exc)
            return None
        return None if value is None else float(value)

    def answer(self, completion: Any) -> str | None:
        return extract_answer(completion, self.think_start, self.think_end)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"
