"""The dual-system bench's figures: reference mode choices and the two test mixes."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import load_script

bench = load_script("scripts/bench/dual_system.py")


def _p(level: str, correct: bool, tokens: int, fast: bool) -> dict:
    return {"bucket": level, "correct": [correct], "tokens": [tokens], "compliant": [True], "fast": [fast]}


def test_reference_choices_by_level_and_oracle():
    fast = [_p("1", True, 8, True), _p("2", False, 10, True), _p("3", True, 11, True)]
    slow = [_p("1", True, 20, False), _p("2", True, 30, False), _p("3", True, 40, False)]
    # Fast on levels 1-2 (one of them wrong), slow on level 3.
    assert bench.by_level(fast, slow, ("1", "2")) == pytest.approx((2 / 3, (8 + 10 + 40) / 3))
    # The oracle takes each correct fast reply: fast, slow, fast.
    assert bench.oracle(fast, slow) == pytest.approx((1.0, (8 + 30 + 11) / 3))


def test_first_keeps_the_equal_thirds_prefix_in_every_mode():
    scores = {"fast": [1, 2, 3, 4], "slow": [5, 6, 7, 8]}
    assert bench.first(scores, 3) == {"fast": [1, 2, 3], "slow": [5, 6, 7]}


def test_parse_defaults_match_the_documented_run_and_the_tiny_config():
    import yaml

    args = bench.parse([])
    config = yaml.safe_load(Path(args.config).read_text())
    assert (args.phase1_steps, args.phase2_steps) == (config["phase1_steps"], config["phase2_steps"]) == (1000, 500)
    assert (args.n_fast, args.n_phase2, args.replay) == (9000, 1200, True)
