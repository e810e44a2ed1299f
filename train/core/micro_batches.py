"""Length-sorted micro-batches: one padded batch trained as a few micro-batches of rows of similar length.

A padded batch costs its rows times its longest row. Where short and long rows share a batch (direct answers beside
chains of thought), most of that is padding. Trained as micro-batches of rows of similar length, their gradients
accumulated, the same rows give the same update (the loss is normalised by the whole batch's token count, not each
micro-batch's) for fewer padded tokens. Unlike grouping the whole data set by length (trl's ``group_by_length``),
each optimizer step still trains the random draw of rows it would have: only the float rounding changes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch


def split_points(lengths: Sequence[int], parts: int) -> list[tuple[int, int]]:
    """The ``min(parts, len(lengths))`` non-empty ``[start, end)`` groups of the ascending ``lengths`` that pad least.

    A group pads every row to its last (longest) row, so it costs ``(end - start) * lengths[end - 1]``; the groups
    minimising the sum are found by dynamic programming over the split points (``O(parts * n^2)``, small for a
    device batch). Exactly that many groups, not at most: under data parallelism every process must run the same
    number of forwards, since each one gathers its metrics across the processes.
    """
    if any(a > b for a, b in zip(lengths, lengths[1:])):
        raise ValueError("split_points: lengths must be sorted ascending")
    n = len(lengths)
    if n == 0:
        return []
    parts = max(1, min(parts, n))
    inf = float("inf")
    # cost[k][j]: the fewest padded tokens of the first j rows in k groups; start[k][j]: where the last group starts
    cost = [[inf] * (n + 1) for _ in range(parts + 1)]
    start = [[0] * (n + 1) for _ in range(parts + 1)]
    cost[0][0] = 0
    for k in range(1, parts + 1):
        for j in range(k, n + 1):
            for i in range(k - 1, j):
                candidate = cost[k - 1][i] + (j - i) * lengths[j - 1]
                if candidate < cost[k][j]:
                    cost[k][j], start[k][j] = candidate, i
    groups, end, k = [], n, parts
    while end > 0:
        begin = start[k][end]
        groups.append((begin, end))
        end, k = begin, k - 1
    return groups[::-1]


def unsplittable(batch: Mapping[str, Any]) -> str | None:
    """Why ``batch`` cannot be split by length (``None`` when it can): it needs a right-padded 2-D attention mask."""
    mask = batch.get("attention_mask")
    if not torch.is_tensor(mask) or mask.dim() != 2:
        return "no 2-D attention_mask in the batch (padding-free or packed rows are not padded: nothing to save)"
    lengths = mask.sum(-1)
    positions = torch.arange(mask.shape[1], device=mask.device)
    if not torch.equal(mask.bool(), positions[None, :] < lengths[:, None]):
        return "the batch is not right-padded"
    return None


def length_micro_batches(batch: Mapping[str, Any], parts: int) -> list[dict[str, Any]]:
    """``batch`` as ``min(parts, rows)`` micro-batches of rows of similar length, each cut to its longest row.

    Every tensor whose first two dimensions are (rows, columns) is sliced to the micro-batch's rows and columns,
    a 1-D tensor of one value per row to its rows; anything else is passed to every micro-batch unchanged. The rows
    are ordered by length, so the micro-batches together hold every row once. A batch that cannot be split
    (:func:`unsplittable`) comes back whole.
    """
    if parts <= 1 or unsplittable(batch) is not None:
        return [dict(batch)]
    mask = batch["attention_mask"]
    rows, columns = mask.shape
    lengths = mask.sum(-1)
    order = torch.argsort(lengths, stable=True)
    sorted_lengths = lengths[order].tolist()
    micro = []
    for begin, end in split_points(sorted_lengths, parts):
        index, width = order[begin:end], max(1, int(sorted_lengths[end - 1]))
        micro.append({key: _slice(value, index, width, rows, columns) for key, value in batch.items()})
    return micro


def _slice(value: Any, index: torch.Tensor, width: int, rows: int, columns: int) -> Any:
    if not torch.is_tensor(value) or value.dim() == 0 or value.shape[0] != rows:
        return value
    picked = value[index.to(value.device)]
    return picked[:, :width] if value.dim() >= 2 and value.shape[1] == columns else picked
