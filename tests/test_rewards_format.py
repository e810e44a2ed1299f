"""Format and mode rewards: exact values for well-formed, malformed, prefilled and mode-mismatched replies."""

from __future__ import annotations

import pytest

from rewards.base import ThinkFormatNotSet
from rewards.format import FormatReward, ModeReward
from train.core.modes import PANGU_THINK, QWEN3_THINK, format_response

SLOW = format_response("42", "6 times 7", QWEN3_THINK)  # "<think>\n6 times 7\n</think>\n\n42"
FAST = format_response("42", "", QWEN3_THINK)  # "<think>\n\n</think>\n\n42"
PREFILLED_FAST = "<|im_start|>user\nQ /no_think<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


@pytest.mark.parametrize(
    ("completion", "prompt", "expected"),
    [
        (SLOW, None, 1.0),
        (FAST, None, 1.0),
        ("<think>reasoning</think>", None, 0.0),  # no answer after the block
        ("<think>reasoning</think>   \n", None, 0.0),
        ("<think>reasoning, never closed. 42", None, 0.0),
        ("42", None, 0.0),  # no block at all
        ("42", PREFILLED_FAST, 1.0),  # ...unless the prompt prefilled it
        ("<think>x</think>42", PREFILLED_FAST, 0.0),  # a second block after the prefilled one
        ("reasoning</think>42", None, 1.0),  # the opening tag was prefilled in the prompt
        ("<think>a</think>b<think>c</think>d", None, 0.0),  # two blocks
        ("Sure! <think>a</think>b", None, 0.0),  # the block does not lead
        ("<think><think>a</think></think>b", None, 0.0),  # nested
        ("<think>a</think>b</think>", None, 0.0),  # a stray closing tag in the answer
        ([{"role": "assistant", "content": SLOW}], None, 1.0),
        ("", None, 0.0),
    ],
)
def test_format_reward(completion, prompt, expected):
    assert FormatReward(think=QWEN3_THINK)([completion], prompts=[prompt]) == [expected]


def test_format_reward_with_pangu_delimiters():
    pangu = FormatReward(think=PANGU_THINK)
    text = f"{PANGU_THINK.start}reason{PANGU_THINK.end}42"
    assert pangu([text, SLOW]) == [1.0, 0.0]
    assert FormatReward(think=QWEN3_THINK)([text]) == [0.0]


@pytest.mark.parametrize(
    ("prompt", "completion", "expected"),
    [
        ("What is 6*7? /no_think", FAST, 1.0),
        ("What is 6*7? /no_think", SLOW, 0.0),
        ("What is 6*7? /think", SLOW, 1.0),
        ("What is 6*7? /think", FAST, 0.0),
        ("What is 6*7?", SLOW, 1.0),  # no tag: slow
        ("What is 6*7?", FAST, 0.0),
        ("What is 6*7? /auto_think", FAST, 1.0),
        ("What is 6*7? /auto_think", SLOW, 1.0),
        ("What is 6*7? /auto_think", "<think>still thinking", 0.0),  # unclosed: no answer
        ("What is 6*7? /auto_think", "<think>done</think>", 0.0),  # block but no answer
        ("What is 6*7? /no_think", "<think>\n\n</think>", 0.0),
        ("What is 6*7? /no_think", "42", 0.0),  # fast needs its (empty) block
        (PREFILLED_FAST, "42", 1.0),  # ...which a template may have prefilled
        ([{"role": "system", "content": "/no_think"}, {"role": "user", "content": "6*7?"}], FAST, 1.0),
        ([{"role": "system", "content": "/no_think"}, {"role": "user", "content": "6*7? /think"}], FAST, 0.0),
        ([{"role": "user", "content": "6*7? /auto_think"}], [{"role": "assistant", "content": SLOW}], 1.0),
    ],
)
def test_mode_reward(prompt, completion, expected):
    assert ModeReward(think=QWEN3_THINK)([completion], prompts=[prompt]) == [expected]


def test_mode_reward_without_prompt_is_none():
    assert ModeReward(think=QWEN3_THINK)([SLOW, FAST]) == [None, None]
    assert ModeReward(think=QWEN3_THINK)([SLOW], prompts=[None]) == [None]


def test_mode_reward_default_mode():
    assert ModeReward(default_mode="fast", think=QWEN3_THINK)([FAST, SLOW], prompts=["Q", "Q"]) == [1.0, 0.0]
    assert ModeReward(default_mode="/auto_think", think=QWEN3_THINK)([FAST, SLOW], prompts=["Q", "Q"]) == [1.0, 1.0]
    with pytest.raises(ValueError, match="unknown mode"):
        ModeReward(default_mode="medium", think=QWEN3_THINK)


def test_mode_reward_batch_mixes_modes():
    prompts = ["a /no_think", "b /think", "c /auto_think", "d /no_think"]
    assert ModeReward(think=QWEN3_THINK)([FAST, SLOW, FAST, SLOW], prompts=prompts) == [1.0, 1.0, 1.0, 0.0]


def test_allow_no_block_reads_a_bare_reply_as_fast():
    prompts = [[{"role": "user", "content": "6*7? /no_think"}]] * 3
    assert FormatReward(think=QWEN3_THINK)(["42"], prompts=prompts[:1]) == [0.0]
    assert FormatReward(allow_no_block=True, think=QWEN3_THINK)(["42", "", SLOW], prompts=prompts) == [1.0, 0.0, 1.0]
    assert ModeReward(allow_no_block=True, think=QWEN3_THINK)(["42", SLOW, "<think>open"], prompts=prompts) == [
        1.0,
        0.0,
        0.0,
    ]
    assert ModeReward(allow_no_block=True, think=QWEN3_THINK)(["42"], prompts=["6*7? /think"]) == [0.0]


def test_a_reward_without_a_think_format_refuses_to_guess():
    # A missing format is a configuration error for the whole run, raised rather than scored None per sample.
    with pytest.raises(ThinkFormatNotSet, match="reward 'format' has no think format.*set_think_format"):
        FormatReward()([SLOW], prompts=[None])
    with pytest.raises(ThinkFormatNotSet, match="reward 'mode'.*think_start/think_end.*think=ThinkFormat"):
        ModeReward()([SLOW], prompts=["Q /think"])
    reward = FormatReward()
    reward.think = PANGU_THINK  # what MARSRouter.set_think_format does
    assert reward([f"{PANGU_THINK.start}r{PANGU_THINK.end}42"]) == [1.0]
