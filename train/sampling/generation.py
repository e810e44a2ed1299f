"""Batched sampling from a transformers model in a chosen mode, on whatever device the model is on."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from train.core.data import to_messages
from train.core.modes import Mode, apply_mode

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Generation:
    """One sampled reply: its text (special tokens removed, think tags kept) and its length in tokens."""

    text: str
    num_tokens: int
    truncated: bool  # stopped by max_new_tokens rather than by EOS


def build_prompts(
    tokenizer: Any, prompts: Sequence[Any], mode: Mode | str | None = None, enable_thinking: bool | None = None
) -> list[str]:
    """Chat-formatted generation prompts; ``mode`` adds its tag (None keeps the prompt's own tags)."""
    out = []
    for p in prompts:
        messages = to_messages(p)
        if mode is not None:
            messages = apply_mode(messages, mode)
        kwargs = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
        out.append(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs))
    return out


@torch.inference_mode()
def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Any],
    mode: Mode | str | None = None,
    num_samples: int = 1,
    max_new_tokens: int = 256,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 64,
    enable_thinking: bool | None = None,
    progress: bool = True,
    **generate_kwargs: Any,
) -> list[list[Generation]]:
    """``num_samples`` replies per prompt, as a list (per prompt) of :class:`Generation`.

    Prompts are strings or message lists. Greedy decoding (``do_sample=False``) gives one distinct reply,
    repeated ``num_samples`` times without recomputation. Extra keyword arguments (a logits processor, stopping
    criteria) go to ``model.generate``.
    """
    texts = build_prompts(tokenizer, prompts, mode, enable_thinking)
    reps = num_samples if do_sample else 1
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    results: list[list[Generation]] = []
    eos = tokenizer.eos_token_id
    for start in tqdm(range(0, len(texts), batch_size), desc="generate", disable=not progress, leave=False):
        chunk = texts[start : start + batch_size]
        enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        sampling = dict(do_sample=True, temperature=temperature, top_p=top_p) if do_sample else dict(do_sample=False)
        out = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            num_return_sequences=reps,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=eos,
            **sampling,
            **generate_kwargs,
        )
        new = out[:, enc["input_ids"].shape[1] :]
        for i in range(len(chunk)):
            gens = [_to_generation(tokenizer, new[i * reps + j], eos) for j in range(reps)]
            results.append(gens if do_sample else gens * num_samples)
    model.train(was_training)
    return results


def _to_generation(tokenizer: Any, ids: torch.Tensor, eos: int) -> Generation:
    ids = ids.tolist()
    pad = tokenizer.pad_token_id
    n = len(ids)
    stopped = eos in ids
    if stopped:
        n = ids.index(eos) + 1
    else:
        while n and ids[n - 1] == pad and pad != eos:
            n -= 1
    text = tokenizer.decode(ids[:n], skip_special_tokens=True)
    return Generation(text=text, num_tokens=n, truncated=not stopped)
