"""Repeated rows prepared once: the distinct rows of a data set, and the map that expands them back in order.

A sampled mixture repeats rows: the tiny Stage 2 draws 44,800 phase-1 rows of which 13,343 are distinct (labelled
records and a fast pool, each drawn many times), and trl tokenises every row it is given, on each process. Preparing
each distinct row once and selecting the prepared rows back in the original order gives the same data set for a
fraction of the work.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from typing import Any


def row_key(row: dict[str, Any]) -> bytes:
    """A digest of a row's content: two rows with the same key are prepared into the same tokens.

    16 bytes a row, not the row's text: a large data set's keys stay small in memory.
    """
    text = json.dumps(row, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def unique_rows(rows: Iterable[dict[str, Any]]) -> tuple[list[int], list[int]]:
    """``(first, inverse)``: the index of each distinct row's first occurrence, in order, and for every row the
    position of its content in ``first`` (``rows[i] == rows[first[inverse[i]]]``). ``rows`` is read once, in
    order (a generator over a large data set is fine)."""
    seen: dict[bytes, int] = {}
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


def dataset_rows(dataset: Any, batch_size: int = 1000) -> Iterator[dict[str, Any]]:
    """The rows of a ``datasets.Dataset``, read a batch at a time (never the whole data set in memory at once)."""
    # Plain Python values: a numpy or torch format would print long arrays abbreviated, so two rows could share a key.
    for batch in dataset.with_format(None).iter(batch_size=batch_size):
        columns = list(batch)
        yield from (dict(zip(columns, values)) for values in zip(*(batch[c] for c in columns)))
