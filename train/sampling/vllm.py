"""vLLM's offline engine as a sampler (the optional ``vllm`` extra, GPU only), imported when one is built."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils.memory import clear_device_cache

from train.core.modes import Mode, ThinkFormat
from train.sampling.params import SamplerConfig, SamplingParams
from train.sampling.reply import Reply
from train.sampling.transformers import build_prompts

logger = logging.getLogger(__name__)


class VLLMSampler:
    """All prompts of a call in one ``LLM.generate``, ``n`` samples each, with the sampled tokens' log-probs.

    Engine arguments come from ``config`` (:func:`engine_arguments`: ``model``, ``dtype``, ``tensor_parallel_size``,
    ``gpu_memory_utilization``, ``max_model_len``, ``trust_remote_code``); ``seed`` seeds the engine. Under a
    multi-process launch each process starts its own engine on its own device (vLLM's ``external_launcher``, as
    trl's colocate mode does). Before the engine starts, memory the process no longer references is given back
    (:func:`free_accelerator_memory`): vLLM sizes its KV cache from the memory it sees free, and refuses to start
    when a freed training model's blocks are still cached. Callers drop their own references to a training model
    first (``del model, trainer``). Prompts are rendered with ``tokenizer``'s chat template (the fastslow one when
    it was loaded by :func:`train.core.loading.load_tokenizer`), else with the engine's tokenizer, with
    ``chat_template_kwargs``. Call :meth:`close` to give the GPU back.
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
        free_accelerator_memory()
        check_free_memory(config.gpu_memory_utilization)
        self.llm = LLM(**engine_arguments(config, seed))
        self.tokenizer = tokenizer if tokenizer is not None else self.llm.get_tokenizer()
        self.think = think
        self.chat_template_kwargs: dict[str, Any] = {}

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
        texts = build_prompts(self.tokenizer, prompts, mode, self.chat_template_kwargs)
        outputs = self.llm.generate(texts, sampling, use_tqdm=False)
        return [[_reply(o) for o in out.outputs] * (params.n // reps) for out in outputs]

    def close(self) -> None:
        """Free the engine and its GPU memory (for training to use again)."""
        self.llm = None
        free_accelerator_memory()


def engine_arguments(config: SamplerConfig, seed: int | None = None) -> dict[str, Any]:
    """The ``vllm.LLM`` arguments of ``config``; one engine per process under a multi-process launch."""
    kwargs: dict[str, Any] = {
        "model": config.model,
        "dtype": config.dtype,
        "tensor_parallel_size": config.tensor_parallel_size,
        "gpu_memory_utilization": config.gpu_memory_utilization,
        "trust_remote_code": config.trust_remote_code,
    }
    if config.max_model_len:
        kwargs["max_model_len"] = config.max_model_len
    if seed is not None:
        kwargs["seed"] = seed
    if PartialState().num_processes > 1:
        kwargs["distributed_executor_backend"] = "external_launcher"  # this process's device, not a new group
    return kwargs


def free_accelerator_memory() -> None:
    """Collect unreferenced objects and return the accelerator's cached blocks (CUDA, NPU, XPU, MPS) to the device,
    as vLLM must see them free. The caller drops its references first (``del model, trainer``)."""
    clear_device_cache(garbage_collection=True)


def check_free_memory(utilization: float) -> None:
    """Refuse to start an engine that would not fit, naming what this process still holds (CUDA only: vLLM's own
    error says neither who holds the memory nor what to do)."""
    if not torch.cuda.is_available():
        return
    free, total = torch.cuda.mem_get_info()
    if free < utilization * total:
        held = torch.cuda.memory_allocated() / 2**30
        raise RuntimeError(
            f"vLLM asks for gpu_memory_utilization={utilization} of {total / 2**30:.1f} GiB but only "
            f"{free / 2**30:.1f} GiB are free, {held:.1f} GiB of it held by tensors of this process: drop the "
            "training model (del model, trainer) before sampling, or lower gpu_memory_utilization"
        )


def _reply(output: Any) -> Reply:
    ids = tuple(output.token_ids)
    logprobs = None
    if output.logprobs:
        logprobs = tuple(step[t].logprob for step, t in zip(output.logprobs, ids))
    finish = "length" if output.finish_reason == "length" else "stop"
    return Reply(output.text, len(ids), finish, token_ids=ids, logprobs=logprobs)
