"""The fusion builder labels fixed pass rates exactly, picks the shortest correct targets and renders every tag."""

from __future__ import annotations

import json

import pytest

import train.dual_system.fusion as fusion
from train.core.checks import exact_match
from train.core.modes import Mode, detect_mode, parse_response
from train.dual_system.fusion import Candidate, FusionBuildConfig, decide, fusion_records
from train.eval.labels import LabelRule, label_from_rates

RULE = LabelRule(fast_threshold=0.75, margin=0.1)


def fast(answer, tokens=None):
    text = f"<think>\n\n</think>\n\n{answer}"
    return Candidate(text, tokens or len(text), "model")


def slow(answer, steps="s", tokens=None, source="model"):
    text = f"<think>\n{steps}\n</think>\n\n{answer}"
    return Candidate(text, tokens or len(text), source)


@pytest.mark.parametrize(
    ("fast_rate", "slow_rate", "label"),
    [
        (1.0, 1.0, "fast"),
        (0.75, 0.75, "fast"),  # exactly at the threshold
        (0.75, 0.85, "fast"),  # 0.1 below slow: not *clearly* below
        (0.75, 0.875, "slow"),  # more than the margin below slow
        (0.625, 0.0, "slow"),  # under the threshold, however bad slow is
        (0.875, 1.0, "slow"),
        (0.9, 1.0, "fast"),
        (0.0, 0.0, "slow"),
        (1.0, 0.0, "fast"),
    ],
)
def test_label_rule_on_fixed_pass_rates(fast_rate, slow_rate, label):
    assert label_from_rates(fast_rate, slow_rate, RULE) == label


def test_rule_validates():
    with pytest.raises(ValueError, match="fast_threshold"):
        LabelRule(fast_threshold=1.5)


REC = {"id": "p1", "prompt": "Compute 2+3.", "task": "math", "answer": "5", "difficulty": 1}


def test_decide_counts_only_replies_in_the_asked_mode_and_keeps_the_shortest():
    fast_samples = [fast(5, 9), fast(5, 7), fast(4, 3), slow(5, tokens=2)]  # a thinking reply is not a fast answer
    slow_samples = [slow(5, "long steps", 30), slow(5, "st", 20), slow(6, "x", 5), fast(5, 1)]
    r = decide(REC, RULE, exact_match, fast_samples, slow_samples)
    assert (r.fast_rate, r.slow_rate, r.label, r.label_source) == (0.5, 0.5, "slow", "pass_rate")
    assert r.fast_target == fast_samples[1].text and r.slow_target == slow_samples[1].text
    assert r.fast_tokens == pytest.approx(21 / 4) and r.slow_tokens == pytest.approx(56 / 4)


def test_teacher_pool_wins_when_shorter_and_fast_falls_back_to_the_slow_answer():
    pool = [slow(5, "t", 4, source="teacher"), slow(7, "", 1, source="teacher")]
    r = decide(REC, RULE, exact_match, [fast(4)] * 4, [slow(5, "long", 30)] * 4, pool)
    assert r.label == "slow" and r.slow_target_source == "teacher" and r.slow_target == pool[0].text
    assert r.fast_target_source == "slow" and parse_response(r.fast_target).mode == "fast"
    assert parse_response(r.fast_target).answer == "5"


def test_no_correct_reply_means_no_records():
    r = decide(REC, RULE, exact_match, [fast(4)] * 2, [slow(6)] * 2)
    assert not r.usable and fusion_records(REC, r) == []


def test_unverifiable_prompts_use_judge_then_difficulty_then_slow():
    rec = {"id": "g", "prompt": "Write a poem.", "task": "general", "difficulty": 1}
    pool = [slow("poem", tokens=9, source="teacher"), fast("short poem", tokens=3)]
    rule = LabelRule(fallback_max_easy_difficulty=2)
    r = decide(rec, rule, exact_match, pool=pool)
    assert (r.label, r.label_source, r.fast_rate) == ("fast", "difficulty", None)
    assert r.fast_target == pool[1].text and r.slow_target == pool[0].text
    assert decide({**rec, "difficulty": 5}, rule, exact_match, pool=pool).label == "slow"
    assert decide(rec, rule, exact_match, pool=pool, judge=lambda _: "slow").label_source == "judge"
    assert decide(rec, RULE, exact_match, pool=pool).label_source == "default"
    with pytest.raises(ValueError, match="judge said"):
        decide(rec, rule, exact_match, pool=pool, judge=lambda _: "maybe")


def test_records_per_tag(tiny_model_dir):
    from train.core.loading import load_tokenizer
    from train.sft import to_sft_example

    r = decide(REC, RULE, exact_match, [fast(5)] * 4, [slow(5)] * 4)
    assert r.label == "fast"
    rows = {row["fusion_tag"]: row for row in fusion_records(REC, r)}
    assert set(rows) == {"no_think", "think", "none", "auto_think"}
    assert rows["no_think"]["prompt"] == "Compute 2+3. /no_think"
    assert rows["think"]["prompt"] == "Compute 2+3. /think" and rows["none"]["prompt"] == "Compute 2+3."
    assert rows["auto_think"]["prompt"] == "Compute 2+3. /auto_think"
    assert rows["no_think"]["response"] == r.fast_target == rows["auto_think"]["response"]
    assert rows["think"]["response"] == rows["none"]["response"] == r.slow_target
    assert len({row["id"] for row in rows.values()}) == 4 and rows["auto_think"]["label"] == "fast"
    tok = load_tokenizer(tiny_model_dir)
    expected = {"no_think": Mode.FAST, "think": Mode.SLOW, "none": Mode.SLOW, "auto_think": Mode.AUTO}
    for tag, row in rows.items():
        messages = to_sft_example(row)["messages"]
        assert detect_mode(messages[:-1]) == expected[tag]
        enc = tok.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        trained = [t for t, m in zip(enc["input_ids"], enc["assistant_masks"]) if m]
        # The loss covers exactly the target reply and the end-of-turn token, never the tagged prompt.
        assert tok.decode(trained) == row["response"] + "<|im_end|>\n"


def test_build_writes_files_and_resumes(tmp_path, monkeypatch, tiny_model_dir):
    from train.core.loading import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    records = [
        {"id": "e", "prompt": "Compute 1+1.", "task": "math", "answer": "2", "difficulty": 1},
        {"id": "h", "prompt": "Compute 123+456.", "task": "math", "answer": "579", "difficulty": 3},
        {
            "id": "u",
            "prompt": "Say hi.",
            "task": "general",
            "difficulty": 1,
            "response": "<think>\nhm\n</think>\n\nhi",
        },
    ]
    scripted = {
        ("e", Mode.FAST): [fast(2)] * 4,
        ("e", Mode.SLOW): [slow(2)] * 4,
        ("h", Mode.FAST): [fast(578)] * 3 + [fast(579)],
        ("h", Mode.SLOW): [slow(579)] * 4,
    }
    calls = []

    def fake(model, tokenizer, recs, mode, config):
        calls.append(mode)
        return [scripted[(r["id"], mode)] for r in recs]

    monkeypatch.setattr(fusion, "sample_candidates", fake)
    config = FusionBuildConfig(check="exact", fallback_max_easy_difficulty=2, chunk_size=1)
    stats = fusion.build_fusion(None, tok, records, config, tmp_path)
    assert stats["labels"] == {"fast": 2, "slow": 1} and stats["label_sources"] == {"pass_rate": 2, "difficulty": 1}
    assert stats["per_difficulty"]["1"]["fast"] == 2 and stats["per_difficulty"]["3"]["slow"] == 1
    assert stats["per_difficulty"]["3"]["mean_fast_rate"] == 0.25
    # "u" has only a slow teacher reply: its fast target is that reply's answer behind an empty block.
    assert stats["records"] == 12 and stats["fast_target_sources"] == {"model": 2, "slow": 1}
    rows = [json.loads(x) for x in (tmp_path / "fusion.jsonl").read_text().splitlines()]
    auto = {r["id"]: r for r in rows if r["fusion_tag"] == "auto_think"}
    assert parse_response(auto["h-auto_think"]["response"]).mode == "slow"
    assert parse_response(auto["e-auto_think"]["response"]).mode == "fast"
    assert (tmp_path / "labels.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "stats.json").read_text())["labels"] == stats["labels"]
    # Resume: everything is labelled already, so nothing is sampled again, even after a torn line.
    calls.clear()
    with (tmp_path / "labels.jsonl").open("a") as f:
        f.write('{"id": "torn')
    assert fusion.build_fusion(None, tok, records, config, tmp_path)["labels"] == stats["labels"]
    assert calls == []
    assert len((tmp_path / "labels.jsonl").read_text().splitlines()) == 3


def test_records_of_one_problem_merge_into_one_prompt(tmp_path, tiny_model_dir):
    recs = [
        {"id": "x", "prompt": "Compute 1+1.", "task": "math", "answer": "2", "response": "<think>\ns\n</think>\n\n2"},
        {
            "id": "x",
            "prompt": "Compute 1+1. /no_think",
            "task": "math",
            "answer": "2",
            "response": "<think>\n\n</think>\n\n2",
        },
    ]
    merged = fusion.merge_prompts(recs)
    assert len(merged) == 1 and merged[0]["prompt"] == "Compute 1+1." and len(merged[0]["pool"]) == 2
    with pytest.raises(ValueError, match="two different prompts"):
        fusion.merge_prompts(recs + [{"id": "x", "prompt": "Other", "task": "math"}])


def test_fast_samples_carry_the_prefilled_block(tiny_model_dir):
    from train.core.loading import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(tiny_model_dir)
    recs = [{"id": "a", "prompt": "Compute 1+1.", "task": "math", "answer": "2"}]
    config = FusionBuildConfig(num_samples=2, max_new_tokens=3, check="exact")
    fast_c = fusion.sample_candidates(model, tok, recs, Mode.FAST, config)[0]
    assert len(fast_c) == 2 and all(c.text.startswith("<think>\n\n</think>\n\n") for c in fast_c)
    assert all(c.num_tokens == 6 + min(3, c.num_tokens - 6) for c in fast_c)
    slow_c = fusion.sample_candidates(model, tok, recs, Mode.SLOW, config)[0]
    assert all(c.num_tokens <= 3 for c in slow_c)
