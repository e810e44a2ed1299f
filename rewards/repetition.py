"""Repetition: an n-gram repetition penalty for GRPO, and the loop detector used by generation-time self-repair.

The penalty follows "Demystifying Long Chain-of-Thought Reasoning" (appendix C.2) as open-r1 and trl implement it,
``max_penalty * (1 - unique / total)`` over n-grams, with one fix: that ratio cannot reach 1 (the first n-gram is
never a repeat), so a fully repetitive text of ``k`` n-grams only gets ``max_penalty * (k - 1) / k``: -0.75 for
"a a a a a" with bigrams, however repetitive. Here the repeats are counted against the n-grams that could repeat,
``(total - unique) / (total - 1)``, so any fully repetitive text gets exactly ``max_penalty`` and short texts are
scored on the same scale as long ones. Texts with fewer than two n-grams get 0.0.

Words are whitespace-separated, except that CJK characters count one each (Chinese has no spaces). With
``unit="ids"`` the penalty runs on trl's ``completion_ids`` column instead (tokenizer-defined, language-agnostic).

``detect_loop`` finds a loop at the end of a sequence of token ids or of text: the generation-time self-repair
calls it every few decoding steps.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rewards.base import Reward
from rewards.registry import register
from train.modes import completion_text

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


# ------------------------------------------------------------------------------------------------ loop detector


@dataclass(frozen=True)
class LoopInfo:
    """A loop at the end of a sequence: ``seq[start:]`` repeats ``seq[start:start + period]``.

    ``repeats`` is ``length / period`` (the last copy may be partial), ``length = len(seq) - start``.
    """

    start: int
    period: int
    length: int

    @property
    def repeats(self) -> float:
        return self.length / self.period


def detect_loop(seq: Sequence[Any] | str, ngram: int = 4, window: int = 256, min_repeats: int = 3) -> LoopInfo | None:
    """The loop the sequence ends in, or None.

    ``seq`` is a list of token ids or a string (then its characters are the items; pass ``text.split()`` for
    words). Pass a tensor as ``tensor.tolist()``: indexing a tensor item by item is slow.

    A loop is ``min_repeats`` consecutive copies of a block of at least ``ngram`` items at the end of ``seq``
    (the last copy may still be partial after them): the block is the shortest period ``p`` of the tail, taken
    ``ceil(ngram / p)`` times, so "ab" repeated counts once it forms ``min_repeats`` copies of an ``ngram``-item
    block. Only periods that fit ``min_repeats`` times in the last ``window`` items are looked for; the loop's
    ``start`` is exact (it may lie before the window). The smallest period is reported.

    Cost: about ``window / min_repeats`` item comparisons when there is no loop, so it can run every few
    decoding steps.
    """
    if ngram < 1 or window < 1 or min_repeats < 2:
        raise ValueError(
            f"detect_loop needs ngram >= 1, window >= 1 and min_repeats >= 2; got {ngram=}, {window=}, {min_repeats=}"
        )
    n = len(seq)
    max_period = min(window, n) // min_repeats
    for period in range(1, max_period + 1):
        block = period * -(-ngram // period)  # the shortest multiple of the period with >= ngram items
        need = block * min_repeats
        if need > min(window, n):
            continue
        # Length of the periodic tail, counted back from the end: seq[i] == seq[i + period] for all i in it.
        i = n - 1 - period
        limit = n - need  # stop early: enough to decide while inside the window
        while i >= 0 and seq[i] == seq[i + period]:
            i -= 1
            if i < limit:
                break
        if i >= limit:
            continue
        while i >= 0 and seq[i] == seq[i + period]:  # a loop: find where it really starts
            i -= 1
        start = i + 1
        return LoopInfo(start=start, period=period, length=n - start)
    return None
