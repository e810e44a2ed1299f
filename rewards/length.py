"""Length rewards: DAPO's soft overlong punishment, a correctness-aware cosine length reward, per-mode budgets.

Lengths are counted in tokens by default (``unit="tokens"``): from trl's ``completion_ids`` column when the trainer
passes it (GRPOTrainer always does), otherwise with the ``tokenizer`` given to the reward (anything with
``encode(text)``, or a callable ``text -> int``). With neither, the sample gets None and a warning: a length in
characters is never silently taken for one in tokens. ``unit="chars"`` counts characters of the completion text
instead (for data without a tokenizer); then every length parameter is in characters too.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from rewards.base import Reward, logger
from rewards.format import parse_reply
from rewards.math import DEFAULT_TIMEOUT_S, MATH_TASKS, MathReward
from rewards.registry import register
from train.core.modes import ThinkFormat, completion_text

UNITS = ("tokens", "chars")


def count_tokens(tokenizer: Any, text: str) -> int:
    """Token count of ``text`` with a tokenizer (``encode``, without special tokens) or a counting callable."""
    encode = getattr(tokenizer, "encode", None)
    if encode is not None:
        try:
            return len(encode(text, add_special_tokens=False))
        except TypeError:  # an encode() without that keyword
            return len(encode(text))
    if callable(tokenizer):
        return int(tokenizer(text))
    raise TypeError(f"tokenizer must have .encode(text) or be a callable text -> int, got {type(tokenizer).__name__}")


class LengthReward(Reward):
    """Base of the length rewards: ``length(completion, completion_ids)`` in the configured unit."""

    unit = "tokens"
    tokenizer: Any = None
    _warned = False

    def _set_unit(self, unit: str, tokenizer: Any) -> None:
        if unit not in UNITS:
            raise ValueError(f"unit={unit!r} must be one of {UNITS}")
        if tokenizer is not None and not (hasattr(tokenizer, "encode") or callable(tokenizer)):
            raise TypeError(f"tokenizer must have .encode(text) or be a callable text -> int, got {tokenizer!r}")
        self.unit = unit
        self.tokenizer = tokenizer

    def length(self, completion: Any, completion_ids: Any = None) -> int | None:
        """The completion's length, or None when it cannot be counted in tokens (logged once)."""
        if self.unit == "chars":
            return len(completion_text(completion))
        if completion_ids is not None:
            return len(completion_ids)
        if self.tokenizer is not None:
            return count_tokens(self.tokenizer, completion_text(completion))
        if not self._warned:
            logger.warning(
                "reward %s counts tokens but got neither a completion_ids column nor a tokenizer: scores are None "
                "(pass tokenizer=..., or unit='chars' with lengths in characters)",
                self.name,
            )
            self._warned = True
        return None


@register("overlong")
class OverlongReward(LengthReward):
    """DAPO's soft overlong punishment: 0 up to ``max_length - cache``, then linear down to -1 at ``max_length``,
    and -1 beyond it.

    Args:
        max_length: the longest completion that is not fully punished (DAPO's L_max).
        cache: the length of the soft-punishment interval before ``max_length`` (DAPO's L_cache); 0 punishes only
            completions longer than ``max_length``.
        unit: ``"tokens"`` or ``"chars"`` (see the module docstring).
        tokenizer: counts tokens when the trainer passes no ``completion_ids``.
    """

    name = "overlong"

    def __init__(self, max_length: int = 4096, cache: int = 512, unit: str = "tokens", tokenizer: Any = None) -> None:
        if max_length <= 0 or not 0 <= cache <= max_length:
            raise ValueError(f"overlong needs max_length > 0 and 0 <= cache <= max_length; {max_length=}, {cache=}")
        self.max_length = max_length
        self.cache = cache
        self._set_unit(unit, tokenizer)

    def score(self, completion: Any, completion_ids: Any = None, **_: Any) -> float | None:
        n = self.length(completion, completion_ids)
        if n is None:
            return None
        if n > self.max_length:
            return -1.0
        soft_start = self.max_length - self.cache
        return 0.0 if n <= soft_start else (soft_start - n) / self.cache


@register("cosine_length")
class CosineLengthReward(LengthReward):
    """Kimi 1.5 / open-r1 cosine length scaling, with correctness from ``verify(gold, answer)`` in that order.

    A correct answer scores from ``max_value_correct`` (length 0) down to ``min_value_correct`` (at
    ``max_length``); a wrong or missing one from ``min_value_wrong`` (length 0: short wrong answers are the worst)
    up to ``max_value_wrong`` (at ``max_length``), along half a cosine; longer completions score as at
    ``max_length``. None when the math reward does not apply (not a math task, no or unparseable reference).

    Args:
        max_length: the length at which the cosine reaches its end (in ``unit``).
        min_value_wrong, max_value_wrong, min_value_correct, max_value_correct: the ends of the two curves.
        unit, tokenizer: how lengths are counted (module docstring).
        timeout_s, tasks: as for the ``math`` reward.
        think: the run's think format (answers are read after the think block); None until the router sets it.
    """

    name = "cosine_length"

    def __init__(
        self,
        max_length: int = 1000,
        min_value_wrong: float = -1.0,
        max_value_wrong: float = -0.5,
        min_value_correct: float = 0.5,
        max_value_correct: float = 1.0,
        unit: str = "tokens",
        tokenizer: Any = None,
        timeout_s: float | None = DEFAULT_TIMEOUT_S,
        tasks: Iterable[str] = MATH_TASKS,
        *,
        think: ThinkFormat | None = None,
    ) -> None:
        if max_length <= 0:
            raise ValueError(f"cosine_length needs max_length > 0; got {max_length=}")
        self.max_length = max_length
        self.min_value_wrong = min_value_wrong
        self.max_value_wrong = max_value_wrong
        self.min_value_correct = min_value_correct
        self.max_value_correct = max_value_correct
        self._set_unit(unit, tokenizer)
        self.math = MathReward(timeout_s=timeout_s, tasks=tasks, think=think)

    # The correctness check reads the answer: the think format is its math reward's (one place to set it).
    @property
    def think(self) -> ThinkFormat | None:
        return self.math.think

    @think.setter
    def think(self, value: ThinkFormat | None) -> None:
        self.math.think = value

    def score(
        self, completion: Any, answer: Any = None, task: Any = None, completion_ids: Any = None, **_: Any
    ) -> float | None:
        correct = self.math.correct(completion, answer, task)
        if correct is None:
            return None
        n = self.length(completion, completion_ids)
        if n is None:
            return None
        cosine = math.cos(min(n / self.max_length, 1.0) * math.pi)
        # At length 0 (cosine 1) the curve is at `at_zero`, at max_length (cosine -1) at `at_max`.
        if correct:
            at_zero, at_max = self.max_value_correct, self.min_value_correct
        else:
            at_zero, at_max = self.min_value_wrong, self.max_value_wrong
        return at_max + 0.5 * (at_zero - at_max) * (1.0 + cosine)


@register("mode_length")
class ModeLengthReward(LengthReward):
    """A per-mode length budget: 0 within budget, then linear down to ``max_penalty`` at ``(1 + ramp) * budget``.

    A fast reply (empty think block, or none at all) is held to ``fast_budget``; a slow one (non-empty or unclosed
    block) to ``slow_budget``. The mode is the one the reply took, so under ``/auto_think`` a reply that chose
    fast mode must also be short. The whole completion is counted, think block included.

    Args:
        fast_budget, slow_budget: the longest reply of each mode that is not penalised (in ``unit``).
        ramp: how far past the budget, as a fraction of it, the penalty reaches ``max_penalty``.
        max_penalty: the largest penalty (<= 0).
        unit, tokenizer: how lengths are counted (module docstring).
        think: the run's think format; None until the router sets it.
    """

    name = "mode_length"

    def __init__(
        self,
        fast_budget: int = 512,
        slow_budget: int = 8192,
        ramp: float = 0.5,
        max_penalty: float = -1.0,
        unit: str = "tokens",
        tokenizer: Any = None,
        *,
        think: ThinkFormat | None = None,
    ) -> None:
        if fast_budget <= 0 or slow_budget <= 0 or ramp <= 0 or max_penalty > 0:
            raise ValueError(
                "mode_length needs fast_budget > 0, slow_budget > 0, ramp > 0 and max_penalty <= 0; got "
                f"{fast_budget=}, {slow_budget=}, {ramp=}, {max_penalty=}"
            )
        self.fast_budget = fast_budget
        self.slow_budget = slow_budget
        self.ramp = ramp
        self.max_penalty = max_penalty
        self._set_unit(unit, tokenizer)
        self.think = think

    def budget(self, completion: Any, prompt: Any = None) -> int:
        """The budget for this reply: by the mode it took (a block prefilled by a string prompt counts)."""
        mode = parse_reply(completion, prompt, self.think_format()).mode
        return self.slow_budget if mode in ("slow", "unclosed") else self.fast_budget

    def score(
        self, completion: Any, completion_ids: Any = None, prompts: Any = None, prompt: Any = None, **_: Any
    ) -> float | None:
        n = self.length(completion, completion_ids)
        if n is None:
            return None
        budget = self.budget(completion, prompts if prompts is not None else prompt)
        if n <= budget:
            return 0.0
        return self.max_penalty * min(1.0, (n - budget) / (self.ramp * budget))
