"""The fusion builder labels fixed pass rates exactly, picks the shortest correct targets and renders every tag."""

from __future__ import annotations

import json

import pytest
import torch

import train.dual_system.fusion as fusion
from train.core.checks import exact_match
from train.core.loading import load_model_and_tokenizer
from train.core.modes import PANGU_THINK, QWEN3_THINK, Mode, detect_mode, parse_response
from train.dual_system.fusion import FusionBuildConfig, decide, fusion_records
from train.eval.labels import LabelRule, label_from_rates, margin_in_samples
from train.sampling.reply import Reply
from train.sampling.transformers import TransformersSampler

RULE = LabelRule(fast_threshold=0.75, margin=0.1)


def fast(answer, tokens=None):
    text = f"<think>\n\n</think>\n\n{answer}"
    return Reply(text, tokens or len(text))


def slow(answer, steps="s", tokens=None):
    text = f"<think>\n{steps}\n</think>\n\n{answer}"
    return Reply(text, tokens or len(text))


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


def test_margin_in_samples_is_the_misses_it_tolerates():
    assert margin_in_samples(0.1, 8) == 0  # finer than 1/8: fast 7/8 against slow 8/8 is slow (the row above)
    assert margin_in_samples(0.125, 8) == 1 and margin_in_samples(0.25, 8) == 2
    assert margin_in_samples(0.1, 10) == 1  # 0.1 * 10 is 1 up to rounding
    assert margin_in_samples(0.0, 8) == 0


def test_the_default_margin_is_one_sample():
    assert FusionBuildConfig(num_samples=8).rule().margin == 0.125
    assert FusionBuildConfig(num_samples=4).rule().margin == 0.25
    assert FusionBuildConfig(num_samples=8, margin=0.0).rule().margin == 0.0  # an explicit margin is kept
    rule = FusionBuildConfig(num_samples=8).rule()
    assert label_from_rates(0.875, 1.0, rule) == "fast" and label_from_rates(0.75, 1.0, rule) == "slow"


def test_rule_validates():
    with pytest.raises(ValueError, match="fast_threshold"):
        LabelRule(fast_threshold=1.5)


REC = {"id": "p1", "prompt": "Compute 2+3.", "task": "math", "answer": "5", "difficulty": 1}


def test_decide_counts_only_replies_in_the_asked_mode_and_keeps_the_shortest():
    fast_samples = [fast(5, 9), fast(5, 7), fast(4, 3), slow(5, tokens=2)]  # a thinking reply is not a fast answer
    slow_samples = [slow(5, "long steps", 30), slow(5, "st", 20), slow(6, "x", 5), fast(5, 1)]
    r = decide(REC, RULE, exact_match, fast_samples, slow_samples, think=QWEN3_THINK)
    assert (r.fast_rate, r.slow_rate, r.label, r.label_source) == (0.5, 0.5, "slow", "pass_rate")
    assert r.fast_target == fast_samples[1].text and r.slow_target == slow_samples[1].text
    assert r.fast_tokens == pytest.approx(21 / 4) and r.slow_tokens == pytest.approx(56 / 4)


def test_teacher_pool_wins_when_shorter_and_fast_falls_back_to_the_slow_answer():
    pool = [slow(5, "t", 4), slow(7, "", 1)]
    r = decide(REC, RULE, exact_match, [fast(4)] * 4, [slow(5, "long", 30)] * 4, pool, think=QWEN3_THINK)
    assert r.label == "slow" and r.slow_target_source == "teacher" and r.slow_target == pool[0].text
    assert r.fast_target_source == "slow" and parse_response(r.fast_target, QWEN3_THINK).mode == "fast"
    assert parse_response(r.fast_target, QWEN3_THINK).answer == "5"


def test_no_correct_reply_means_no_records():
    r = decide(REC, RULE, exact_match, [fast(4)] * 2, [slow(6)] * 2, think=QWEN3_THINK)
    assert not r.usable and fusion_records(REC, r) == []


def test_unverifiable_prompts_use_judge_then_difficulty_then_slow():
    rec = {"id": "g", "prompt": "Write a poem.", "task": "general", "difficulty": 1}
    pool = [slow("poem", tokens=9), fast("short poem", tokens=3)]
    rule = LabelRule(fallback_max_easy_difficulty=2)
    r = decide(rec, rule, exact_match, pool=pool, think=QWEN3_THINK)
    assert (r.label, r.label_source, r.fast_rate) == ("fast", "difficulty", None)
    assert r.fast_target == pool[1].text and r.slow_target == pool[0].text
    assert r.fast_target_source == r.slow_target_source == "teacher"
    assert decide({**rec, "difficulty": 5}, rule, exact_match, pool=pool, think=QWEN3_THINK).label == "slow"
    assert decide(rec, rule, exact_match, pool=pool, judge=lambda _: "slow", think=QWEN3_THINK).label_source == "judge"
    assert decide(rec, RULE, exact_match, pool=pool, think=QWEN3_THINK).label_source == "default"
    with pytest.raises(ValueError, match="judge said"):
        decide(rec, rule, exact_match, pool=pool, judge=lambda _: "maybe", think=QWEN3_THINK)


def test_records_per_tag(tiny_model_dir):
    from train.core.loading import load_tokenizer
    from train.sft import to_sft_example

    r = decide(REC, RULE, exact_match, [fast(5)] * 4, [slow(5)] * 4, think=QWEN3_THINK)
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

    def fake(sampler, recs, mode, config, tokenizer=None, seed=None):
        calls.append(mode)
        return [scripted[(r["id"], mode)] for r in recs]

    monkeypatch.setattr(fusion, "sample_replies", fake)
    config = FusionBuildConfig(check="exact", fallback_max_easy_difficulty=2, chunk_size=1)
    sampler = TransformersSampler(None, tok)
    stats = fusion.build_fusion(None, tok, records, config, tmp_path, sampler=sampler)
    assert stats["labels"] == {"fast": 2, "slow": 1} and stats["label_sources"] == {"pass_rate": 2, "difficulty": 1}
    assert stats["per_difficulty"]["1"]["fast"] == 2 and stats["per_difficulty"]["3"]["slow"] == 1
    assert stats["per_difficulty"]["3"]["mean_fast_rate"] == 0.25
    # "u" has only a slow teacher reply: its fast target is that reply's answer behind an empty block.
    assert stats["records"] == 12 and stats["fast_target_sources"] == {"model": 2, "slow": 1}
    rows = [json.loads(x) for x in (tmp_path / "fusion.jsonl").read_text().splitlines()]
    auto = {r["id"]: r for r in rows if r["fusion_tag"] == "auto_think"}
    assert parse_response(auto["h-auto_think"]["response"], QWEN3_THINK).mode == "slow"
    assert parse_response(auto["e-auto_think"]["response"], QWEN3_THINK).mode == "fast"
    assert (tmp_path / "labels.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "stats.json").read_text())["labels"] == stats["labels"]
    # Resume: everything is labelled already, so nothing is sampled again, even after a torn line.
    calls.clear()
    with (tmp_path / "labels.jsonl").open("a") as f:
        f.write('{"id": "torn')
    assert fusion.build_fusion(None, tok, records, config, tmp_path, sampler=sampler)["labels"] == stats["labels"]
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
    sampler = TransformersSampler(model, tok)
    fast_c = fusion.sample_replies(sampler, recs, Mode.FAST, config)[0]
    assert len(fast_c) == 2 and all(c.text.startswith("<think>\n\n</think>\n\n") for c in fast_c)
    assert all(c.num_tokens == 6 + min(3, c.num_tokens - 6) for c in fast_c)
    slow_c = fusion.sample_replies(sampler, recs, Mode.SLOW, config)[0]
    assert all(c.num_tokens <= 3 for c in slow_c)


class ScriptedSampler:
    """A sampler with fixed replies per prompt and mode, in ``think``'s tags; it records what it was asked."""

    def __init__(self, think, replies):
        self.think, self.replies, self.calls = think, replies, []
        self.chat_template_kwargs = {}

    def sample(self, prompts, params, mode=None):
        prefill = self.chat_template_kwargs.get("enable_thinking") is False
        self.calls.append((prefill, params.n))
        return [self.replies[(p, prefill)][: params.n] for p in prompts]


def test_labels_of_a_pangu_model_and_a_qwen3_teacher(tmp_path):
    """Replies are read in the student's tags; the teacher's pool is rewritten into them before it is a target."""
    p = PANGU_THINK
    pangu_fast = Reply("5", 2)  # a prefilled fast reply: the empty block is in the prompt
    replies = {
        ("Compute 2+3.", True): [pangu_fast] * 4,
        ("Compute 2+3.", False): [Reply(p.format("5", "a long trace of steps"), 40)] * 4,
        ("Compute 9+9.", True): [Reply("17", 3)] * 4,
        ("Compute 9+9.", False): [Reply(p.format("18", "9+9=18"), 30)] * 4,
    }
    sampler = ScriptedSampler(p, replies)
    records = [
        {"id": "e", "prompt": "Compute 2+3.", "task": "math", "answer": "5", "difficulty": 1},
        {"id": "h", "prompt": "Compute 9+9.", "task": "math", "answer": "18", "difficulty": 2,
         "response": "<think>\n9+9\n</think>\n\n18", "think_start": "<think>", "think_end": "</think>"},
    ]  # fmt: skip
    config = FusionBuildConfig(check="exact")
    stats = fusion.build_fusion(None, None, records, config, tmp_path, sampler=sampler)
    assert sampler.calls == [(True, 4), (False, 4)]
    assert stats["labels"] == {"fast": 1, "slow": 1} and stats["label_sources"] == {"pass_rate": 2}
    labels = {r["id"]: r for r in map(json.loads, (tmp_path / "labels.jsonl").read_text().splitlines())}
    assert (labels["e"]["fast_rate"], labels["e"]["slow_rate"]) == (1.0, 1.0)
    assert (labels["h"]["fast_rate"], labels["h"]["slow_rate"]) == (0.0, 1.0)
    # The prefilled block is put back in the student's tags; the teacher's shorter trace wins, in the student's tags.
    assert labels["e"]["fast_target"] == "[unused16]\n\n[unused17]\n\n5"
    assert labels["h"]["slow_target"] == "[unused16]\n9+9\n[unused17]\n\n18"
    assert labels["h"]["slow_target_source"] == "teacher"
    assert labels["h"]["fast_target"] == p.format("18") and labels["h"]["fast_target_source"] == "slow"
    rows = [json.loads(x) for x in (tmp_path / "fusion.jsonl").read_text().splitlines()]
    assert all("<think>" not in r["response"] and "think_start" not in r for r in rows)


def test_pool_format_and_merge():
    qwen_reply = "<think>\nt\n</think>\n\n5"
    teacher = {"response": qwen_reply, "think_start": "<think>", "think_end": "</think>"}
    assert fusion.pool_of(teacher, PANGU_THINK) == [Reply("[unused16]\nt\n[unused17]\n\n5", 26)]
    assert fusion.pool_of({"response": qwen_reply}, QWEN3_THINK) == [Reply(qwen_reply, len(qwen_reply))]
    pangu_reply = "[unused16]\ns\n[unused17]\n\n2"
    recs = [{"id": "x", "prompt": "Compute 1+1.", "task": "math", **teacher},
            {"id": "x", "prompt": "Compute 1+1. /think", "task": "math", "response": pangu_reply}]  # fmt: skip
    with pytest.raises(ValueError, match="two think formats"):
        fusion.merge_prompts(recs)


def test_a_pangu_model_samples_fast_replies_in_its_own_tags(tmp_path):
    from train.core.loading import load_model_and_tokenizer
    from train.world.tiny import make_tiny

    model, tok = load_model_and_tokenizer(make_tiny(tmp_path / "pangu", size="nano", think=PANGU_THINK))
    config = FusionBuildConfig(num_samples=2, max_new_tokens=3, check="exact")
    recs = [{"id": "a", "prompt": "Compute 1+1.", "task": "math", "answer": "2"}]
    replies = fusion.sample_replies(TransformersSampler(model, tok), recs, Mode.FAST, config)[0]
    assert all(r.text.startswith("[unused16]\n\n[unused17]\n\n") for r in replies)


def test_a_seeded_build_labels_the_same_whatever_the_global_random_state(tmp_path, tiny_model_dir):
    """The run's seed decides the sampled replies: a fresh process (any torch state) gives the same labels file."""
    model, tok = load_model_and_tokenizer(tiny_model_dir)
    records = [
        {"id": f"p{i}", "prompt": f"Compute {i}+{i + 1}.", "task": "math", "answer": str(2 * i + 1)} for i in range(6)
    ]
    config = FusionBuildConfig(num_samples=3, temperature=1.0, max_new_tokens=8, check="exact", chunk_size=4)
    files = []
    for run, state in enumerate((1, 2, 2)):
        torch.manual_seed(state)  # stands for the random state a fresh process starts with
        out = tmp_path / f"run{run}"
        fusion.build_fusion(model, tok, records, config, out, seed=None if run == 2 else 7)
        files.append([json.loads(x) for x in (out / "labels.jsonl").read_text().splitlines()])
    assert files[0] == files[1]
    sampled = lambda rows: [(r["fast_tokens"], r["slow_tokens"]) for r in rows]  # noqa: E731
    assert sampled(files[1]) != sampled(files[2])  # unseeded, the same state draws other replies
