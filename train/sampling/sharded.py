"""Sampling inside a multi-process training run: every rank samples its share of the prompts, the replies are
gathered back in the prompts' order, and the model sampled from is loaded whole from its saved folder, outside a
live ZeRO-3 / FSDP loading context.

Why: a phase that samples on the main process only while the others wait at a barrier either hangs (a
``from_pretrained`` under a live ZeRO-3 config enters ``deepspeed.zero.Init``, a collective the waiting ranks never
join; a sharded training model generates only if every rank runs the same forwards) or needs one device for all the
work (an 8,192-token batch of 64 on one GPU of eight). Here each rank loads the checkpoint folder itself
(:func:`outside_sharding`), samples ``1/N`` of the prompts (accelerate's ``split_between_processes``) and the
replies are all-gathered (accelerate's ``gather_object``), so every rank ends with the same full list.

The backend is the run's choice (:class:`SamplerArguments`, mixed into each recipe's config): transformers on the
rank's own device, vLLM offline per rank, or an OpenAI-compatible endpoint (each rank sends its share).
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import field, fields
from pathlib import Path
from typing import Any

from accelerate import PartialState
from accelerate.utils import gather_object
from transformers.integrations import deepspeed as hf_deepspeed

from train.core.modes import Mode, ThinkFormat
from train.sampling.base import SamplerConfig, make_sampler
from train.sampling.params import Sampler, SamplingParams, chunk_seed
from train.sampling.reply import Reply

#: SamplerConfig fields a recipe does not take from the mixin: each stage has its own batch key
#: (distillation's ``generation_batch_size``, fusion's ``batch_size``) and fusion its own ``self_repair``.
NOT_MIXED = ("batch_size", "self_repair")
PREFIX = "sampler_"
_HELP = {
    "model": "Endpoint backend: the served model's name (default: the checkpoint's path, as `vllm serve PATH` "
    "names it). The transformers and vLLM backends always sample the stage's own checkpoint.",
    "device": "transformers backend: device to sample on (default: this process's device, cuda:<local rank>).",
}


def _mixed_field(f: dataclasses.Field) -> tuple[str, Any, dataclasses.Field]:
    metadata = {"help": f"Sampling phases: {_HELP.get(f.name, f.metadata['help'])}"}
    if f.default_factory is not dataclasses.MISSING:
        return PREFIX + f.name, f.type, field(default_factory=f.default_factory, metadata=metadata)
    return PREFIX + f.name, f.type, field(default=f.default, metadata=metadata)


def _sampler_for(self: Any, model: str | Path | None = None, **overrides: Any) -> SamplerConfig:
    """The sampler config of one sampling phase: the ``sampler_*`` keys, then ``overrides``; ``model`` is the
    checkpoint the phase samples (the endpoint sends ``sampler_model`` instead when it is set)."""
    options = {f.name: getattr(self, PREFIX + f.name) for f in fields(SamplerConfig) if f.name not in NOT_MIXED}
    if model is not None and not (options["backend"] == "endpoint" and options["model"]):
        options["model"] = str(model)
    options.update(overrides)
    return SamplerConfig(**options)


#: The sampler keys every recipe shares (``sampler_backend``, ``sampler_base_url``, ``sampler_dtype``, ...):
#: :class:`~train.sampling.params.SamplerConfig`'s fields under a ``sampler_`` prefix (``dtype``/``model`` would
#: clash with trl's ModelConfig), generated from it so the two cannot drift apart.
SamplerArguments = dataclasses.make_dataclass(
    "SamplerArguments",
    [_mixed_field(f) for f in fields(SamplerConfig) if f.name not in NOT_MIXED],
    namespace={"sampler_for": _sampler_for, "__module__": __name__},
)
SamplerArguments.__doc__ = "The sampling-backend keys of every recipe (``sampler_*``; see SamplerConfig)."


# ------------------------------------------------------------------------------------------- split and gather


def run_sharded(
    items: Sequence[Any],
    work: Callable[[list[Any]], Sequence[Any]],
    state: Any = None,
    gather: Callable[[list[Any]], list[Any]] = gather_object,
) -> list[Any]:
    """``work`` over this rank's contiguous share of ``items``, the results of all ranks gathered in ``items``' order.

    ``work`` returns one result per item. Every rank must call this (the gather is a collective); a rank whose
    share is empty still joins it. One process: ``work(items)``. ``state`` is accelerate's ``PartialState``
    (anything with ``num_processes``, ``process_index`` and ``split_between_processes``); ``gather`` concatenates
    the ranks' lists in rank order (accelerate's ``gather_object``).
    """
    state = state if state is not None else PartialState()
    items = list(items)
    if state.num_processes == 1:
        return list(work(items))
    with state.split_between_processes(items) as mine:
        local = list(work(list(mine))) if mine else []
    if len(local) != len(mine):
        raise RuntimeError(f"rank {state.process_index}: {len(local)} results for {len(mine)} items")
    out = gather(local)
    if len(out) != len(items):
        raise RuntimeError(f"gathered {len(out)} results for {len(items)} items")
    return out


class ShardedSampler:
    """A sampler whose ``sample`` splits the prompts across the ranks and gathers the replies back in order.

    Every rank must call ``sample`` with the same prompts; each samples its share outside the training's ZeRO-3
    config (:func:`outside_sharding`). A seeded call draws with a seed derived from the seed and
    the rank (ranks must not repeat each other's draws); in a one-process run the seed is used as given, so results
    equal an unsharded sampler's. Greedy results do not depend on the number of ranks.
    """

    def __init__(self, sampler: Sampler, state: Any = None, gather: Callable[[list[Any]], list[Any]] = gather_object):
        self.sampler = sampler
        self.state = state if state is not None else PartialState()
        self.gather = gather
        self.think: ThinkFormat = sampler.think

    def sample(
        self, prompts: Sequence[Any], params: SamplingParams, mode: Mode | str | None = None
    ) -> list[list[Reply]]:
        if self.state.num_processes > 1 and params.seed is not None:
            params = dataclasses.replace(params, seed=chunk_seed(params.seed, f"rank{self.state.process_index}"))
        # Outside the ZeRO-3 config: under it, generate() syncs every rank's forwards (synced_gpus), which hangs when
        # the ranks' shares take different numbers of batches; the model here is whole on each rank.
        with outside_sharding():
            return run_sharded(prompts, lambda mine: self.sampler.sample(mine, params, mode), self.state, self.gather)

    def with_inner(self, change: Callable[[Sampler], Sampler]) -> ShardedSampler:
        """A copy sharding ``change(inner sampler)`` (e.g. one that prefills the empty think block)."""
        out = copy.copy(self)
        out.sampler = change(self.sampler)
        return out

    def close(self) -> None:
        if hasattr(self.sampler, "close"):
            self.sampler.close()

    def __getattr__(self, name: str) -> Any:  # tokenizer, chat_template_kwargs, ... of the inner sampler
        if name == "sampler":
            raise AttributeError(name)
        return getattr(self.sampler, name)


# --------------------------------------------------------------------------------- loading outside sharding


@contextmanager
def outside_sharding() -> Iterator[None]:
    """Load models whole on this process, even inside a ZeRO-3 or FSDP training run.

    transformers reads two global switches in ``from_pretrained``: a live ZeRO-3 config (the weak reference
    ``set_hf_deepspeed_config`` leaves; with it the model is built inside ``deepspeed.zero.Init``, a collective,
    and its parameters are partitioned) and FSDP's RAM-efficient loading (``FSDP_CPU_RAM_EFFICIENT_LOADING``; with
    it every rank but the first gets meta tensors to be filled by a broadcast). A model to sample with needs neither.
    Both are restored on exit, so the training set-up that follows is unchanged.
    """
    ref = hf_deepspeed._hf_deepspeed_config_weak_ref  # restored as it was: there is no public getter of the object
    env = os.environ.get("FSDP_CPU_RAM_EFFICIENT_LOADING")
    hf_deepspeed.unset_hf_deepspeed_config()
    os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] = "false"
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = ref
        if env is None:
            os.environ.pop("FSDP_CPU_RAM_EFFICIENT_LOADING", None)
        else:
            os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] = env


def checkpoint_sampler(
    config: SamplerConfig,
    think: ThinkFormat,
    state: Any = None,
    *,
    model: Any = None,
    tokenizer: Any = None,
) -> ShardedSampler:
    """A sharded sampler of the checkpoint ``config.model`` names, built the same way on every rank.

    transformers: the folder is loaded whole (:func:`outside_sharding`) on ``config.device``, by default the device
    accelerate chose for this process (not ``cuda:0`` on every rank), with its tokenizer in the run's ``think``
    format (:func:`~train.sampling.base.make_sampler`); an already loaded ``model`` (and ``tokenizer``) is used
    instead when given, for callers that know it is whole on this process. vLLM starts an engine per rank on the
    folder; the endpoint gets each rank's share of the requests. ``close()`` frees an engine; dropping the sampler
    frees a transformers model.
    """
    if config.backend == "transformers" and model is None and not config.model:
        raise ValueError("a checkpoint sampler needs the checkpoint folder (SamplerConfig.model)")
    if config.backend != "transformers":
        model = None
    with outside_sharding():
        sampler = make_sampler(config, think, model=model, tokenizer=tokenizer)
    return ShardedSampler(sampler, state)


def is_sharded_training() -> bool:
    """Whether models loaded now would be sharded: a live ZeRO-3 config, or FSDP in accelerate's environment."""
    return hf_deepspeed.is_deepspeed_zero3_enabled() or os.environ.get("ACCELERATE_USE_FSDP", "").lower() in (
        "1",
        "true",
    )
