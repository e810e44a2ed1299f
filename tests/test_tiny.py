"""Tiny offline models: deterministic, saved and reloaded with the template, loaded without network."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from train.core.loading import load_model_and_tokenizer, load_tokenizer
from train.core.modes import PANGU_THINK, QWEN3_THINK, ThinkFormat, chat_template
from train.world.tiny import build_model, build_tokenizer, make_tiny


def test_model_init_is_deterministic_and_isolated():
    tok = build_tokenizer(["abc"], think=QWEN3_THINK)
    torch.manual_seed(123)
    before = torch.rand(1)
    a, b = build_model(tok, "nano", seed=7), build_model(tok, "nano", seed=7)
    c = build_model(tok, "nano", seed=8)
    torch.manual_seed(123)
    assert torch.equal(before, torch.rand(1))  # building did not consume the caller's RNG
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(pa, pb), name
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters()))


def test_sizes_and_unknown_size():
    tok = build_tokenizer(think=QWEN3_THINK)
    n = sum(p.numel() for p in build_model(tok, "small").parameters())
    assert 0.8e6 < n < 1.2e6  # the ~1M-parameter model of the learning benchmark
    with pytest.raises(ValueError, match="unknown size"):
        build_model(tok, "huge")


def test_char_tokenizer_one_token_per_digit():
    tok = build_tokenizer(["Compute 123+456."], think=QWEN3_THINK)
    assert tok.tokenize("123+456") == list("123+456")
    assert tok.decode(tok("x\ny z", add_special_tokens=False)["input_ids"]) == "x\ny z"


def test_char_tokenizer_whole_words_only_where_they_stand_alone(tmp_path):
    words = ("user", "Compute", "/think", "/no_think")
    out = make_tiny(tmp_path / "m", ["Compute 1+2."], size="nano", think=QWEN3_THINK, words=words)
    tok = load_tokenizer(out)  # the words survive save and reload
    text = "Compute 12+3. /no_think users a/think /think"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == [
        "Compute", " ", "1", "2", "+", "3", ".", " ", "/no_think", " ",
        "u", "s", "e", "r", "s", " ", "a", "/", "t", "h", "i", "n", "k", " ", "/think",
    ]  # fmt: skip
    assert tok.decode(ids) == text
    row = tok.apply_chat_template([{"role": "user", "content": "Compute 1+2."}], tokenize=False)
    plain = build_tokenizer(["Compute 1+2."], think=QWEN3_THINK)
    assert len(tok(row)["input_ids"]) == len(plain(row)["input_ids"]) - len("user") - len("Compute") + 2
    with pytest.raises(ValueError, match="char tokenizer"):
        build_tokenizer(["a b"], kind="bpe", think=QWEN3_THINK, words=words)


def test_bpe_tokenizer_round_trips():
    tok = build_tokenizer(["the quick brown fox"] * 20, kind="bpe", vocab_size=300, think=QWEN3_THINK)
    text = "the fox <think>\nhm\n</think>\n\nok"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"], skip_special_tokens=True) == text


def test_save_reload_and_generate(tmp_path):
    out = make_tiny(tmp_path / "m", ["Compute 1+2."], size="nano", seed=3, think=QWEN3_THINK)
    model, tok = load_model_and_tokenizer(out)
    assert tok.chat_template is not None and "generation" in tok.chat_template
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "Compute 1+2."}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out_ids = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out_ids.shape[1] > ids["input_ids"].shape[1]
    again = build_model(tok, "nano", seed=3)
    for (name, p), q in zip(model.named_parameters(), again.parameters()):
        assert torch.equal(p, q), name


def test_local_load_never_touches_network(tiny_model_dir):
    """With every hub call made to fail, a local folder still loads."""
    code = (
        "import socket;"
        "socket.socket.connect = lambda *a, **k: (_ for _ in ()).throw(OSError('network used'));"
        "socket.create_connection = socket.socket.connect;"
        "from train.core.loading import load_model_and_tokenizer;"
        f"m, t = load_model_and_tokenizer({str(tiny_model_dir)!r}); print(type(m).__name__)"
    )
    env = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9", "PATH": "/usr/bin:/bin"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "Qwen3ForCausalLM" in res.stdout


def test_make_tiny_model_script(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("αβγ 123\n")
    res = subprocess.run(
        [
            sys.executable,
            "scripts/make_tiny_model.py",
            "--out",
            str(tmp_path / "m"),
            "--size",
            "nano",
            "--corpus",
            str(corpus),
            "--think-format",
            "pangu",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    _, tok = load_model_and_tokenizer(tmp_path / "m")
    assert tok.tokenize("αβ") == ["α", "β"]
    assert ThinkFormat.from_tokenizer(tok) == PANGU_THINK  # recorded when saved, read back when loaded


# ------------------------------------------------------------------------------------- the run's think format


def _bare_tokenizer(path, words):
    """A saved tokenizer with no template and no recorded format, whose vocabulary is ``words``."""
    raw = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["<unk>", *words])}, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", eos_token="<unk>").save_pretrained(path)
    return path


@pytest.mark.parametrize(
    ("words", "expected", "warns"),
    [
        (["hello", "<think>", "</think>"], QWEN3_THINK, False),
        (["hello", "[unused16]", "[unused17]"], PANGU_THINK, False),
        (["hello", "[unused16]", "[unused17]", "<think>", "</think>"], QWEN3_THINK, False),
        (["hello"], QWEN3_THINK, True),
    ],
    ids=["qwen3-vocab", "pangu-vocab", "both", "neither"],
)
def test_load_tokenizer_reads_the_format_from_the_vocabulary(tmp_path, caplog, words, expected, warns):
    with caplog.at_level(logging.WARNING, logger="train.core.loading"):
        tok = load_tokenizer(_bare_tokenizer(tmp_path, words))
    assert ThinkFormat.from_tokenizer(tok) == expected
    assert tok.chat_template == chat_template(expected)
    assert ("records no think format" in caplog.text) == warns


def test_load_tokenizer_override_wins_and_is_saved(tmp_path):
    saved = make_tiny(tmp_path / "m", size="nano", think=QWEN3_THINK)
    assert ThinkFormat.from_tokenizer(load_tokenizer(saved)) == QWEN3_THINK  # the recorded one
    tok = load_tokenizer(saved, PANGU_THINK)  # the config's override, over the recorded one
    assert ThinkFormat.from_tokenizer(tok) == PANGU_THINK and tok.chat_template == chat_template(PANGU_THINK)
    tok.save_pretrained(tmp_path / "again")
    again = load_tokenizer(tmp_path / "again")
    assert ThinkFormat.from_tokenizer(again) == PANGU_THINK and again.chat_template == chat_template(PANGU_THINK)


def test_load_tokenizer_accepts_the_config_keys(tmp_path):
    saved = make_tiny(tmp_path / "m", size="nano", think=QWEN3_THINK)
    tok = load_tokenizer(saved, think_start="[unused16]", think_end="[unused17]")
    assert ThinkFormat.from_tokenizer(tok) == PANGU_THINK
    tok = load_tokenizer(saved, think_end="</reasoning>")  # one key overrides one delimiter
    assert ThinkFormat.from_tokenizer(tok) == ThinkFormat("<think>", "</reasoning>")
    with pytest.raises(TypeError, match="ThinkFormat"):
        load_tokenizer(saved, "<think>")


def test_load_tokenizer_replaces_a_stale_fastslow_template(tmp_path):
    tok = build_tokenizer(think=QWEN3_THINK)
    tok.chat_template = chat_template(QWEN3_THINK).replace("{%- if tools %}", "{%- if false %}")  # an older version
    tok.save_pretrained(tmp_path)
    assert load_tokenizer(tmp_path).chat_template == chat_template(QWEN3_THINK)


def test_load_tokenizer_keeps_a_foreign_template_with_generation_markers(tmp_path):
    tok = build_tokenizer(think=QWEN3_THINK)
    custom = "{%- for m in messages %}{%- generation %}<think>{{ m.content }}{%- endgeneration %}{%- endfor %}"
    tok.chat_template = custom
    tok.save_pretrained(tmp_path)
    assert load_tokenizer(tmp_path).chat_template == custom
