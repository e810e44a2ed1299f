"""Transitional: the old ``generate`` function, now a thin wrapper of
:class:`~train.sampling.transformers.TransformersSampler` (use the sampler: :func:`train.sampling.make_sampler`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from train.core.modes import Mode
from train.sampling.params import SamplingParams
from train.sampling.reply import Reply
from train.sampling.transformers import TransformersSampler, build_prompts

__all__ = ["Generation", "build_prompts", "generate"]


def Generation(text: str, num_tokens: int, truncated: bool = False) -> Reply:  # noqa: N802 - the old type's name
    """Transitional: a :class:`Reply` built with the old ``Generation(text, num_tokens, truncated)`` arguments."""
    return Reply(text, num_tokens, "length" if truncated else "stop")


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
) -> list[list[Reply]]:
    """``num_samples`` replies per prompt (greedy unless ``do_sample``); extra keywords go to ``model.generate``."""
    sampler = TransformersSampler(
        model,
        tokenizer,
        batch_size,
        progress,
        chat_template_kwargs=None if enable_thinking is None else {"enable_thinking": enable_thinking},
        generate_kwargs=generate_kwargs,
    )
    params = SamplingParams(
        n=num_samples, temperature=temperature if do_sample else 0.0, top_p=top_p, max_new_tokens=max_new_tokens
    )
    return sampler.sample(prompts, params, mode)
