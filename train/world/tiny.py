"""Tiny models and tokenizers built offline, for tests, the demo and CPU smoke runs.

The tokenizer is trained on a given corpus with no network: character-level (every character one token, which
is what lets a ~1M-parameter model learn digit-by-digit arithmetic), optionally with whole-word tokens for fixed
words such as the template's role names (as real tokenizers have: digits split, words whole), or byte-level BPE.
The model is a small Qwen3-style causal LM whose initial weights depend only on the seed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

from train.core.modes import ThinkFormat, install_chat_template

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Characters every tiny tokenizer knows, so that prompts built later (tags, code, LaTeX) never hit <unk>.
BASE_ALPHABET = [chr(c) for c in range(32, 127)] + ["\n", "\t"]

# name -> (hidden, layers, heads, kv heads, intermediate)
SIZES = {
    "nano": (32, 2, 4, 2, 64),
    "tiny": (96, 4, 4, 2, 256),  # ~0.5M parameters with a char vocabulary
    "small": (128, 5, 4, 2, 384),  # ~1M parameters
    "base": (256, 6, 8, 4, 768),
}


def build_tokenizer(
    corpus: Iterable[str] = (),
    kind: str = "char",
    vocab_size: int = 512,
    *,
    think: ThinkFormat,
    words: Sequence[str] = (),
) -> PreTrainedTokenizerFast:
    """A tokenizer trained on ``corpus`` with no network, with the fastslow chat template for ``think`` installed.

    ``kind="char"``: one token per character (printable ASCII plus every character of the corpus), and one token
    for each of ``words`` where it stands as a word of its own (e.g. ``user`` and ``/no_think``, not ``users``).
    ``kind="bpe"``: byte-level BPE with at most ``vocab_size`` tokens.
    """
    if words and kind != "char":
        raise ValueError(f"words are whole-word tokens of the char tokenizer, not of kind {kind!r}")
    corpus = list(corpus)
    if kind == "char":
        chars = sorted(set(BASE_ALPHABET).union(*map(set, corpus)) if corpus else set(BASE_ALPHABET))
        vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS + ["<unk>"] + chars)}
        tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Split(Regex("(?m:.)"), behavior="isolated")
        tok.decoder = decoders.Fuse()
        tok.add_special_tokens(SPECIAL_TOKENS + ["<unk>"])
        # single_word: a word inside a longer one ("users", "/think" in "a/think") stays characters.
        tok.add_tokens([AddedToken(w, single_word=True, normalized=False) for w in dict.fromkeys(words)])
    elif kind == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=SPECIAL_TOKENS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(corpus or BASE_ALPHABET, trainer=trainer)
    else:
        raise ValueError(f"unknown tokenizer kind {kind!r}; expected 'char' or 'bpe'")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<unk>" if kind == "char" else None,
        model_max_length=4096,
    )
    return install_chat_template(fast, think)


def build_model(
    tokenizer: PreTrainedTokenizerFast,
    size: str = "tiny",
    seed: int = 0,
    max_position_embeddings: int = 1024,
    **overrides,
) -> Qwen3ForCausalLM:
    """A small Qwen3-style causal LM sized for ``tokenizer``, initialised deterministically from ``seed``."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {sorted(SIZES)}")
    hidden, layers, heads, kv, inter = SIZES[size]
    params = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        head_dim=hidden // heads,
        intermediate_size=inter,
        max_position_embeddings=max_position_embeddings,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        use_cache=True,
    )
    params.update(overrides)
    config = Qwen3Config(**params)
    with _seeded(seed):
        model = Qwen3ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


class _seeded:
    """Fork the RNG so building a model neither depends on nor disturbs the caller's random state."""

    def __init__(self, seed: int):
        self.seed = seed

    def __enter__(self):
        self._fork = torch.random.fork_rng(devices=[])
        self._fork.__enter__()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc):
        return self._fork.__exit__(*exc)


def make_tiny(
    out_dir: str | Path,
    corpus: Iterable[str] = (),
    size: str = "tiny",
    tokenizer_kind: str = "char",
    seed: int = 0,
    *,
    think: ThinkFormat,
    words: Sequence[str] = (),
    **model_overrides,
) -> Path:
    """Build a tokenizer (``think``'s delimiters, ``words``) and a model; save both with ``save_pretrained``."""
    out = Path(out_dir)
    tokenizer = build_tokenizer(corpus, kind=tokenizer_kind, think=think, words=words)
    model = build_model(tokenizer, size=size, seed=seed, **model_overrides)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    n = sum(p.numel() for p in model.parameters())
    logger.info("saved a %s model (%.2fM parameters, vocab %d) to %s", size, n / 1e6, len(tokenizer), out)
    return out
