"""Repetition: an n-gram repetition penalty for GRPO (the generation-time loop detector is train.sampling.loops).

The penalty follows "Demystifying Long Chain-of-Thought Reasoning" (appendix C.2) as open-r1 and trl implement it,
``max_penalty * (1 - unique / total)`` over n-grams, with one fix: that ratio cannot reach 1 (the first n-gram is
never a repeat), so a fully repetitive text of ``k`` n-grams only gets ``max_penalty * (k - 1) / k``: -0.75 for
"a a a a a" with bigrams, however repetitive. Here the repeats are counted against the n-grams that could repeat,
``(total - unique) / (total - 1)``, so any fully repetitive text gets exactly ``max_penalty`` and short texts are
scored on the same scale as long ones. Texts with fewer than two n-grams get 0.0.

Words are whitespace-separated, except that CJK characters count one each (Chinese has no spaces). With
``unit="ids"`` the penalty runs on trl's ``completion_ids`` column instead (tokenizer-defined, language-agnostic).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from rewards.base import Reward
from rewards.registry import register
from train.core.modes import completion_text

# A CJK character (ideographs, kana, hangul, fullwidth punctuation) is one word; other words are split on spaces.
_WORD_RE = re.compile(
    r"[\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uff00-\uffef]|[^\s\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uff00-\uffef]+"
)  # noqa: E501


def words(text: str) -> list[str]:
    """Lower-cased words of ``text``; every CJK character is a word of its own."""
    return _WORD_RE.findall(text.lower())


def repetition_ratio(items: Sequence[Any], ngram_size: int) -> float:
    """The share of ``ngram_size``-grams of ``items`` that repeat an earlier one, among those that could: in [0, 1].

    0.0 with no repeat or fewer than two n-grams; 1.0 when every n-gram is the same.
    """
    total = len(items) - ngram_size + 1
    if total < 2:
        return 0.0
    items = list(items)
    unique = len(set(zip(*[items[i:] for i in range(ngram_size)])))
    return (total - unique) / (total - 1)


@register("repetition")
class RepetitionReward(Reward):
    """An n-gram repetition penalty in [max_penalty, 0]: 0 without repeats, max_penalty when fully repetitive.

    Args:
        ngram_size: n-gram length (in words, or token ids with ``unit="ids"``).
        max_penalty: the penalty of a fully repetitive completion (<= 0).
        unit: ``"words"`` (the completion text, see ``words``) or ``"ids"`` (trl's ``completion_ids`` column; rows
            without it fall back to words).
    """

    name = "repetition"

    def __init__(self, ngram_size: int = 3, max_penalty: float = -1.0, unit: str = "words") -> None:
        if max_penalty > 0:
            raise ValueError(f"max_penalty={max_penalty} must be <= 0 (it is a penalty)")
        if ngram_size < 1:
            raise ValueError(f"ngram_size={ngram_size} must be >= 1")
        if unit not in ("words", "ids"):
            raise ValueError(f"unit={unit!r} must be 'words' or 'ids'")
        self.ngram_size = ngram_size
        self.max_penalty = max_penalty
        self.unit = unit

    def score(self, completion: Any, completion_ids: Any = None, **_: Any) -> float:
        if self.unit == "ids" and completion_ids is not None:
            items: Sequence[Any] = list(completion_ids)
        else:
            items = words(completion_text(completion))
        ratio = repetition_ratio(items, self.ngram_size)
        return ratio * self.max_penalty if ratio else 0.0
