"""Repetition penalty (exact values, including short texts and CJK) and the loop detector on ids and text."""

from __future__ import annotations

import pytest
from trl.rewards import get_repetition_penalty_reward

from rewards.repetition import RepetitionReward, repetition_ratio, words
from train.sampling.loops import LoopInfo, detect_loop


@pytest.mark.parametrize(
    ("text", "ngram_size", "max_penalty", "expected"),
    [
        ("", 3, -1.0, 0.0),
        ("a b", 3, -1.0, 0.0),  # fewer words than the n-gram
        ("a b c", 3, -1.0, 0.0),  # a single n-gram cannot repeat
        ("a b c d", 2, -1.0, 0.0),
        ("a a a a a", 2, -1.0, -1.0),  # fully repetitive: the full penalty (trl/open-r1: -0.75)
        ("a a a", 2, -1.0, -1.0),  # also when short (trl/open-r1: -0.5)
        ("x y x y x y", 2, -1.0, -0.75),  # 5 bigrams, 2 distinct: 3 repeats of 4 possible
        ("x y x y x y", 2, -0.5, -0.375),
        ("The cat sat. the CAT sat.", 3, -1.0, -1 / 3),  # lower-cased; 4 trigrams, 3 distinct
        ("我我我我", 2, -1.0, -1.0),  # CJK characters are words (str.split() sees one word)
        ("我爱你我爱你", 3, -1.0, -1 / 3),  # 4 trigrams, 3 distinct
    ],
)
def test_repetition_penalty_values(text, ngram_size, max_penalty, expected):
    reward = RepetitionReward(ngram_size=ngram_size, max_penalty=max_penalty)
    assert reward([text]) == [pytest.approx(expected)]


def test_fix_over_trl_on_short_texts():
    ids = [[5, 5, 5], [5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5]]
    assert get_repetition_penalty_reward(2, -1.0)(ids) == [-0.5, pytest.approx(-0.9)]
    assert RepetitionReward(2, -1.0, unit="ids")(["", ""], completion_ids=ids) == [-1.0, -1.0]


def test_ids_unit_uses_completion_ids_and_falls_back_to_words():
    reward = RepetitionReward(ngram_size=2, unit="ids")
    assert reward(["a b c d e"], completion_ids=[[1, 2, 1, 2, 1]]) == [pytest.approx(-2 / 3)]
    assert reward(["a a a a"]) == [-1.0]  # no completion_ids: words


def test_words_split_cjk_and_spaces():
    assert words("Hello 世界 ok!") == ["hello", "世", "界", "ok!"]
    assert repetition_ratio([1, 2, 3, 1, 2, 3], 3) == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    "kwargs", [{"max_penalty": 0.5}, {"ngram_size": 0}, {"unit": "chars"}], ids=["positive", "ngram0", "unit"]
)
def test_repetition_rejects_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        RepetitionReward(**kwargs)


# ------------------------------------------------------------------------------------------------ detect_loop


@pytest.mark.parametrize(
    ("seq", "kwargs", "expected"),
    [
        ([1, 2, 3] + [7, 8, 9] * 3, {"ngram": 3}, LoopInfo(start=3, period=3, length=9)),
        ([1, 2, 3] + [7, 8, 9] * 3 + [7, 8], {"ngram": 3}, LoopInfo(start=3, period=3, length=11)),  # partial copy
        ([1, 2, 3] + [7, 8, 9] * 2 + [7, 8], {"ngram": 3}, None),  # only 2 copies
        (list(range(100)), {}, None),
        ([5] * 5, {"ngram": 2}, None),  # needs 3 copies of a 2-item block: 6 items
        ([5] * 6, {"ngram": 2}, LoopInfo(start=0, period=1, length=6)),
        ([5] * 6, {"ngram": 1}, LoopInfo(start=0, period=1, length=6)),  # the smallest period
        ("ab" * 5, {"ngram": 4}, None),  # "abab" only 2.5 times
        ("xyz" + "ab" * 6, {"ngram": 4}, LoopInfo(start=3, period=2, length=12)),
        ("Hmm." + "I think so. " * 3, {"ngram": 4}, LoopInfo(start=4, period=12, length=36)),
        (list(range(10)) * 3, {"ngram": 4, "window": 29}, None),  # period 10 x 3 does not fit in 29
        (list(range(10)) * 3, {"ngram": 4, "window": 30}, LoopInfo(start=0, period=10, length=30)),
        ([0] + [1, 2] * 100, {"ngram": 2, "window": 16}, LoopInfo(start=1, period=2, length=200)),  # exact start
        ([1, 2, 1, 2, 1, 2, 3], {"ngram": 2}, None),  # the loop must reach the end
        ([], {}, None),
        ("", {}, None),
    ],
)
def test_detect_loop(seq, kwargs, expected):
    assert detect_loop(seq, **kwargs) == expected


def test_detect_loop_on_words_and_min_repeats():
    text = "Let me check. Wait, let me check again. Wait, let me check again. Wait, let me check again."
    loop = detect_loop(text.split(), ngram=3, min_repeats=3)
    assert loop == LoopInfo(start=3, period=5, length=15) and loop.repeats == 3.0
    assert detect_loop(text.split(), ngram=3, min_repeats=4) is None


@pytest.mark.parametrize("kwargs", [{"ngram": 0}, {"window": 0}, {"min_repeats": 1}])
def test_detect_loop_rejects_bad_parameters(kwargs):
    with pytest.raises(ValueError, match="detect_loop"):
        detect_loop([1, 2, 3], **kwargs)
