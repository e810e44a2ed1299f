"""What the samplers share: the sampling parameters of one call, the sampler interface and the backend config.

These live below :mod:`train.sampling.base` (which re-exports them with :func:`~train.sampling.base.make_sampler`)
so that the backends can import them without importing each other.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from train.core.modes import Mode, ThinkFormat
from train.sampling.reply import Reply

BACKENDS = ("transformers", "vllm", "endpoint")


def chunk_seed(seed: int, key: str) -> int:
    """A seed for one chunk of a long sampling job, from the run's seed and a key of the chunk (its first id).

    Stable across runs and resumes (it does not depend on how many chunks came before), distinct across chunks.
    """
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:4], "big") >> 1


@dataclass
class SamplingParams:
    """How to sample one call: ``n`` replies per prompt, ``temperature == 0`` is greedy."""

    n: int = field(default=1, metadata={"help": "Replies per prompt."})
    temperature: float = field(default=0.0, metadata={"help": "Sampling temperature; 0 is greedy decoding."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling threshold."})
    max_new_tokens: int = field(default=256, metadata={"help": "Longest reply, in tokens."})
    seed: int | None = field(default=None, metadata={"help": "Seed of the call (None: the global random state)."})

    def __post_init__(self) -> None:
        if self.n < 1 or self.max_new_tokens < 1:
            raise ValueError(
                f"SamplingParams needs n >= 1 and max_new_tokens >= 1, got {self.n}, {self.max_new_tokens}"
            )
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingParams needs temperature >= 0 and 0 < top_p <= 1; got {self}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@runtime_checkable
class Sampler(Protocol):
    """Anything that samples replies: ``sample(prompts, params, mode)`` gives one list of ``params.n`` replies per
    prompt. Prompts are strings or message lists; ``mode`` adds its tag (None keeps the prompt's own tags).
    ``think`` is the run's think format (how its replies are parsed)."""

    think: ThinkFormat

    def sample(
        self, prompts: Sequence[Any], params: SamplingParams, mode: Mode | str | None = None
    ) -> list[list[Reply]]: ...


@dataclass
class SamplerConfig:
    """The keys every recipe and script shares to choose a sampling backend."""

    backend: str = field(default="transformers", metadata={"help": f"Sampling backend: one of {BACKENDS}."})
    model: str | None = field(
        default=None,
        metadata={"help": "Local path or hub id (transformers, vllm), or the model name sent to the endpoint."},
    )
    batch_size: int = field(default=64, metadata={"help": "Prompts per generate() call (transformers)."})
    dtype: str = field(
        default="auto",
        metadata={
            "help": "Weights dtype: bfloat16, float16, float32, or auto: the device's precision (transformers: bf16 "
            "on CUDA with bf16 and NPU, fp16 on older CUDA, fp32 on CPU/MPS; vLLM: its own auto)."
        },
    )
    device: str | None = field(
        default=None,
        metadata={
            "help": "transformers: device to load the model on, e.g. cuda:1, npu:0, cpu (None or auto: the one "
            "accelerate chose for this process)."
        },
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Run the checkpoint's own model/tokenizer code (openPangu needs it; transformers, vllm)."},
    )
    gpu_memory_utilization: float = field(default=0.9, metadata={"help": "vLLM: share of GPU memory to use."})
    tensor_parallel_size: int = field(default=1, metadata={"help": "vLLM: GPUs per model replica."})
    max_model_len: int | None = field(default=None, metadata={"help": "vLLM: context length (None: the model's)."})
    base_url: str = field(
        default="http://127.0.0.1:8000/v1",
        metadata={"help": "Endpoint root; requests go to {base_url}/chat/completions."},
    )
    api_key_env: str = field(
        default="OPENAI_API_KEY", metadata={"help": "Environment variable holding the API key (never the key itself)."}
    )
    timeout: float = field(default=120.0, metadata={"help": "Seconds to wait for one request before retrying."})
    max_retries: int = field(default=4, metadata={"help": "Retries after the first attempt; then the reply is lost."})
    backoff: float = field(default=1.0, metadata={"help": "First retry wait in seconds, doubled at each retry."})
    max_backoff: float = field(default=30.0, metadata={"help": "Upper bound on one back-off wait, in seconds."})
    concurrency: int = field(default=16, metadata={"help": "Endpoint requests in flight at once."})
    requests_per_second: float | None = field(
        default=None, metadata={"help": "Rate limit on endpoint request starts (None: no limit)."}
    )
    batch_budget: float | None = field(
        default=None,
        metadata={
            "help": "Seconds one batch of endpoint requests (chat_many) may take in all, retries included; requests "
            "not finished by then are given up and their replies are None, logged (None: no limit)."
        },
    )
    self_repair: bool = field(
        default=False, metadata={"help": "Cut and repair loops in the think block while generating (transformers)."}
    )

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"sampler backend {self.backend!r}; expected one of {BACKENDS}")
        if self.self_repair and self.backend != "transformers":
            raise ValueError(f"self_repair needs the transformers backend, not {self.backend!r}")
        if self.timeout <= 0 or self.max_retries < 0 or self.concurrency < 1 or self.batch_size < 1:
            raise ValueError("SamplerConfig: timeout > 0, max_retries >= 0, concurrency >= 1, batch_size >= 1 needed")
        if self.batch_budget is not None and self.batch_budget <= 0:
            raise ValueError(f"SamplerConfig.batch_budget must be > 0 or None, got {self.batch_budget}")
