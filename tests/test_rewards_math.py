"""The math reward: answer extraction after the think block, verify(gold, answer) order, the reference cache,
unparseable references, task routing, and the time limit that works off the main thread."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import math_verify
import pytest
from conftest import load_script
from hypothesis import example, given, settings
from hypothesis import strategies as st

import rewards.math as rmath
from rewards.math import (
    MathReward,
    VerifyTimeout,
    clear_cache,
    parse_answer,
    parse_reference,
    run_with_time_limit,
    verify_answer,
)
from train.core.modes import QWEN3_THINK

MSG = [{"role": "assistant", "content": "<think>2+2</think>\\boxed{4}"}]


@pytest.fixture
def in_process(monkeypatch):
    """Verify in this process: the tests that spy on (or patch) the verifying functions see them run. The worker
    processes run the same functions (tests/test_reliability_rewards.py checks the two agree)."""
    monkeypatch.setattr(rmath, "ISOLATE", False)


@pytest.mark.parametrize(
    ("completion", "answer", "expected"),
    [
        ("<think>6*7</think>The answer is \\boxed{42}.", "42", 1.0),
        ("<think>6*7</think>The answer is \\boxed{41}.", "42", 0.0),
        # Inside the think block is not an answer: closed block with another answer after it...
        ("<think>\\boxed{42}</think>I am not sure, maybe 41.", "42", 0.0),
        # ...closed block with nothing after it, and an unclosed block (no answer at all).
        ("<think>\\boxed{42}</think>", "42", 0.0),
        ("<think>so it is \\boxed{42}", "42", 0.0),
        ("42", "42", 1.0),  # no block: the block was prefilled, the whole text is the answer
        ("I think it is 42</think>42", "42", 1.0),  # opening tag prefilled in the prompt
        ("<think></think>\\boxed{3}. Then 5.", "3", 1.0),  # \boxed wins over a later number
        ("<think></think>\\boxed{3}. Then 5.", "5", 0.0),
        ("<think></think>first 3 then 7", "7", 1.0),  # no box: the last answer-like expression
        ("<think></think>so $\\frac{2}{4}$", "0.5", 1.0),
        ("<think></think>$\\boxed{\\sqrt{12}}$", "2\\sqrt{3}", 1.0),
        ("<think></think>The answer is 1000.", "1,000", 1.0),
        ("<think></think>$x = 2$", "x=2", 1.0),
        ("<think></think>I give up.", "42", 0.0),  # nothing to parse: wrong
        (MSG, "4", 1.0),  # chat-message completions
        ("<think></think>42", 42, 1.0),  # a non-string reference
    ],
)
def test_math_reward_values(completion, answer, expected):
    assert MathReward(think=QWEN3_THINK)([completion], answer=[answer]) == [expected]


@pytest.mark.parametrize("answer", ["", "   ", None, "no answer", "???", "\\frac{", "see the proof above"])
def test_missing_or_unparseable_reference_is_none(answer):
    # open-r1 gives 1.0 (accuracy/cosine) or None depending on the reward; here it is always None.
    assert MathReward(think=QWEN3_THINK)(["<think></think>\\boxed{42}"], answer=[answer]) == [None]
    assert MathReward(think=QWEN3_THINK)(["<think>unclosed"], answer=[answer]) == [
        None
    ]  # even when the completion has no answer


def test_no_answer_column_is_none():
    assert MathReward(think=QWEN3_THINK)(["\\boxed{1}"]) == [None]


def test_argument_order_matters_and_is_gold_first():
    # math-verify is asymmetric: a relation gold accepts an interval answer, not the other way round.
    gold, pred = parse_reference("1<x<2"), parse_answer("$(1,2)$")
    assert math_verify.verify(list(gold), pred, timeout_seconds=None) is True
    assert math_verify.verify(pred, list(gold), timeout_seconds=None) is False
    reward = MathReward(think=QWEN3_THINK)
    assert reward(["<think></think>$(1,2)$", "<think></think>$1<x<2$"], answer=["1<x<2", "(1,2)"]) == [1.0, 0.0]


def test_verify_receives_gold_then_answer(monkeypatch, in_process):
    calls = []

    def spy(gold, target, **kwargs):
        calls.append((gold, target, kwargs))
        return True

    monkeypatch.setattr(rmath, "verify", spy)
    assert verify_answer("\\frac{1}{2}", "it is $0.25$") is True
    ((gold, target, kwargs),) = calls
    assert gold == list(parse_reference("\\frac{1}{2}")) and target == parse_answer("it is $0.25$")
    assert kwargs["timeout_seconds"] is None  # math-verify's signal alarm is off; time_limit replaces it


@pytest.mark.parametrize(
    ("task", "expected"),
    [("math", 1.0), (" MATH ", 1.0), (None, 1.0), ("", 1.0), ("code", None), ("general", None), ("choice", None)],
)
def test_task_routing(task, expected):
    assert MathReward(think=QWEN3_THINK)(["\\boxed{2}"], answer=["2"], task=[task]) == [expected]
    assert MathReward(tasks=("math", "general"), think=QWEN3_THINK)(
        ["\\boxed{2}"], answer=["2"], task=["general"]
    ) == [1.0]


def test_each_reference_is_parsed_once(in_process):
    clear_cache()
    reward = MathReward(think=QWEN3_THINK)
    out = reward(["\\boxed{1}", "\\boxed{2}", "\\boxed{3}", "3"], answer=["3"] * 4)
    assert out == [0.0, 0.0, 1.0, 1.0]
    info = parse_reference.cache_info()
    assert info.misses == 1 and info.currsize == 1
    clear_cache(math_verify_caches=True)
    assert parse_reference.cache_info().currsize == 0
    assert verify_answer("3", "3", use_cache=False) is True and parse_reference.cache_info().currsize == 0


def test_verify_answer_values():
    assert verify_answer("\\frac12", "0.5") is True
    assert verify_answer("\\frac12", "1/3") is False
    assert verify_answer("\\frac12", None) is False and verify_answer("\\frac12", " ") is False
    assert verify_answer(None, "1") is None and verify_answer("no answer", "1") is None
    assert verify_answer("no answer", None) is None  # the reference decides first


def test_unparseable_reference_is_logged_once(caplog):
    clear_cache()
    MathReward(think=QWEN3_THINK)(["\\boxed{1}"] * 3, answer=["see the proof"] * 3)
    assert caplog.text.count("unparseable math reference 'see the proof'") == 1


def _busy(*_args, **_kwargs):
    while True:
        pass


def test_time_limit_interrupts_on_main_thread_and_workers():
    assert threading.current_thread() is threading.main_thread()
    start = time.monotonic()
    with pytest.raises(VerifyTimeout):
        run_with_time_limit(_busy, 0.1)
    assert time.monotonic() - start < 2.0

    def in_worker():
        with pytest.raises(VerifyTimeout):
            run_with_time_limit(_busy, 0.1)
        return run_with_time_limit(sum, 5.0, [1, 2])

    with ThreadPoolExecutor(3) as pool:
        assert list(pool.map(lambda _: in_worker(), range(3))) == [3, 3, 3]


def test_time_limit_never_leaks_into_the_caller_nor_deadlocks():
    # Limits as short as the call itself race with its return: the exception must stay inside, and the watchdog
    # lock must never be left held (that would hang every later call, so the work runs in threads with a join).
    leaked: list[BaseException] = []

    def race(limit: float) -> None:
        try:
            for _ in range(300):
                try:
                    run_with_time_limit(sum, limit, range(200))
                except VerifyTimeout:
                    pass
            time.sleep(0.05)  # a leaked pending exception would surface here
        except BaseException as exc:
            leaked.append(exc)

    threads = [threading.Thread(target=race, args=(limit,)) for limit in (1e-6, 1e-5, 5e-5, 1e-4)]
    for t in threads:
        t.start()
    race(2e-5)
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "run_with_time_limit deadlocked"
    assert leaked == []
    assert run_with_time_limit(sum, 1.0, [1, 2]) == 3


def test_verification_timeout_gives_none(monkeypatch, caplog, in_process):
    monkeypatch.setattr(rmath, "verify", _busy)
    reward = MathReward(timeout_s=0.1, think=QWEN3_THINK)
    assert reward(["\\boxed{1}"], answer=["1"]) == [None]
    assert "timed out" in caplog.text
    with ThreadPoolExecutor(2) as pool:  # math-verify's own signal-based timeout would raise here
        assert list(pool.map(lambda c: reward([c], answer=["1"])[0], ["1", "2"])) == [None, None]


def test_works_off_the_main_thread_where_math_verify_defaults_fail():
    def default_math_verify():
        return math_verify.verify(math_verify.parse("$1$", parsing_timeout=None), math_verify.parse("$1$"))

    with ThreadPoolExecutor(1) as pool:
        with pytest.raises(ValueError, match="threaded"):
            pool.submit(default_math_verify).result()
        assert pool.submit(MathReward(think=QWEN3_THINK), ["\\boxed{1}"], answer=["1"]).result() == [1.0]


def test_measure_cost_reports_each_setting():
    bench = load_script("scripts/bench/reward_speed.py")  # the per-call timing is the benchmark's, not the library's
    cost = bench.measure_cost([("42", "\\boxed{42}")], repeats=2)
    assert cost["calls"] == 2 and set(cost) == {"calls", "fresh_ms", "cached_reference_ms", "cached_both_ms"}
    assert all(v > 0 for v in cost.values())


def test_answer_texts_are_cached_up_to_a_length(monkeypatch, in_process):
    clear_cache()
    calls = []
    real = rmath._parse
    monkeypatch.setattr(rmath, "_parse", lambda text: calls.append(text) or real(text))
    half = "\\boxed{\\frac{1}{2}}"
    assert MathReward(think=QWEN3_THINK)(
        [f"<think>a</think>{half}", f"<think>b</think>{half}"], answer=["0.5"] * 2
    ) == [1.0, 1.0]
    assert calls == ["$0.5$", half]  # the reference once, the shared answer text once
    monkeypatch.setattr(rmath, "ANSWER_CACHE_MAX_CHARS", 5)
    assert verify_answer("0.5", half) is True and calls == ["$0.5$", half, half]
    assert verify_answer("7", "\\boxed{7}") is True and calls[-1] == "$7$"  # integer answers skip the parser


# ------------------------------------------------------------------------------------- integer fast path

_FRAGMENTS = [
    "\\boxed{", "}", "{", "$", "$$", "\\[", "\\]", "\\(", "\\)", " ", "x = ", "42", "-7", "007", "^2", "\\frac{1}{2}",
    "and", ",", ".", "\\text{ cm}", "\\%", "answer is ", "\n", "=", "0", "3.5", "\\boxed", "fbox", "\\left(",
    "\\right)", "_", "\\{", "\\}", "\\,", "\\boxed{\\boxed{", "\\sqrt", "-", "+", "\\pm", "<", "(", ")", "\\pi",
]  # fmt: skip
_TEXT = st.lists(st.one_of(st.sampled_from(_FRAGMENTS), st.text(max_size=4)), max_size=8).map("".join)


@settings(max_examples=300, deadline=None)
@given(pre=_TEXT, number=st.from_regex(r"-?[0-9]{1,22}", fullmatch=True), post=_TEXT, pad=st.sampled_from(["", " "]))
@example(pre="$", number="0", post="$\\%", pad="")  # once found in CI: math-verify reads 0/100
def test_integer_fast_path_agrees_with_math_verify(pre, number, post, pad):
    for text in (f"{pre}\\boxed{{{pad}{number}{pad}}}{post}", f"{pad}{number}{pad}", pre + post):
        fast = rmath._integer_answer(text)
        if fast is not None:
            slow = rmath._parse(text)
            assert fast == slow and [type(x) for x in fast] == [type(x) for x in slow], text


@pytest.mark.parametrize(
    ("text", "fast"),
    [
        ("42", True),
        (" -7 ", True),
        ("So the answer is $\\boxed{42}$.", True),
        ("\\boxed{42} and \\boxed{43}", False),  # two boxes: a set, math-verify decides
        ("\\boxed{042}", False),  # leading zeros
        ("\\boxed{4.5}", False),
        ("\\boxed{\\frac{1}{2}}", False),
        ("٤٢", False),  # non-ASCII digits
        ("$\\boxed{0}$\\%", False),  # a percent: math-verify reads 0/100 (found by the property test below)
        ("x $\\boxed{5}$ percent", False),
    ],
)
def test_integer_fast_path_scope(text, fast):
    assert (rmath._integer_answer(text) is not None) is fast
