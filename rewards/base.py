"""What every MARS reward shares: the call contract, answer extraction, and failure handling.

A reward is a picklable callable with a stable ``__name__`` called the way trl's ``GRPOTrainer`` calls reward
functions: ``reward(completions, **columns) -> list[float | None]``. ``None`` means "does not apply to this
sample". A failure inside a reward is logged and becomes ``None`` for that sample: a reward never crashes
training.

A reward that reads replies holds the run's one think format (``think``, a :class:`train.core.modes.ThinkFormat`).
It is never guessed: a reward built without one gets it from :meth:`rewards.router.MARSRouter.set_think_format`
(the GRPO recipe passes ``ThinkFormat.from_tokenizer(tokenizer)``) or from the MARS config's
``think_start``/``think_end``, and asking it to parse a reply before that is an error
(:class:`ThinkFormatNotSet`), not a per-sample ``None``: a misconfigured run must stop, not train on zeros.
"""

from __future__ import annotations

import logging
from typing import Any

from train.core.modes import ThinkFormat, completion_text

logger = logging.getLogger("rewards")


class ThinkFormatNotSet(RuntimeError):
    """A reward was asked to read a reply before it was given the run's think format (a configuration error)."""


def extract_answer(completion: Any, think: ThinkFormat) -> str | None:
    """The answer part of a completion: the text after the closed think block.

    With no think block the whole text is the answer (the block may have been prefilled in the prompt). An
    unclosed think block has no answer: ``None``. Nothing inside the think block is ever read as the answer.
    """
    return think.parse(completion_text(completion)).answer


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
    the sample's index), so one bad row never stops a run; a missing think format (:class:`ThinkFormatNotSet`) is
    the exception that is raised. Subclasses that can score a batch faster than one sample at a time override
    ``__call__`` and keep that guarantee.

    ``think``: the run's think format, None until it is set (a ``think=`` constructor keyword of the subclasses
    that read replies, :meth:`rewards.router.MARSRouter.set_think_format`, or the MARS config's keys).
    """

    name = "reward"
    think: ThinkFormat | None = None

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
        except ThinkFormatNotSet:  # a configuration error, the same for every sample: stop the run
            raise
        except Exception as exc:  # a reward never crashes training
            logger.warning("reward %s failed on sample %d: %s: %s", self.name, index, type(exc).__name__, exc)
            return None
        return None if value is None else float(value)

    def think_format(self) -> ThinkFormat:
        """The think format replies are read with; :class:`ThinkFormatNotSet` when none was given."""
        if self.think is None:
            raise ThinkFormatNotSet(
                f"reward {self.name!r} has no think format, so it cannot tell the thinking from the answer: call "
                "MARSRouter.set_think_format(ThinkFormat.from_tokenizer(tokenizer)), set think_start/think_end in "
                "the MARS config, or build the reward with think=ThinkFormat(start, end)"
            )
        return self.think

    def answer(self, completion: Any) -> str | None:
        """The answer part of ``completion`` (:func:`extract_answer` with this reward's think format)."""
        return extract_answer(completion, self.think_format())

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"
