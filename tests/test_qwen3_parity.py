"""The fastslow chat template renders exactly what Qwen3's official template renders.

Qwen3's template is trl's copy (``trl/chat_templates/qwen3.jinja``, byte-identical to the Qwen3 tokenizers'); both
are rendered by transformers' ``apply_chat_template`` on a tokenizer built offline, and compared as strings. With
openPangu's delimiters the text is Qwen3's with ``<think>``/``</think>`` replaced. The ``{% generation %}`` markers
render nothing and mask what trl's training variant (``qwen3_training.jinja``) masks.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import trl

from train.core.modes import PANGU_THINK, QWEN3_THINK, Mode, ThinkFormat, apply_mode, chat_template
from train.world.arithmetic import ArithmeticTeacher, make_problems
from train.world.tiny import build_tokenizer

TEMPLATES = Path(trl.__file__).parent / "chat_templates"
QWEN3 = (TEMPLATES / "qwen3.jinja").read_text(encoding="utf-8")
QWEN3_TRAINING = (TEMPLATES / "qwen3_training.jinja").read_text(encoding="utf-8")

SLOW = "<think>\nr\n</think>\n\nA"
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Add two integers.",
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                "required": ["a", "b"],
            },
        },
    },
    {"type": "function", "function": {"name": "now", "description": "The time.", "parameters": {"type": "object"}}},
]


def _user(text: str) -> dict:
    return {"role": "user", "content": text}


def _assistant(text: str, **extra) -> dict:
    return {"role": "assistant", "content": text, **extra}


def _call(name: str, arguments) -> dict:
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


# (id, messages, apply_chat_template keyword arguments)
CASES = [
    ("single-slow", [_user("Compute 1+2."), _assistant("<think>\n1+2=3\n</think>\n\n3")], {}),
    ("single-fast", [_user("Compute 1+2. /no_think"), _assistant("<think>\n\n</think>\n\n3")], {}),
    ("system", [{"role": "system", "content": "Be brief."}, _user("Hi"), _assistant(SLOW)], {}),
    ("gen-prompt", [_user("Hi")], {"add_generation_prompt": True}),
    ("gen-prompt-no-thinking", [_user("Hi")], {"add_generation_prompt": True, "enable_thinking": False}),
    ("gen-prompt-thinking-true", [_user("Hi")], {"add_generation_prompt": True, "enable_thinking": True}),
    ("no-gen-prompt", [{"role": "system", "content": "S"}, _user("Hi")], {"add_generation_prompt": False}),
    ("reasoning-content", [_user("Q"), _assistant("A", reasoning_content="step 1\nstep 2")], {}),
    ("reasoning-content-wins", [_user("Q"), _assistant(SLOW, reasoning_content="other")], {}),
    ("final-without-block", [_user("Q"), _assistant("just the answer")], {}),
    ("whitespace", [_user("Q"), _assistant("\n<think>\n\n  r  \n\n</think>\n\n\nA \n")], {}),
    ("no-newlines", [_user("Q"), _assistant("<think>r</think>A")], {}),
    ("prefilled-open-tag", [_user("Q"), _assistant("r\n</think>\n\nA")], {}),
    (
        "history-think-blocks",
        [
            {"role": "system", "content": "S"},
            _user("Q1 /think"),
            _assistant("<think>\nr1\n</think>\n\nA1"),
            _user("Q2 /no_think"),
            _assistant("<think>\n\n</think>\n\nA2", reasoning_content=None),
            _user("Q3 /auto_think"),
            _assistant("<think>\nr3\n</think>\n\nA3"),
        ],
        {},
    ),
    (
        "history-then-prompt",
        [_user("Q1"), _assistant("<think>\nr1\n</think>\n\nA1", reasoning_content="r1"), _user("Q2")],
        {"add_generation_prompt": True, "enable_thinking": False},
    ),
    (
        "mid-system",
        [_user("Q1"), _assistant("A1"), {"role": "system", "content": "Now in French."}, _user("Q2")],
        {"add_generation_prompt": True},
    ),
    (
        "tools-call-and-response",
        [
            {"role": "system", "content": "You add."},
            _user("What is 2+3?"),
            _assistant("<think>\nuse the tool\n</think>\n\n", tool_calls=[_call("add", {"a": 2, "b": 3})]),
            {"role": "tool", "name": "add", "content": "5"},
            _assistant("<think>\nthe tool says 5\n</think>\n\n5"),
        ],
        {"tools": TOOLS},
    ),
    (
        "tools-parallel-calls",
        [
            _user("Add 1 and 2, and tell the time."),
            _assistant("Calling.", tool_calls=[_call("add", '{"a": 1, "b": 2}'), {"name": "now", "arguments": {}}]),
            {"role": "tool", "name": "add", "content": "3"},
            {"role": "tool", "name": "now", "content": "noon"},
        ],
        {"tools": TOOLS, "add_generation_prompt": True},
    ),
    (
        "tools-response-as-user-turn",
        [
            _user("Q"),
            _assistant("", reasoning_content="call it", tool_calls=[_call("now", {})]),
            _user("<tool_response>\nnoon\n</tool_response>"),
            _assistant("It is noon."),
        ],
        {"tools": TOOLS},
    ),
    ("tools-no-messages-but-user", [_user("Hi")], {"tools": TOOLS, "add_generation_prompt": True}),
    ("mode-tags-plain-text", [{"role": "system", "content": "/no_think"}, _user("a /think b /auto_think")], {}),
]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(["Compute 1+2."], think=QWEN3_THINK)


def render(tok, messages, template: str, **kwargs) -> str:
    return tok.apply_chat_template(messages, tokenize=False, chat_template=template, **kwargs)


def in_format(value, think: ThinkFormat):
    """``value`` (messages, nested) with Qwen3's delimiters written in ``think``'s."""
    if isinstance(value, str):
        return think.rewrite(value, QWEN3_THINK)
    if isinstance(value, list):
        return [in_format(v, think) for v in value]
    if isinstance(value, dict):
        return {k: in_format(v, think) for k, v in value.items()}
    return value


def test_table_is_large_enough():
    assert len(CASES) >= 12


@pytest.mark.parametrize(("messages", "kwargs"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_renders_what_qwen3_renders(tok, messages, kwargs):
    ours = render(tok, messages, chat_template(QWEN3_THINK), **kwargs)
    assert ours == render(tok, messages, QWEN3, **kwargs)


@pytest.mark.parametrize(("messages", "kwargs"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_pangu_renders_qwen3_with_its_delimiters(tok, messages, kwargs):
    ours = render(tok, in_format(messages, PANGU_THINK), chat_template(PANGU_THINK), **kwargs)
    assert ours == PANGU_THINK.rewrite(render(tok, messages, QWEN3, **kwargs), QWEN3_THINK)


def test_installed_template_is_the_one_compared(tok):
    assert tok.chat_template == chat_template(QWEN3_THINK)
    messages, kwargs = CASES[-3][1], CASES[-3][2]
    assert tok.apply_chat_template(messages, tokenize=False, **kwargs) == render(tok, messages, QWEN3, **kwargs)


def test_generation_markers_render_nothing(tok):
    template = chat_template(QWEN3_THINK)
    markers = re.compile(r"\{%-? *(end)?generation *-?%\}")
    unmarked = markers.sub("", template)
    assert len(markers.findall(template)) == 2 and not markers.search(unmarked)
    for _, messages, kwargs in CASES:
        assert render(tok, messages, template, **kwargs) == render(tok, messages, unmarked, **kwargs)


@pytest.mark.parametrize(("messages", "kwargs"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_masks_what_qwen3_training_masks(tok, messages, kwargs):
    """Where trl's training variant renders the same text (it keeps every think block), it masks the same tokens."""
    ours = render(tok, messages, chat_template(QWEN3_THINK), **kwargs)
    if render(tok, messages, QWEN3_TRAINING, **kwargs) != ours:
        pytest.skip("the training variant keeps think blocks that Qwen3's template drops")
    kwargs = {**kwargs, "return_dict": True, "return_assistant_tokens_mask": True}
    a = tok.apply_chat_template(messages, chat_template=chat_template(QWEN3_THINK), **kwargs)
    b = tok.apply_chat_template(messages, chat_template=QWEN3_TRAINING, **kwargs)
    assert a["input_ids"] == b["input_ids"]
    assert a["assistant_masks"] == b["assistant_masks"]


def test_most_cases_are_compared_with_the_training_variant(tok):
    same = sum(
        render(tok, m, QWEN3_TRAINING, **k) == render(tok, m, chat_template(QWEN3_THINK), **k) for _, m, k in CASES
    )
    assert same >= 12


@pytest.mark.parametrize("think", [QWEN3_THINK, PANGU_THINK], ids=["qwen3", "pangu"])
def test_stored_replies_train_identically(think):
    """An arithmetic reply (``<think>\\n...\\n</think>\\n\\nanswer``) renders verbatim; the loss covers just it."""
    tok = build_tokenizer(["Compute 1+2."], think=think)
    teacher = ArithmeticTeacher(think, verbosity=0.5, seed=0)
    for problem in make_problems(20, (1, 2, 3, 4), seed=3):
        for mode in (Mode.SLOW, Mode.FAST):
            reply = teacher.respond(problem, mode)
            messages = apply_mode(problem["prompt"], mode) + [_assistant(reply)]
            text = tok.apply_chat_template(messages, tokenize=False)
            prompt = messages[0]["content"]
            assert text == f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n{reply}<|im_end|>\n"
            enc = tok.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
            masked = [i for i, m in zip(enc["input_ids"], enc["assistant_masks"]) if m]
            assert tok.decode(masked) == reply + "<|im_end|>\n"
