"""The code rewards: extraction, the trl call contract, exact scores, and per-case details for logging."""

from __future__ import annotations

import json
import logging
import pickle

import pytest

from rewards import get_reward
from rewards.base import ThinkFormatNotSet
from rewards.code import BinaryCodeReward, CodeReward, extract_code
from rewards.sandbox import SandboxLimits
from train.core.modes import QWEN3_THINK

LIMITS = {"timeout_s": 1.5, "cpu_s": 1, "memory_mb": 256, "uid_base": 62100, "uid_count": 16}
STDIO = [{"input": "3", "output": "6"}, {"input": "5", "output": "10"}]
ASSERTS = [{"assert": "assert f(2) == 4"}, {"assert": "assert f(3) == 9"}, {"assert": "assert f(0) == 0"}]


def block(code: str, label: str = "python") -> str:
    return f"```{label}\n{code}\n```"


def test_extract_code_takes_the_last_python_or_bare_block():
    text = f"First try:\n{block('print(1)')}\nBetter:\n{block('print(2)', '')}\nIn C:\n{block('int main(){}', 'cpp')}"
    assert extract_code(text) == "print(2)\n"
    assert extract_code(block("x = 1", "py")) == "x = 1\n"
    assert extract_code(block("x = 1", "Python3")) == "x = 1\n"
    assert extract_code("~~~python\nx = 2\n~~~") == "x = 2\n"
    assert extract_code("````python\nprint('```')\n````") == "print('```')\n"
    assert extract_code("no code here") is None
    assert extract_code("```python\nprint(1)\n") is None  # never closed: truncated output
    assert extract_code(block("int main(){}", "cpp")) is None
    assert extract_code(None) is None


def test_registered_names_and_pickling():
    reward = get_reward("code", limits=LIMITS, think=QWEN3_THINK)
    binary = get_reward("code_binary", limits=LIMITS, think=QWEN3_THINK)
    assert isinstance(reward, CodeReward) and isinstance(binary, BinaryCodeReward)
    assert (reward.__name__, binary.__name__) == ("code", "code_binary")
    reward(["```python\nprint(6)\n```"], tests=[STDIO])
    copy = pickle.loads(pickle.dumps(reward))
    assert copy.__name__ == "code" and copy.limits == reward.limits and copy.last_results == []


def test_exact_scores_stdio_and_assert():
    reward, binary = CodeReward(limits=LIMITS, think=QWEN3_THINK), BinaryCodeReward(limits=LIMITS, think=QWEN3_THINK)
    completions = [
        "<think>double it</think>" + block("print(int(input()) * 2)"),  # all pass
        block("print(6)"),  # 1 of 2
        block("print(0)"),  # none
        block("def f(x):\n    return x * x"),  # 3 of 3
        block("def f(x):\n    return x + 2"),  # f(2)=4 only: 1 of 3
    ]
    tests = [STDIO, STDIO, STDIO, ASSERTS, ASSERTS]
    assert reward(completions, tests=tests) == [1.0, 0.5, 0.0, 1.0, pytest.approx(1 / 3)]
    assert binary(completions, tests=tests) == [1.0, 0.0, 0.0, 1.0, 0.0]


def test_no_answer_no_code_and_syntax_errors_score_zero():
    reward = CodeReward(limits=LIMITS, think=QWEN3_THINK)
    completions = [
        "<think>" + block("print(int(input()) * 2)"),  # unclosed think: no answer
        "<think>" + block("print(int(input()) * 2)") + "</think>The answer is 6.",  # code only inside the think
        "Just print 6.",
        block("print(int(input()) * 2"),  # syntax error
    ]
    assert reward(completions, tests=[STDIO] * 4) == [0.0, 0.0, 0.0, 0.0]
    assert reward.last_results[3].statuses == ["syntax_error", "syntax_error"]
    assert reward.last_results[0].cases == []


def test_does_not_apply_without_tests_or_to_other_tasks():
    reward = CodeReward(limits=LIMITS, think=QWEN3_THINK)
    good = block("print(int(input()) * 2)")
    out = reward(
        [good] * 6, tests=[None, [], "", STDIO, STDIO, STDIO], task=["code", "code", "code", "math", None, "Code"]
    )
    assert out == [None, None, None, None, 1.0, 1.0]
    assert reward([good]) == [None]  # no tests column at all


def test_tests_as_json_and_chat_completions():
    reward = CodeReward(limits=LIMITS, think=QWEN3_THINK)
    chat = [{"role": "assistant", "content": "<think>ok</think>" + block("print(int(input()) * 2)")}]
    assert reward([chat], tests=[json.dumps(STDIO)]) == [1.0]


def test_malformed_tests_give_none_with_a_warning(caplog):
    reward = CodeReward(limits=LIMITS, think=QWEN3_THINK)
    with caplog.at_level(logging.WARNING, logger="rewards.code"):
        out = reward([block("print(1)")] * 2, tests=[[{"input": "1"}], STDIO])
    assert out == [None, 0.0]
    assert "sample 0" in caplog.text and "case 0 must be" in caplog.text


def test_details_for_logging():
    reward = CodeReward(limits=LIMITS, think=QWEN3_THINK)
    reward([block("print(6)"), block("while True:\n    pass")], tests=[STDIO, STDIO[:1]])
    details = reward.last_details()
    assert [c["status"] for c in details[0]["cases"]] == ["passed", "wrong_answer"]
    assert details[0]["cases"][1]["detail"] == "line 1: expected '10', got '6'"
    assert details[1]["cases"][0]["status"] == "timeout"
    assert json.loads(json.dumps(details)) == details
    single = reward.details(block("print(6)"), STDIO)
    assert (single.passed, single.total) == (1, 2)


def test_limits_from_a_config_dict():
    reward = CodeReward(limits={"timeout_s": 2.0, "memory_mb": 128}, think=QWEN3_THINK)
    assert reward.limits == SandboxLimits(timeout_s=2.0, memory_mb=128)
    with pytest.raises(ValueError, match="unknown sandbox limits \\['timeout'\\]"):
        CodeReward(limits={"timeout": 2})


def test_binary_reward_stops_at_the_first_failure():
    reward = BinaryCodeReward(limits=LIMITS, think=QWEN3_THINK)
    tests = [{"input": "1", "output": "1"}, {"input": "2", "output": "3"}, {"input": "3", "output": "3"}]
    assert reward([block("print(input())")], tests=[tests]) == [0.0]
    assert reward.last_results[0].statuses == ["passed", "wrong_answer", "skipped"]
    assert CodeReward(limits=LIMITS, think=QWEN3_THINK)([block("print(input())")], tests=[tests]) == [
        pytest.approx(2 / 3)
    ]


def test_without_a_think_format_the_batch_stops_instead_of_scoring_none():
    # Every sample would fail the same way: the batch path raises like Reward.safe_score, no silent zeros.
    with pytest.raises(ThinkFormatNotSet, match="reward 'code' has no think format"):
        CodeReward(limits=LIMITS)([block("print(1)")], tests=[STDIO])
