"""Verification: the MARS rule layer, the judge layer for what rules can't check, shortest-correct selection."""

from __future__ import annotations

from rewards.verify import Verdict, Verifier, check, rejection_sample, reply_correct, shortest_correct
from train.core.modes import PANGU_THINK, QWEN3_THINK
from train.sampling.pass_rate import pass_rates
from train.sampling.transformers import TransformersSampler

RECORD = {"id": "a", "prompt": "Compute 12+30.", "task": "math", "answer": "42"}


def reply(answer: str, trace: str = "2+0+0=2\n1+3+0=4") -> str:
    return f"<think>\n{trace}\n</think>\n\n{answer}"


def test_shortest_correct_on_a_fixed_set():
    samples = [{"num_tokens": n} for n in (30, 10, 20, 10, 12)]
    verdicts = [Verdict(ok, "rule") for ok in (True, False, True, True, True)]
    assert shortest_correct(samples, verdicts) == 3  # 10 tokens; the 10-token sample 1 is wrong
    assert shortest_correct(samples[:3], verdicts[:3]) == 2
    tie = [{"num_tokens": 5}, {"num_tokens": 5}]
    assert shortest_correct(tie, [Verdict(True, "rule")] * 2) == 0  # a tie goes to the earliest
    assert shortest_correct(tie, [Verdict(False, "rule"), Verdict(None, "none")]) is None


def test_rule_layer_math():
    v = Verifier(think=QWEN3_THINK)
    assert v.rule(reply("42"), RECORD) is True
    assert v.rule(reply("43"), RECORD) is False
    assert v.rule("<think>\nno end", RECORD) is False  # an unclosed think block gives no answer
    assert v.rule(reply("42"), {**RECORD, "task": "general"}) is None  # no rule for general text


class FakeJudge:
    def __init__(self, score: float):
        self.score, self.seen = score, []

    def __call__(self, completions, **columns):
        self.seen += completions
        return [self.score] * len(completions)


def test_model_layer_only_judges_what_rules_cannot_decide():
    general = {"id": "g", "prompt": "Name a colour.", "task": "general", "answer": "red"}
    judge = FakeJudge(0.8)
    verifier = Verifier(think=QWEN3_THINK, judge=judge, judge_threshold=0.5)
    verdicts = verifier.verify([RECORD, general], [[reply("42"), reply("1")], ["blue"]])
    assert verdicts == [[Verdict(True, "rule"), Verdict(False, "rule")], [Verdict(True, "model")]]
    assert judge.seen == ["blue"]
    strict = Verifier(think=QWEN3_THINK, judge=FakeJudge(0.4), judge_threshold=0.5).verify([general], [["blue"]])
    assert strict == [[Verdict(False, "model")]]
    no_judge = Verifier(think=QWEN3_THINK)
    assert no_judge.verify([general], [["blue"]]) == [[Verdict(None, "none")]]  # no judge: undecided


def test_rejection_sampling_keeps_the_shortest_verified_reply():
    rows = [
        {**RECORD, "samples": [
            {"text": reply("42", "pad\n" * 5 + "2+0+0=2\n1+3+0=4"), "num_tokens": 40},
            {"text": reply("41"), "num_tokens": 20},  # shortest, but wrong
            {"text": reply("42"), "num_tokens": 25},
            {"text": reply("42", "check\n" * 9), "num_tokens": 60},
        ]},
        {"id": "b", "prompt": "Compute 1+1.", "task": "math", "answer": "2",
         "samples": [{"text": reply("3"), "num_tokens": 9}]},
    ]  # fmt: skip
    kept, report = rejection_sample(rows, Verifier(think=QWEN3_THINK), progress=False)
    assert len(kept) == 1 and kept[0]["id"] == "a"
    assert kept[0]["response"] == reply("42") and kept[0]["num_tokens"] == 25
    assert (kept[0]["num_correct"], kept[0]["num_samples"]) == (3, 4)
    assert "samples" not in kept[0]
    r = report["math"]
    assert (r["prompts"], r["kept"], r["samples"], r["correct"], r["by_rule"]) == (2, 1, 5, 3, 5)
    assert r["kept_rate"] == 0.5 and r["mean_kept_tokens"] == 25


def test_check_is_a_pass_rate_checker(tiny_model_dir):
    assert check("42", RECORD) and not check("41", RECORD) and not check(None, RECORD)
    assert check("\\boxed{42}", RECORD)  # math-verify, not string equality
    general = {"task": "general", "answer": "red"}
    assert check("red", general) and not check("blue", general)  # no rule: exact match
    assert reply_correct(reply("42"), RECORD, QWEN3_THINK)
    from train.core.loading import load_model, load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    model = load_model(tiny_model_dir, tokenizer=tok)
    rates = pass_rates(TransformersSampler(model, tok), [RECORD], 2, check, max_new_tokens=1)
    assert rates[0].rate == 0.0 and rates[0].complexity == 1.0  # one token cannot say "42"


def test_rule_layer_code_runs_the_tests():
    import importlib.util

    import pytest

    if importlib.util.find_spec("rewards.code") is None:
        pytest.skip("rewards.code is not there")
    rec = {
        "id": "c",
        "prompt": "Print the sum of two ints.",
        "task": "code",
        "tests": [{"input": "1 2\n", "output": "3"}],
    }
    program = "```python\na, b = map(int, input().split())\nprint(a {} b)\n```"
    v = Verifier(think=QWEN3_THINK)
    assert v.rule(reply(program.format("+")), rec) is True
    assert v.rule(reply(program.format("-")), rec) is False
    assert check(program.format("+"), rec)


def test_reply_correct_reads_the_given_think_format():
    pangu = PANGU_THINK.format("42", "first guess \\boxed{41}, then 12+30=42")
    assert reply_correct(pangu, RECORD, PANGU_THINK)
    assert not reply_correct(PANGU_THINK.format("41", "4+2=42"), RECORD, PANGU_THINK)  # "42" in the trace only
    # With the other model's tags the trace is read as part of the answer, and its boxed guess fails the check.
    assert not reply_correct(pangu, RECORD, QWEN3_THINK)
    assert not reply_correct("[unused16]\n12+30=42", RECORD, PANGU_THINK)  # unclosed: no answer


def test_rule_layer_reads_the_verifiers_think_format():
    v = Verifier(think=PANGU_THINK)
    assert v.rule(PANGU_THINK.format("42", "steps"), RECORD) is True
    assert v.rule(PANGU_THINK.format("43", "steps 42"), RECORD) is False
    assert v.rule("[unused16]\n42", RECORD) is False  # an unclosed block has no answer
