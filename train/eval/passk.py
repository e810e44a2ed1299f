"""Metrics over ``n`` sampled replies per prompt: unbiased pass@k, and accuracy under token budgets.

**pass@k** is Chen et al. (2021)'s unbiased estimator from ``n >= k`` samples of which ``c`` are correct,
``1 - C(n - c, k) / C(n, k)``, averaged over prompts: the chance that at least one of ``k`` replies drawn without
replacement from the ``n`` is correct. With ``n > k`` its variance is far lower than sampling exactly ``k``.

**Accuracy under a token budget** ``B`` is read off one run at the full budget: a reply of ``t <= B`` tokens would have
been generated whole (the same prefix, the same answer) and keeps its score; a longer one would have been cut
before its answer and counts as wrong. So one evaluation at ``max_new_tokens`` gives the whole accuracy-over-budget
curve per mode, as in the budget plots of the Pangu Embedded and Qwen3 reports. (An answer written before the cut
and then followed by more text is counted wrong: the curve is a lower bound at budgets below a reply's length.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from train.core.plots import pyplot, save_accuracy_figure


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct (Chen et al. 2021, the numerically stable
    product form of ``1 - C(n - c, k) / C(n, k)``)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


def mean_pass_at_k(correct: Sequence[Sequence[bool]], k: int) -> float:
    """pass@k averaged over prompts, each with its own list of reply correctness (``len >= k``)."""
    if not correct:
        raise ValueError("pass@k of no prompts")
    return sum(pass_at_k(len(c), sum(map(bool, c)), k) for c in correct) / len(correct)


def ks_for(n: int, ks: Sequence[int] | int | None = None) -> list[int]:
    """The k values to report for ``n`` samples: ``ks`` when given (each checked ``1 <= k <= n``), else the powers
    of two below ``n`` and ``n`` itself (1, 2, 4, ..., n)."""
    if ks is None:
        out = sorted({2**i for i in range(max(n, 1).bit_length()) if 2**i <= n} | {n})
    else:
        out = sorted({int(k) for k in ([ks] if isinstance(ks, int) else ks)})
    bad = [k for k in out if not 1 <= k <= n]
    if bad or not out:
        raise ValueError(f"pass@k needs 1 <= k <= n = {n} samples per prompt; got k = {bad or out}")
    return out


def budget_grid(max_tokens: int, points: int = 16) -> list[int]:
    """``points`` budgets evenly spaced up to ``max_tokens`` (fewer when there are fewer distinct token counts)."""
    if max_tokens < 1 or points < 1:
        raise ValueError(f"budget_grid needs max_tokens >= 1 and points >= 1; got {max_tokens}, {points}")
    return sorted({max(1, round(max_tokens * j / points)) for j in range(1, points + 1)})


def budget_curve(prompts: Sequence[dict[str, Any]], budgets: Sequence[int]) -> list[float]:
    """Accuracy over all replies at each budget: a reply counts when it is correct and fits (``tokens <= B``).

    ``prompts`` are per-prompt scores with ``correct`` and ``tokens`` lists
    (:func:`train.eval.evaluation.per_prompt_scores`).
    """
    replies = [(c, t) for p in prompts for c, t in zip(p["correct"], p["tokens"])]
    if not replies:
        raise ValueError("budget curve of no replies")
    return [sum(c and t <= b for c, t in replies) / len(replies) for b in budgets]


def plot_budget_curves(results: dict[str, Any], path: str | Path) -> Path:
    """A PNG of accuracy against the token budget, one line per mode (``results["modes"][m]["budget_curve"]``)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for mode, summary in results["modes"].items():
        curve = summary["budget_curve"]
        ax.plot(curve["budgets"], curve["accuracy"], marker="o", markersize=3, label=mode)
    ylabel = f"accuracy (avg@{results.get('n', results['k'])})"
    return save_accuracy_figure(
        fig, ax, path, "token budget (max new tokens)", ylabel, "Accuracy over token budgets per mode"
    )
