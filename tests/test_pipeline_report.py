"""The pipeline's claims table, checked on fixed evaluation results (no model, no run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from train.pipeline.config import load_pipeline
from train.pipeline.report import claims, figures, routed_tokens

TINY = Path(__file__).resolve().parents[1] / "recipes/configs/tiny/pipeline.yaml"


def mode(acc: float, tokens: dict[str, float], fast_share: float = 0.0) -> dict:
    """One mode's results: the same accuracy on every level, ``tokens`` per level, 100 replies each."""
    per = {b: {"samples": 100, "avg@1": acc, "mean_tokens": t, "compliance": 1.0} for b, t in tokens.items()}
    return {"avg@1": acc, "mean_tokens": sum(tokens.values()) / len(tokens), "compliance": 1.0,
            "fast_share": fast_share, "per_difficulty": per}  # fmt: skip


def slow_only(acc: float) -> dict:
    return {"modes": {"slow": mode(acc, {"1": 20, "2": 30, "3": 40})}, "sampled_hard": {"avg": acc / 2}}


def final(auto_tokens: dict[str, float]) -> dict:
    return {
        "modes": {
            "slow": mode(1.0, {"1": 20, "2": 30, "3": 40}),
            "fast": mode(0.95, {"1": 8, "2": 10, "3": 12}, fast_share=1.0),
            "auto": mode(1.0, auto_tokens, fast_share=0.6),
        },
        "sampled_hard": {"avg": 0.9},
    }


@pytest.fixture(scope="module")
def cfg():
    return load_pipeline(TINY)


def test_routed_tokens_take_fast_on_easy_levels_and_slow_on_the_rest(cfg):
    results = final({"1": 8, "2": 10, "3": 40})
    assert routed_tokens(results, ["1", "2"]) == pytest.approx((8 + 10 + 40) / 3)
    assert figures(results, cfg.evaluation)["routed_token_ratio"] == pytest.approx(58 / 90)
    assert routed_tokens(slow_only(0.5), ["1", "2"]) is None  # a slow-only model has no fast replies


@pytest.mark.parametrize(
    ("level1_tokens", "shown", "met"),
    [(8.0, "(64.4%", True), (10.0, "(66.7%", False), (8.6, "(65.1%", False)],  # 65.1% must not read as 65%
)
def test_the_token_claim_shows_one_decimal_and_the_routed_reference(cfg, level1_tokens, shown, met):
    stages = {"base": slow_only(0.1), "distill": slow_only(0.4), "grpo": slow_only(0.5),
              "dual_system": final({"1": level1_tokens, "2": 10, "3": 40})}  # fmt: skip
    items = {c["claim"]: c for c in claims(cfg, stages)}
    token = items["auto tokens <= 65% of slow's (equal thirds)"]
    assert shown in token["measured"] and token["met"] is met
    assert token["measured"].endswith("L1-2 fast and the rest slow: 64.4%")
    assert items["distillation raises hard accuracy over the base (base -> distill, slow L3)"]["met"]
