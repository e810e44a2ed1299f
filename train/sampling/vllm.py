"""vLLM's offline engine as a sampler (the optional ``vllm`` extra, GPU only), imported when one is built."""

from __future__ import annotations

import gc
import logging
from collections.abc import Sequence
from typing import Any

import torch

from train.core.modes import Mode, ThinkFormat
from train.sampling.params import SamplerConfig, SamplingParams
from train.sampling.reply import Reply
from train.sampling.transformers import build_prompts

logger = logging.getLogger(__name__)


class VLLMSampler:
    """All prompts of a call in one ``LLM.generate``, ``n`` samples each, with the sampled tokens' log-probs.

    Engine arguments come from ``config`` (``model``, ``dtype``, ``tensor_parallel_size``,
    ``gpu_memory_utilization``, ``max_model_len``); ``seed`` seeds the engine. Prompts are rendered with
    ``tokenizer``'s chat template (the fastslow one when it was loaded by :func:`train.core.loading.load_tokenizer`),
    else with the engine's tokenizer. Call :meth:`close` to give the GPU back.
    """

    def __init__(
        self, config: SamplerConfig, think: ThinkFormat, tokenizer: Any = None, seed: int | None = None
    ) -> None:
        try:
            from vllm import LLM
        except ImportError as exc:  # an optional extra: say how to get it
            raise ImportError("the vllm sampler needs vLLM: pip install 'fastslow[vllm]' (GPU only)") from exc
        if not config.model:
            raise ValueError("the vllm sampler needs SamplerConfig.model (a path or hub id)")
        # Training may still hold cached blocks on the GPU; vLLM sizes its KV cache from the memory it sees free.
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        kwargs = {"max_model_len": config.max_model_len} if config.max_model_len else {}
        if seed is not None:
            kwargs["seed"] = seed
        self.llm = LLM(
            model=config.model,
            dtype=config.dtype,
            tensor_parallel_size=config.tensor_parallel_size,
            gpu_memory_utilization=config.gpu_memory_utilization,
            **kwargs,
        )
        self.tokenizer = tokenizer if tokenizer is not None else self.llm.get_tokenizer()
        self.think = think

    def sample(
        self, prompts: Sequence[Any], params: SamplingParams, mode: Mode | str | None = None
    ) -> list[list[Reply]]:
        from vllm import SamplingParams as VLLMParams

        reps = 1 if params.greedy else params.n
        sampling = VLLMParams(
            n=reps,
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_new_tokens,
            seed=params.seed,
            logprobs=0,  # the sampled token's log-prob only
        )
        texts = build_prompts(self.tokenizer, prompts, mode)
        outputs = self.llm.generate(texts, sampling, use_tqdm=False)
        return [[_reply(o) for o in out.outputs] * (params.n // reps) for out in outputs]

    def close(self) -> None:
        """Free the engine and its GPU memory (for training to use again)."""
        del self.llm
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _reply(output: Any) -> Reply:
    ids = tuple(output.token_ids)
    logprobs = None
    if output.logprobs:
        logprobs = tuple(step[t].logprob for step, t in zip(output.logprobs, ids))
    finish = "length" if output.finish_reason == "length" else "stop"
    return Reply(output.text, len(ids), finish, token_ids=ids, logprobs=logprobs)
