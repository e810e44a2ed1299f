"""Repeated rows prepared once: the distinct rows of a data set, and the map that expands them back in order.

A sampled mixture repeats rows: the tiny Stage 2 draws 44,800 phase-1 rows of which 13,343 are distinct (labelled
records and a fast pool, each drawn many times), and trl tokenises every row it is given, on each process. Preparing
each distinct row once and selecting the prepared rows back in the original order gives the same data set for a
fraction of the work.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any


def row_key(row: dict[str, Any]) -> str:
    """A row's content as text: two rows with the same key are prepared into the same tokens."""
    return json.dumps(row, sort_keys=True, ensure_ascii=False, default=str)


def unique_rows(rows: Sequence[dict[str, Any]]) -> tuple[list[int], list[int]]:
    """``(first, inverse)``: the index of each distinct row's first occurrence, in order, and for every row the
    position of its content in ``first`` (``rows[i] == rows[first[inverse[i]]]``)."""
    seen: dict[str, int] = {}
    first: list[int] = []
    inverse: list[int] = []
    for i, row in enumerate(rows):
        slot = seen.setdefault(row_key(row), len(first))
        if slot == len(first):
            first.append(i)
        inverse.append(slot)
    return first, inverse


def expand(inverse: Sequence[int], kept: Sequence[int]) -> list[int]:
    """Positions in the prepared distinct rows, one per original row, in the original order.

    ``kept[p]`` is the distinct row at prepared position ``p`` (preparation may drop rows, e.g. those left without a
    trained token); an original row whose distinct row was dropped is dropped too, as preparing it would have been.
    """
    position = {u: p for p, u in enumerate(kept)}
    return [position[u] for u in inverse if u in position]
