"""pass@k from n > k samples equals the closed form 1 - C(n-c, k) / C(n, k) on fixed correctness tables; the token
budget curve counts a reply only where it fits."""

from __future__ import annotations

import math
import random
from itertools import combinations

import pytest

from train.eval.passk import budget_curve, budget_grid, ks_for, mean_pass_at_k, pass_at_k


def closed_form(n: int, c: int, k: int) -> float:
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


@pytest.mark.parametrize("n", [1, 2, 5, 16, 50])
def test_pass_at_k_equals_the_closed_form_for_every_c_and_k(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(closed_form(n, c, k), abs=1e-12), (n, c, k)


def test_edge_cases():
    assert pass_at_k(8, 0, 3) == 0.0  # c = 0: never
    assert pass_at_k(8, 8, 3) == 1.0  # c = n: always
    assert pass_at_k(4, 2, 4) == 1.0 and pass_at_k(4, 0, 4) == 0.0  # n = k: pass@k is "any correct"
    assert pass_at_k(4, 3, 2) == 1.0  # n - c < k: every draw of k holds a correct one
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 is the share correct
    for bad in ((2, 3, 1), (4, 1, 0), (4, 1, 5), (4, -1, 1)):
        with pytest.raises(ValueError, match="pass@k needs"):
            pass_at_k(*bad)


def test_a_fixed_table_averages_over_prompts():
    table = [
        [True, False, False, False, False, False, False, False],  # c=1 of 8
        [True, True, True, False, True, False, False, False],  # c=4
        [False] * 8,  # c=0
        [True] * 8,  # c=8
    ]
    for k in (1, 2, 4, 8):
        expected = sum(closed_form(8, sum(row), k) for row in table) / 4
        assert mean_pass_at_k(table, k) == pytest.approx(expected)
    assert mean_pass_at_k(table, 1) == pytest.approx((1 + 4 + 0 + 8) / 32)
    assert mean_pass_at_k(table, 8) == pytest.approx(3 / 4)  # n = k: prompts with any correct reply


def test_unbiased_pass_at_k_matches_drawing_k_of_the_n():
    """The estimator is the exact mean over every k-subset of the n samples."""
    rng = random.Random(0)
    for _ in range(20):
        n = rng.randint(2, 9)
        row = [rng.random() < 0.4 for _ in range(n)]
        for k in range(1, n + 1):
            subsets = list(combinations(row, k))
            assert pass_at_k(n, sum(row), k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))


def test_ks_and_budgets():
    assert ks_for(16) == [1, 2, 4, 8, 16] and ks_for(6) == [1, 2, 4, 6] and ks_for(1) == [1]
    assert ks_for(8, [4, 1, 4]) == [1, 4] and ks_for(3, 2) == [2]
    with pytest.raises(ValueError, match="1 <= k <= n = 4"):
        ks_for(4, [1, 8])
    assert budget_grid(64, 4) == [16, 32, 48, 64] and budget_grid(3, 16) == [1, 2, 3]
    prompts = [{"correct": [True, True, False], "tokens": [5, 20, 3]}, {"correct": [True], "tokens": [40]}]
    assert budget_curve(prompts, [4, 5, 20, 39, 40]) == [0.0, 0.25, 0.5, 0.5, 0.75]
