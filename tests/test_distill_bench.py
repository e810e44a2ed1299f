"""The distillation benchmark's accounting, on fixed data (the benchmark itself takes tens of minutes)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from conftest import load_script
from safetensors.torch import load_file

from train.core.modes import QWEN3_THINK
from train.distill.loop import merge_iterations
from train.distill.selection import SelectionConfig, select
from train.world.arithmetic import make_mixed_problems
from train.world.tiny import make_tiny

bench = load_script("scripts/bench/distill.py")


def test_the_skewed_pool_is_mostly_mastered_or_out_of_reach():
    pool = make_mixed_problems(1500, bench.POOLS["skewed"], seed=11)
    shares = bench.budget_shares([p["difficulty"] for p in pool])
    assert shares == pytest.approx({"mastered": 0.40, "learnable": 0.20, "out_of_reach": 0.40})
    counts = Counter(p["difficulty"] for p in pool)
    assert counts[1] == 60 and counts[3] == 300 and counts[7] == counts[8] == 195
    # the out-of-reach replies do not fit the student's reply budget: their traces are longer than 80 characters
    long = [p for p in pool if p["difficulty"] in bench.OUT_OF_REACH]
    assert all(len(str(p["a"])) >= 3 for p in long)


def test_budget_shares_and_oracle_levels():
    assert bench.budget_shares([1, 2, 3, 3, 6, 7, 8, 8]) == {"mastered": 0.25, "learnable": 0.25, "out_of_reach": 0.5}
    assert bench.budget_shares([]) == {"mastered": 0.0, "learnable": 0.0, "out_of_reach": 0.0}
    assert [bench.oracle_complexity(lv) for lv in (1, 2, 3, 6, 7, 8)] == [0.0, 0.0, 0.5, 1.0, 1.0, 1.0]
    # the oracle arm is the band on those complexities: it takes only the learnable level
    levels = [1, 3, 7, 3, 2, 8, 3]
    sel = select([bench.oracle_complexity(lv) for lv in levels], SelectionConfig(**bench.ARMS["oracle"]))
    assert sorted(levels[i] for i in sel.indices) == [3, 3, 3]


def test_fill_up_tops_up_to_the_target_without_repeats():
    assert bench.fill_up([4, 1], 10, 5, seed=0)[:2] == [4, 1]
    full = bench.fill_up([4, 1], 10, 5, seed=0)
    assert len(full) == len(set(full)) == 5 and full == bench.fill_up([4, 1], 10, 5, seed=0)
    assert bench.fill_up([0, 1, 2], 10, 2, seed=0) == [0, 1, 2]  # never cuts a selection
    assert sorted(bench.fill_up([], 3, 5, seed=0)) == [0, 1, 2]  # no more than there are


def test_bootstrap_interval_on_fixed_data():
    const = np.full((4, 10), 0.25)
    assert bench.bootstrap(const) == (0.25, 0.25, 0.25)
    rng = np.random.default_rng(0)
    values = (rng.random((6, 200)) < 0.6).astype(float)
    mean, lo, hi = bench.bootstrap(values, n_boot=500, seed=1)
    assert mean == pytest.approx(values.mean())
    assert lo < mean < hi and 0.03 < hi - lo < 0.2
    assert bench.bootstrap(values, n_boot=500, seed=1) == (mean, lo, hi)  # seeded
    # a paired difference of an arm with itself is exactly zero; a shift by one problem in ten is resolved
    assert bench.bootstrap(values - values, n_boot=200) == (0.0, 0.0, 0.0)
    better = values.copy()
    better[:, :20] = 1.0
    d_mean, d_lo, _ = bench.bootstrap(better - values, n_boot=500)
    assert d_mean == pytest.approx((1.0 - values[:, :20]).sum() / values.size) and d_lo > 0


def test_forgetting_compares_each_earlier_iteration_with_the_end():
    chain = [
        {"own_data": [1, 1, 0], "earlier_data": []},
        {"own_data": [1, 0], "earlier_data": [[1, 0, 0]]},
        {"own_data": [1], "earlier_data": [[0, 1, 0], [0, 0]]},
    ]
    # iteration 0's data: (1,1,0) -> (0,1,0); iteration 1's: (1,0) -> (0,0)
    assert bench.forgetting(chain) == [1, 0, 0, 1, 0]


def test_merge_iterations_is_the_mean_of_the_iteration_deltas(tmp_path):
    base, a, b = (make_tiny(tmp_path / name, size="nano", seed=s, think=QWEN3_THINK) for name, s in
                  (("base", 0), ("a", 1), ("b", 2)))  # fmt: skip
    out = merge_iterations("task_arithmetic", [a, b], tmp_path / "ta", base=base)
    tensors = [load_file(p / "model.safetensors") for p in (base, a, b, out)]
    for name, merged in tensors[3].items():
        expected = (
            tensors[0][name] + ((tensors[1][name] - tensors[0][name]) + (tensors[2][name] - tensors[0][name])) / 2
        )
        assert torch.allclose(merged, expected, atol=1e-6), name
    ties = merge_iterations("ties", [a, b], tmp_path / "ties", base=base, parameters={"density": 0.5})
    assert (ties / "model.safetensors").exists()
    with pytest.raises(ValueError, match="task_arithmetic or ties"):
        merge_iterations("ema", [a, b], tmp_path / "x", base=base)
