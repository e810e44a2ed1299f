"""The label rule: which mode is right for a prompt, given its fast and slow pass rates.

Fusion data (Stage 2) labels prompts with it; evaluation uses it (with ``margin = 0``) to score auto mode's choice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

FAST, SLOW = "fast", "slow"


@dataclass(frozen=True)
class LabelRule:
    """How pass rates become a fast/slow label (see the module docstring)."""

    fast_threshold: float = 0.75
    margin: float = 0.1
    fallback_max_easy_difficulty: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.fast_threshold <= 1.0:
            raise ValueError(f"fast_threshold={self.fast_threshold} must be in [0, 1]")
        if not 0.0 <= self.margin <= 1.0:
            raise ValueError(f"margin={self.margin} must be in [0, 1]")


def margin_in_samples(margin: float, num_samples: int) -> int:
    """How many fewer correct fast replies than slow ones (of ``num_samples`` each) ``margin`` tolerates.

    Pass rates move in steps of ``1 / num_samples``: a margin finer than one step acts as 0 (with 8 samples, 0.1
    tolerates no miss: fast 7/8 against slow 8/8 is labelled slow).
    """
    return math.floor(margin * num_samples + 1e-9)


def label_from_rates(fast_rate: float, slow_rate: float, rule: LabelRule) -> str:
    """``fast`` when the fast pass rate reaches the threshold and is not clearly below the slow one."""
    # A small epsilon so that 0.75 computed as 3/4 never misses a 0.75 threshold by a rounding error.
    eps = 1e-9
    if fast_rate + eps >= rule.fast_threshold and fast_rate + eps >= slow_rate - rule.margin:
        return FAST
    return SLOW
