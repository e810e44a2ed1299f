"""Tiny offline models: deterministic, saved and reloaded with the template, loaded without network."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from train.core.loading import load_model_and_tokenizer
from train.world.tiny import build_model, build_tokenizer, make_tiny


def test_model_init_is_deterministic_and_isolated():
    tok = build_tokenizer(["abc"])
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
    tok = build_tokenizer()
    n = sum(p.numel() for p in build_model(tok, "small").parameters())
    assert 0.8e6 < n < 1.2e6  # the ~1M-parameter model of the learning benchmark
    with pytest.raises(ValueError, match="unknown size"):
        build_model(tok, "huge")


def test_char_tokenizer_one_token_per_digit():
    tok = build_tokenizer(["Compute 123+456."])
    assert tok.tokenize("123+456") == list("123+456")
    assert tok.decode(tok("x\ny z", add_special_tokens=False)["input_ids"]) == "x\ny z"


def test_bpe_tokenizer_round_trips():
    tok = build_tokenizer(["the quick brown fox"] * 20, kind="bpe", vocab_size=300)
    text = "the fox <think>\nhm\n</think>\n\nok"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"], skip_special_tokens=True) == text


def test_save_reload_and_generate(tmp_path):
    out = make_tiny(tmp_path / "m", ["Compute 1+2."], size="nano", seed=3)
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
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    _, tok = load_model_and_tokenizer(tmp_path / "m")
    assert tok.tokenize("αβ") == ["α", "β"]
