"""Complexity, selection weights and selection: exact values on fixed pass rates."""

from __future__ import annotations

import math
import random

import pytest
from conftest import load_script

import train.sampling.base as base
from train.core.modes import PANGU_THINK
from train.distill.selection import (
    SelectionConfig,
    band_weight,
    complexity,
    gaussian_weight,
    histogram,
    informative_center,
    measure_complexity,
    plot_histogram,
    select,
    statistics,
)
from train.sampling.reply import Reply
from train.world.tiny import build_tokenizer


def test_complexity_and_weights_are_exact():
    assert [complexity(r) for r in (0.0, 0.25, 0.5, 1.0)] == [1.0, 0.75, 0.5, 0.0]
    with pytest.raises(ValueError):
        complexity(1.5)
    assert gaussian_weight(0.5, 0.5, 0.2) == 1.0
    assert gaussian_weight(0.7, 0.5, 0.2) == pytest.approx(math.exp(-0.5), rel=1e-12)
    assert gaussian_weight(0.1, 0.5, 0.2) == pytest.approx(math.exp(-2.0), rel=1e-12)
    assert gaussian_weight(0.25, 0.5, 0.25) == gaussian_weight(0.75, 0.5, 0.25)  # symmetric
    assert [band_weight(c, 0.25, 0.75) for c in (0.0, 0.25, 0.5, 0.75, 1.0)] == [0, 1, 1, 1, 0]
    with pytest.raises(ValueError):
        gaussian_weight(0.5, 0.5, 0.0)


def test_band_selection_never_takes_zero_weight_prompts():
    cs = [0.0, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0] * 3
    sel = select(cs, SelectionConfig(weighting="band", band_lo=0.25, band_hi=0.75, target_size=100))
    assert sorted(cs[i] for i in sel.indices) == [0.3] * 3 + [0.5] * 3 + [0.7] * 3
    assert sel.replay == []


def test_selection_size_replay_and_determinism():
    rng = random.Random(0)
    cs = [rng.choice([0.0, 0.25, 0.5, 0.75, 1.0]) for _ in range(400)]
    config = SelectionConfig(target_size=100, replay_fraction=0.2, center=0.5, width=0.15, selection_seed=1)
    sel = select(cs, config)
    assert len(sel.indices) == len(set(sel.indices)) == 100
    assert len(sel.replay) == 20 and all(cs[i] == 0.0 for i in sel.replay)
    assert all(cs[i] > 0.0 for i in sel.learn)  # mastered prompts only come in as replay
    assert select(cs, config).indices == sel.indices
    learn = [cs[i] for i in sel.learn]
    assert learn.count(0.5) > learn.count(0.25) > learn.count(1.0)  # the Gaussian favours the middle
    uniform = select(cs, SelectionConfig(weighting="uniform", target_size=400))
    assert sorted(uniform.indices) == list(range(400))


def test_statistics_and_png(tmp_path):
    cs = [0.0, 0.5, 0.5, 1.0]
    records = [{"difficulty": d} for d in (1, 2, 2, 3)]
    sel = select(cs, SelectionConfig(weighting="band", band_lo=0.4, band_hi=0.6))
    stats = statistics(records, cs, sel, bins=4)
    assert stats["histogram_before"] == [1, 0, 2, 1] and stats["histogram_after"] == [0, 0, 2, 0]
    assert stats["mean_complexity_before"] == 0.5 and stats["mean_complexity_after"] == 0.5
    assert (stats["mastered_before"], stats["unsolved_before"], stats["selected"]) == (1, 1, 2)
    assert stats["difficulty_after"] == {"2": 2}
    assert histogram([0.0, 0.099, 0.1, 1.0], 10) == [2, 1, 0, 0, 0, 0, 0, 0, 0, 1]
    png = plot_histogram(cs, [0.5, 0.5], tmp_path / "h.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_informative_center_follows_the_student():
    # A weak student: its informative prompts (0 < c < 1) mostly fail, so the centre moves towards 1.
    weak = [0.0] * 10 + [1.0] * 50 + [0.5, 0.75, 0.75, 0.75, 1.0]
    assert informative_center(weak) == 0.75
    assert informative_center([0.25, 0.5, 0.75, 1.0]) == 0.5
    assert informative_center([0.25, 0.5]) == 0.375  # even count: the mean of the middle two
    assert informative_center([0.0, 1.0], default=0.4) == 0.4  # nothing informative: the fixed centre
    config = SelectionConfig(center_rule="informative", center=0.5, width=0.1, target_size=3, selection_seed=0)
    assert config.center_for(weak) == 0.75
    sel = select([0.25] * 10 + [0.75] * 20, config)
    assert sel.center == 0.75 and len(sel.indices) == 3 and all(i >= 10 for i in sel.indices)
    fixed = select([0.25] * 20 + [0.75] * 20, SelectionConfig(center=0.3, width=0.1, target_size=3))
    assert fixed.center == 0.3
    assert select([0.5], SelectionConfig(weighting="band")).center is None


def test_config_validation():
    with pytest.raises(ValueError, match="center_rule"):
        SelectionConfig(center_rule="median")
    with pytest.raises(ValueError, match="weighting"):
        SelectionConfig(weighting="cubic")
    with pytest.raises(ValueError, match="replay_fraction"):
        SelectionConfig(replay_fraction=1.5)


def test_select_data_complexity_writes_the_selected_set(tiny_model_dir, tmp_path):
    import json

    main = load_script("scripts/select_data.py").main

    from train.core.data import write_jsonl
    from train.world.arithmetic import make_problems

    write_jsonl(tmp_path / "in.jsonl", make_problems(6, levels=(5,), seed=0))  # 4-5 digit answers
    argv = ["complexity", "--model", str(tiny_model_dir), "--input", str(tmp_path / "in.jsonl"),
            "--out", str(tmp_path / "sel"), "--num-samples", "2", "--max-new-tokens", "3", "--target-size", "3",
            "--weighting", "uniform"]  # fmt: skip
    stats = main(argv)
    assert stats["candidates"] == 6 and stats["selected"] == 3
    assert stats["histogram_before"][-1] == 6  # 3 tokens cannot hold a 4-digit answer: complexity 1
    rows = [json.loads(x) for x in (tmp_path / "sel" / "complexity.jsonl").read_text().splitlines()]
    assert [r["complexity"] for r in rows] == [1.0] * 6
    assert len((tmp_path / "sel" / "selected.jsonl").read_text().splitlines()) == 3
    assert (tmp_path / "sel" / "complexity.png").exists()


def test_vllm_complexity_gets_the_memory_share_and_the_students_think_format(tmp_path, monkeypatch):
    student = tmp_path / "student"
    build_tokenizer(think=PANGU_THINK).save_pretrained(student)  # an openPangu-style student: [unused16]/[unused17]
    seen = {}

    class FakeVLLM:
        def __init__(self, config, think, tokenizer=None, seed=None):
            seen.update(config=config, think=think, tokenizer=tokenizer)
            self.think = think

        def sample(self, prompts, params, mode=None):
            seen.update(n=params.n, mode=mode, seed=params.seed)
            right = PANGU_THINK.format("42", "a first guess, \\boxed{41}, then 12+30=42")
            wrong = PANGU_THINK.format("41", "12+30=42")
            return [
                [Reply(right, 9), Reply(wrong, 9)] if p.startswith("A") else [Reply(right, 9)] * 2 for p in prompts
            ]

        def close(self):
            seen["closed"] = True

    monkeypatch.setattr(base, "VLLMSampler", FakeVLLM)
    records = [{"prompt": p, "task": "math", "answer": "42"} for p in ("A: 12+30?", "B: 12+30?")]
    out = measure_complexity(student, None, records, num_samples=2, backend="vllm", gpu_memory_utilization=0.6, seed=3)
    # Read with <think>, the boxed guess in the trace would be the answer and every reply would fail.
    assert out == [0.5, 0.0]
    assert seen["config"].backend == "vllm" and seen["config"].model == str(student)
    assert seen["config"].gpu_memory_utilization == 0.6
    assert seen["think"] == PANGU_THINK and seen["closed"]
    assert (seen["n"], seen["mode"], seen["seed"]) == (2, "slow", 3)
