"""Loop detection: the repeated block a sequence of token ids (or text) ends in.

Generation-time self-repair calls :func:`detect_loop` every few decoding steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


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
