"""Chat modes: tags, the template round trip for every mode, and response parsing."""

from __future__ import annotations

import pytest

from train.core.loading import load_tokenizer
from train.core.modes import (
    PANGU_THINK,
    QWEN3_THINK,
    Mode,
    ThinkFormat,
    apply_mode,
    chat_template,
    detect_mode,
    format_response,
    install_chat_template,
    parse_response,
    strip_tags,
)
from train.world.tiny import build_tokenizer


@pytest.mark.parametrize(
    ("text", "mode"),
    [
        ("What is 2+2?", Mode.SLOW),
        ("What is 2+2? /think", Mode.SLOW),
        ("What is 2+2? /no_think", Mode.FAST),
        ("What is 2+2? /auto_think", Mode.AUTO),
        ("/no_think then /think", Mode.SLOW),  # the last tag wins
        ("path a/no_think_b", Mode.SLOW),  # not a tag: part of a word
    ],
)
def test_detect_mode_from_text(text, mode):
    assert detect_mode(text) == mode


def test_last_user_turn_wins_over_system():
    msgs = [{"role": "system", "content": "Be brief. /no_think"}, {"role": "user", "content": "Hi /auto_think"}]
    assert detect_mode(msgs) == Mode.AUTO
    msgs[1]["content"] = "Hi"
    assert detect_mode(msgs) == Mode.FAST


def test_apply_mode_replaces_tags_and_copies():
    msgs = [{"role": "system", "content": "sys /think"}, {"role": "user", "content": "Q? /no_think"}]
    out = apply_mode(msgs, Mode.AUTO)
    assert out[-1]["content"] == "Q? /auto_think"
    assert out[0]["content"] == "sys"
    assert msgs[-1]["content"] == "Q? /no_think"  # input untouched
    assert apply_mode("Q? /think", None) == [{"role": "user", "content": "Q?"}]
    assert strip_tags("a /no_think b") == "a b"


def test_mode_parse_accepts_names_and_tags():
    assert Mode.parse("/no_think") is Mode.FAST
    assert Mode.parse("auto_think") is Mode.AUTO
    assert Mode.parse("slow") is Mode.SLOW
    with pytest.raises(ValueError, match="unknown mode"):
        Mode.parse("medium")


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(["Compute 12+3."], think=QWEN3_THINK)


@pytest.mark.parametrize("mode", list(Mode))
def test_template_round_trips_each_mode(tok, mode):
    thinking = "" if mode == Mode.FAST else "2+3=5"
    reply = format_response("15", thinking, QWEN3_THINK)
    msgs = apply_mode("Compute 12+3.", mode) + [{"role": "assistant", "content": reply}]
    text = tok.apply_chat_template(msgs, tokenize=False)
    assert text == f"<|im_start|>user\nCompute 12+3. {mode.tag}<|im_end|>\n<|im_start|>assistant\n{reply}<|im_end|>\n"
    ids = tok.apply_chat_template(msgs, return_dict=True, return_assistant_tokens_mask=True)
    masked = [i for i, m in zip(ids["input_ids"], ids["assistant_masks"]) if m]
    assert tok.decode(masked) == reply + "<|im_end|>\n"  # the loss covers exactly the reply
    decoded = tok.decode(tok(text, add_special_tokens=False)["input_ids"], skip_special_tokens=True)
    parsed = parse_response(decoded.split("assistant\n", 1)[1], QWEN3_THINK)
    assert (parsed.thinking, parsed.answer) == (thinking, "15")
    assert parsed.mode == ("fast" if mode == Mode.FAST else "slow")
    assert detect_mode(decoded) == mode


def test_enable_thinking_false_prefills_empty_block(tok):
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    plain = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert plain.endswith("<|im_start|>assistant\n")


def test_reasoning_content_renders_qwen3_style(tok):
    msgs = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A", "reasoning_content": "r"}]
    assert "<think>\nr\n</think>\n\nA<|im_end|>" in tok.apply_chat_template(msgs, tokenize=False)


@pytest.mark.parametrize(
    ("text", "thinking", "answer", "mode", "well_formed"),
    [
        ("<think>\nabc\n</think>\n\n42", "abc", "42", "slow", True),
        ("<think>\n\n</think>\n\n42", "", "42", "fast", True),
        ("<think></think>42", "", "42", "fast", True),
        ("<think>\nstill thinking 42", "still thinking 42", None, "unclosed", False),
        ("<think>a<think>b</think>c</think>d", "a<think>b</think>c", "d", "slow", False),
        ("<think>a</think>b<think>c</think>d", "a", "b<think>c</think>d", "slow", False),
        ("just 42", None, "just 42", "none", False),
        ("prefilled trace</think>\n\n42", "prefilled trace", "42", "slow", True),
        ("", None, "", "none", False),
    ],
)
def test_parse_response(text, thinking, answer, mode, well_formed):
    parsed = parse_response(text, QWEN3_THINK)
    assert (parsed.thinking, parsed.answer, parsed.mode, parsed.well_formed) == (thinking, answer, mode, well_formed)
    assert parsed.closed == (mode != "unclosed")


def test_think_tags_survive_skip_special_tokens(tok):
    ids = tok("<think>\nx\n</think>\n\ny<|im_end|>", add_special_tokens=False)["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == "<think>\nx\n</think>\n\ny"
    assert tok.convert_ids_to_tokens(ids[0]) == "<think>"  # one token, not characters


def test_pangu_delimiters_configurable():
    tok = build_tokenizer(["abc"], think=PANGU_THINK)
    reply = format_response("7", "3+4", PANGU_THINK)
    ids = tok(reply, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == reply
    parsed = parse_response(reply, PANGU_THINK)
    assert (parsed.thinking, parsed.answer) == ("3+4", "7")
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "q"}], tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    assert prompt.endswith("[unused16]\n\n[unused17]\n\n")


def test_install_on_foreign_tokenizer_saved_to_disk(tmp_path):
    """A Qwen2.5/Llama-like tokenizer loaded from disk gets the template and plain think tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel({"<unk>": 0, "hello": 1, "world": 2}, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", eos_token="<unk>").save_pretrained(tmp_path)
    foreign = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    install_chat_template(foreign, QWEN3_THINK)
    assert foreign.chat_template == chat_template(QWEN3_THINK)
    assert foreign.eos_token == "<|im_end|>"
    assert "<think>" not in foreign.all_special_tokens
    ids = foreign("<think> hello </think>", add_special_tokens=False)["input_ids"]
    assert "<think>" in foreign.decode(ids, skip_special_tokens=True)


def test_special_token_delimiter_is_refused():
    tok = build_tokenizer(["abc"], think=QWEN3_THINK)
    with pytest.raises(ValueError, match="special token"):
        install_chat_template(tok, ThinkFormat("<|im_start|>", "</think>"))


@pytest.mark.parametrize("mode", list(Mode))
def test_pangu_tokenizer_round_trips_each_mode(tiny_model_dir, mode):
    """A tokenizer loaded with PANGU_THINK renders, masks, decodes and parses every mode in [unused16]/[unused17]."""
    tok = load_tokenizer(tiny_model_dir, PANGU_THINK)
    think = ThinkFormat.from_tokenizer(tok)
    assert think == PANGU_THINK and tok.chat_template == chat_template(PANGU_THINK)
    thinking = "" if mode == Mode.FAST else "2+3=5"
    reply = format_response("15", thinking, think)
    assert reply == (f"[unused16]\n{thinking}\n[unused17]\n\n15" if thinking else "[unused16]\n\n[unused17]\n\n15")
    msgs = apply_mode("Compute 12+3.", mode) + [{"role": "assistant", "content": reply}]
    text = tok.apply_chat_template(msgs, tokenize=False)
    assert text == f"<|im_start|>user\nCompute 12+3. {mode.tag}<|im_end|>\n<|im_start|>assistant\n{reply}<|im_end|>\n"
    ids = tok.apply_chat_template(msgs, return_dict=True, return_assistant_tokens_mask=True)
    masked = [i for i, m in zip(ids["input_ids"], ids["assistant_masks"]) if m]
    assert tok.decode(masked) == reply + "<|im_end|>\n"
    assert tok.convert_ids_to_tokens(masked[0]) == "[unused16]"  # one ordinary token
    decoded = tok.decode(tok(text, add_special_tokens=False)["input_ids"], skip_special_tokens=True)
    parsed = parse_response(decoded.split("assistant\n", 1)[1], think)
    assert (parsed.thinking, parsed.answer, parsed.well_formed) == (thinking, "15", True)
    assert parsed.mode == ("fast" if mode == Mode.FAST else "slow")
    assert think.parse(reply) == parsed and think.format("15", thinking) == reply
    assert detect_mode(decoded) == mode
    assert QWEN3_THINK.parse(reply).mode == "none"  # Qwen3's tags do not read it: the format matters
    prompt = tok.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert prompt.endswith("<|im_start|>assistant\n[unused16]\n\n[unused17]\n\n")


def test_format_and_parse_take_a_think_format():
    assert ThinkFormat.from_tokenizer(build_tokenizer(think=PANGU_THINK)) == PANGU_THINK
    with pytest.raises(ValueError, match="records no think delimiters"):
        ThinkFormat.from_tokenizer(object())
    assert format_response("7", "3+4", PANGU_THINK) == "[unused16]\n3+4\n[unused17]\n\n7"
    assert parse_response("[unused16]x[unused17]y", PANGU_THINK).answer == "y"
    # A (start, end) string pair is no format, as two arguments, as a tuple or as a lone start tag.
    with pytest.raises(TypeError):
        format_response("7", "3+4", "[unused16]", "[unused17]")
    with pytest.raises(TypeError):
        parse_response("[unused16]x[unused17]y", "[unused16]", "[unused17]")
    with pytest.raises(TypeError, match="format_response takes a ThinkFormat"):
        format_response("7", "3+4", ("[unused16]", "[unused17]"))
    with pytest.raises(TypeError, match="parse_response takes a ThinkFormat"):
        parse_response("<think>x</think>y", ("<think>", "</think>"))
    with pytest.raises(TypeError, match="parse_response takes a ThinkFormat"):
        parse_response("<think>x</think>y", "<think>")
    with pytest.raises(TypeError):
        parse_response("<think>x</think>y")  # no default format
    with pytest.raises(TypeError):
        format_response("7", "3+4")
    with pytest.raises(TypeError, match="ThinkFormat"):
        chat_template("<think>")
    with pytest.raises(TypeError):
        parse_response("x", PANGU_THINK, "</think>")  # a format and a stray end tag
