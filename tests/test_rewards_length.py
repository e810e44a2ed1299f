"""Length rewards: DAPO overlong punishment, cosine length with correct verify order, per-mode budgets, and how
lengths are counted (completion_ids, a tokenizer, or characters)."""

from __future__ import annotations

import pytest
from trl.rewards import get_soft_overlong_punishment

from rewards.length import CosineLengthReward, ModeLengthReward, OverlongReward, count_tokens
from train.core.modes import QWEN3_THINK, format_response
from train.world.tiny import build_tokenizer

FAST = format_response("42", "", QWEN3_THINK)
SLOW = format_response("42", "6 times 7", QWEN3_THINK)


def ids(n: int) -> list[int]:
    return [7] * n


def count_words(text: str) -> int:
    return len(text.split())


# ----------------------------------------------------------------------------------------------------- overlong


@pytest.mark.parametrize(
    ("n", "expected"), [(0, 0.0), (6, 0.0), (7, -0.25), (8, -0.5), (9, -0.75), (10, -1.0), (11, -1.0), (500, -1.0)]
)
def test_overlong_values_in_tokens(n, expected):
    reward = OverlongReward(max_length=10, cache=4)
    assert reward(["text"], completion_ids=[ids(n)]) == [expected]
    assert get_soft_overlong_punishment(10, 4)([ids(n)]) == [expected]  # agrees with trl's DAPO implementation


def test_overlong_counts_characters_or_tokenizer_tokens():
    assert OverlongReward(max_length=10, cache=4, unit="chars")(["x" * 8, "x" * 3]) == [-0.5, 0.0]
    assert OverlongReward(10, 4, tokenizer=count_words)(["a b c d e f g h", "a"]) == [-0.5, 0.0]
    # one token per character, no special tokens added by encode
    tokenizer = build_tokenizer(kind="char", think=QWEN3_THINK)
    assert count_tokens(tokenizer, "abcdefgh") == 8
    assert OverlongReward(10, 4, tokenizer=tokenizer)(["abcdefgh"]) == [-0.5]
    # completion_ids, when trl passes them, win over the tokenizer: they are what the model generated.
    assert OverlongReward(10, 4, tokenizer=tokenizer)(["abcdefgh"], completion_ids=[ids(2)]) == [0.0]


def test_overlong_without_a_token_count_is_none(caplog):
    assert OverlongReward(10, 4)(["x" * 100]) == [None]
    assert "neither a completion_ids column nor a tokenizer" in caplog.text


def test_overlong_cache_zero_is_a_hard_limit():
    assert OverlongReward(10, 0)(["", ""], completion_ids=[ids(10), ids(11)]) == [0.0, -1.0]


@pytest.mark.parametrize(
    "kwargs", [{"max_length": 0}, {"max_length": 10, "cache": 11}, {"cache": -1}, {"unit": "words"}]
)
def test_overlong_rejects_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        OverlongReward(**kwargs)


def test_tokenizer_must_count():
    with pytest.raises(TypeError, match="tokenizer"):
        OverlongReward(tokenizer=42)


# ------------------------------------------------------------------------------------------------ cosine length


@pytest.mark.parametrize(
    ("completion", "answer", "n", "expected"),
    [
        ("\\boxed{4}", "4", 0, 1.0),  # correct and short: max_value_correct
        ("\\boxed{4}", "4", 50, 0.75),  # half way: cos = 0
        ("\\boxed{4}", "4", 100, 0.5),  # at max_length: min_value_correct
        ("\\boxed{4}", "4", 400, 0.5),  # beyond: as at max_length
        ("\\boxed{5}", "4", 0, -1.0),  # wrong and short: the worst
        ("\\boxed{5}", "4", 50, -0.75),
        ("\\boxed{5}", "4", 100, -0.5),
        ("<think>\\boxed{4}</think>no idea", "4", 50, -0.75),  # the think block is not the answer
        ("<think>\\boxed{4}", "4", 50, -0.75),  # unclosed: no answer, wrong
        # verify(gold, answer): a gold relation accepts an interval answer (open-r1's reversed call says wrong)...
        ("$(1,2)$", "1<x<2", 50, 0.75),
        # ...and a gold interval does not accept a relation (open-r1 says right).
        ("$1<x<2$", "(1,2)", 50, -0.75),
        ("\\boxed{4}", "no answer", 50, None),  # unparseable reference: None (open-r1: 1.0)
        ("\\boxed{4}", "", 50, None),
    ],
)
def test_cosine_length_values(completion, answer, n, expected):
    reward = CosineLengthReward(max_length=100, think=QWEN3_THINK)
    assert reward([completion], answer=[answer], completion_ids=[ids(n)]) == [pytest.approx(expected)]


def test_cosine_length_task_routing_and_custom_range():
    reward = CosineLengthReward(max_length=100, min_value_correct=0.0, max_value_correct=2.0, think=QWEN3_THINK)
    out = reward(["\\boxed{4}"] * 2, answer=["4"] * 2, task=["math", "code"], completion_ids=[ids(50), ids(50)])
    assert out == [pytest.approx(1.0), None]
    chars = CosineLengthReward(max_length=18, unit="chars", think=QWEN3_THINK)  # "\boxed{4}" is 9 characters: half way
    assert chars(["\\boxed{4}"], answer=["4"]) == [pytest.approx(0.75)]


# -------------------------------------------------------------------------------------------------- mode length


@pytest.mark.parametrize(
    ("completion", "n", "expected"),
    [
        (FAST, 10, 0.0),
        (FAST, 12, -0.4),  # 2 over a budget of 10, ramp 0.5 * 10 = 5
        (FAST, 15, -1.0),
        (FAST, 300, -1.0),
        (SLOW, 12, 0.0),  # slow replies have their own budget
        (SLOW, 100, 0.0),
        (SLOW, 120, -0.4),
        (SLOW, 1000, -1.0),
        ("<think>still going", 120, -0.4),  # unclosed: slow
        ("42", 12, -0.4),  # no block: answered directly, fast
    ],
)
def test_mode_length_values(completion, n, expected):
    reward = ModeLengthReward(fast_budget=10, slow_budget=100, ramp=0.5, think=QWEN3_THINK)
    assert reward([completion], completion_ids=[ids(n)]) == [pytest.approx(expected)]


def test_mode_length_prefilled_block_and_scale():
    reward = ModeLengthReward(fast_budget=10, slow_budget=100, max_penalty=-0.5, think=QWEN3_THINK)
    prefilled_slow = "<|im_start|>assistant\n<think>\nlong thought\n</think>\n\n"
    assert reward(["42"], completion_ids=[ids(12)], prompts=[prefilled_slow]) == [0.0]  # slow budget
    assert reward(["42"], completion_ids=[ids(12)], prompts=["Q /no_think"]) == [pytest.approx(-0.2)]
    assert ModeLengthReward(fast_budget=3, unit="chars", think=QWEN3_THINK)(["<think></think>12345"]) == [-1.0]


@pytest.mark.parametrize("kwargs", [{"fast_budget": 0}, {"slow_budget": -1}, {"ramp": 0}, {"max_penalty": 1.0}])
def test_mode_length_rejects_bad_parameters(kwargs):
    with pytest.raises(ValueError, match="mode_length"):
        ModeLengthReward(**kwargs)
