"""Loading models and tokenizers from a local path or a hub id, never touching the network for a local path."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from train.core.modes import DEFAULT_THINK_END, DEFAULT_THINK_START, install_chat_template, think_delimiters

logger = logging.getLogger(__name__)

_DTYPES = {"auto": "auto", "bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def is_local(name_or_path: str | os.PathLike) -> bool:
    return Path(name_or_path).expanduser().exists()


def _hub_kwargs(name_or_path: str | os.PathLike, revision: str | None) -> dict[str, Any]:
    if is_local(name_or_path):
        # local_files_only stops transformers from asking the hub about a local folder (e.g. for a missing
        # generation config), which on an offline machine would hang until it times out.
        return {"local_files_only": True}
    return {"revision": revision} if revision else {}


def load_tokenizer(
    name_or_path: str | os.PathLike,
    think_start: str | None = None,
    think_end: str | None = None,
    revision: str | None = None,
) -> PreTrainedTokenizerBase:
    """A tokenizer with the fastslow template installed (the delimiters it was saved with, unless given)."""
    tok = AutoTokenizer.from_pretrained(str(name_or_path), **_hub_kwargs(name_or_path, revision))
    saved_start, saved_end = think_delimiters(tok)
    start = think_start or saved_start or DEFAULT_THINK_START
    end = think_end or saved_end or DEFAULT_THINK_END
    if tok.chat_template is None or start not in tok.chat_template or "generation" not in tok.chat_template:
        install_chat_template(tok, start, end)
    else:
        tok.init_kwargs.update(think_start=start, think_end=end)
    tok.padding_side = "left"  # decoder-only generation pads on the left
    return tok


def load_model(
    name_or_path: str | os.PathLike,
    dtype: str | torch.dtype = "float32",
    tokenizer: PreTrainedTokenizerBase | None = None,
    revision: str | None = None,
    **kwargs: Any,
) -> PreTrainedModel:
    """A causal LM; embeddings are resized when ``tokenizer`` has grown (think tags added)."""
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(_DTYPES)}")
        dtype = _DTYPES[dtype]
    model = AutoModelForCausalLM.from_pretrained(
        str(name_or_path), dtype=dtype, **_hub_kwargs(name_or_path, revision), **kwargs
    )
    if tokenizer is not None and len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        logger.info("resizing embeddings %d -> %d", model.get_input_embeddings().weight.shape[0], len(tokenizer))
        model.resize_token_embeddings(len(tokenizer))
    if tokenizer is not None:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def load_model_and_tokenizer(
    name_or_path: str | os.PathLike, dtype: str | torch.dtype = "float32", **kwargs: Any
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    tokenizer = load_tokenizer(name_or_path)
    return load_model(name_or_path, dtype=dtype, tokenizer=tokenizer, **kwargs), tokenizer
