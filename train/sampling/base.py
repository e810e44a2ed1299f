"""The sampler interface, its config, and :func:`make_sampler`, which builds the backend a config names.

Backends: ``transformers`` (:class:`~train.sampling.transformers.TransformersSampler`, or
:class:`~train.sampling.self_repair.RepairingSampler` with ``self_repair``), ``vllm``
(:class:`~train.sampling.vllm.VLLMSampler`) and ``endpoint`` (:class:`~train.sampling.endpoint.EndpointSampler`).
"""

from __future__ import annotations

from typing import Any

from train.core.device import model_dtype
from train.core.loading import LoadOptions, load_model, load_tokenizer, sampling_device
from train.core.modes import ThinkFormat
from train.sampling.endpoint import EndpointSampler
from train.sampling.params import BACKENDS, Sampler, SamplerConfig, SamplingParams
from train.sampling.self_repair import RepairingSampler
from train.sampling.transformers import TransformersSampler
from train.sampling.vllm import VLLMSampler

__all__ = ["BACKENDS", "Sampler", "SamplerConfig", "SamplingParams", "make_sampler"]


def make_sampler(
    config: SamplerConfig, think: ThinkFormat | None = None, model: Any = None, tokenizer: Any = None
) -> Sampler:
    """The sampler ``config.backend`` names.

    An already loaded ``model``/``tokenizer`` serves the transformers backend (else ``config.model`` is loaded on
    ``config.device``, by default the device accelerate chose for this process, in ``config.dtype``, by default
    that device's precision: bf16 on a GPU or NPU, not float32 on the CPU). ``think`` defaults to the tokenizer's
    format; vLLM reads the tokenizer from ``config.model`` when neither is given; the endpoint needs one of them.
    """
    if config.backend == "transformers":
        if model is None:
            if not config.model:
                raise ValueError("the transformers sampler needs a loaded model or SamplerConfig.model")
            device, options = sampling_device(config.device), LoadOptions(trust_remote_code=config.trust_remote_code)
            if tokenizer is None:
                tokenizer = load_tokenizer(config.model, think, trust_remote_code=config.trust_remote_code)
            dtype = None if config.dtype == "auto" else config.dtype  # None: the device's precision
            model = load_model(config.model, dtype or model_dtype(device.type), tokenizer, options=options)
            model.to(device).eval()
        if tokenizer is None:
            raise ValueError("the transformers sampler needs the model's tokenizer")
        cls = RepairingSampler if config.self_repair else TransformersSampler
        return cls(model, tokenizer, config.batch_size, think=think)
    if config.backend == "vllm":
        if think is None and tokenizer is None and config.model:
            tokenizer = load_tokenizer(config.model, trust_remote_code=config.trust_remote_code)  # the think format
        return VLLMSampler(config, _think(think, tokenizer), tokenizer=tokenizer)
    return EndpointSampler(config, _think(think, tokenizer))


def _think(think: ThinkFormat | None, tokenizer: Any) -> ThinkFormat:
    if think is not None:
        return think
    if tokenizer is None:
        raise ValueError("this sampler has no tokenizer to read the think format from: pass `think`")
    return ThinkFormat.from_tokenizer(tokenizer)
