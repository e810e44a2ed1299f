"""GRPO measurably learns: a reduced scripts/bench/grpo_learning.py run raises sampled level-3 accuracy.

Slow (minutes) and built on the benchmark's cached SFT start (``FASTSLOW_GRPO_BENCH``, default
outputs/bench-grpo-learning; build it with ``python scripts/bench/grpo_learning.py --phase pilot``, see
docs/grpo.md): recipes/grpo.py with tiny/grpo_arithmetic.yaml's defaults for 30 steps, then the validation split is
scored again (k=4 at T=1, seeded). The held-out set is never read.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]
WORK = Path(os.environ.get("FASTSLOW_GRPO_BENCH", ROOT / "outputs/bench-grpo-learning"))


@pytest.mark.slow
def test_reduced_grpo_run_raises_sampled_accuracy_by_5_points(tmp_path):
    if not (WORK / "start" / "start.json").exists():
        pytest.skip(f"no cached SFT start in {WORK}: run scripts/bench/grpo_learning.py --phase pilot first")
    bench = load_script("scripts/bench/grpo_learning.py")
    probe = bench.read(WORK / "val.jsonl")[:100]
    before = bench.mean(bench.scores(WORK / "start", probe, 4, seed=0))
    run = bench.grpo(tmp_path, "grpo", WORK / "start", WORK / "rl.jsonl", 0, [], 30)
    after = bench.mean(bench.scores(run["dir"], probe, 4, seed=0))
    assert run["steps"] == 30
    assert run["zero_std_trained"] == 0.0  # dynamic sampling: every trained group informative
    assert after - before >= 0.05, f"sampled accuracy {before:.3f} -> {after:.3f}"
