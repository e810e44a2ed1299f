"""Build Stage-2 fusion data: label each prompt fast or slow from the model's pass rates, pick targets, tag.

    python scripts/build_fusion_data.py --model outputs/sft --data outputs/data/train.jsonl --out outputs/fusion \
        --num_samples 4 --check exact --max_prompts 1000
    # on a GPU with vLLM, or against a server (vllm serve outputs/sft --data-parallel-size 8)
    python scripts/build_fusion_data.py --model outputs/sft --data D --backend vllm --gpu_memory_utilization 0.8
    python scripts/build_fusion_data.py --model outputs/sft --data D --backend endpoint --base_url http://H:8000/v1
    # a data set instead of record files (a hub id or a local path, converted by its preset)
    python scripts/build_fusion_data.py --model outputs/sft --dataset-name openai/gsm8k --dataset-config main \
        --dataset-preset gsm8k

Writes ``labels.jsonl`` (one line per prompt: pass rates, label, targets), ``fusion.jsonl`` (``/no_think``,
``/think``, untagged and ``/auto_think`` records, the recipe's ``fusion_file``), ``stats.json`` and ``labels.png``
(labels against difficulty). An interrupted build resumes from ``labels.jsonl``. Every option of the builder
(``train.dual_system.fusion.FusionBuildConfig``) and of the sampler (``train.sampling.SamplerConfig``: backend,
device, dtype, vLLM's engine, the endpoint) is a flag; see ``--help``. The transformers backend samples on the
device accelerate chose (``--device``) in its precision (``--dtype``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from train.core.cli import setup_logging
from train.core.data import DataError, load_records
from train.core.loading import load_tokenizer
from train.core.sources import add_source_arguments, load_source_from
from train.dual_system.fusion import FusionBuildConfig, build_fusion, merge_prompts
from train.sampling import add_sampler_arguments, make_sampler, sampler_config_from_args


@dataclass
class BuildArgs:
    """Inputs and output of the fusion data build."""

    model: str = field(
        metadata={"help": "The current (slow-mode) model: a folder or hub id (endpoint: the served model's name)."}
    )
    data: list[str] = field(
        default_factory=list,
        metadata={"help": "Prompt record files (prompt, task, answer/tests; response/pool); or --dataset-name."},
    )
    tokenizer: str | None = field(
        default=None,
        metadata={"help": "The model's tokenizer folder (default: --model); needed when --model is a served name."},
    )
    out: str = field(default="outputs/fusion", metadata={"help": "Output folder."})
    max_prompts: int | None = field(default=None, metadata={"help": "Label at most this many prompts."})
    seed: int = field(default=0, metadata={"help": "Seed of the sampling: the same seed gives the same labels."})


def parse(argv: list[str] | None = None) -> tuple[BuildArgs, FusionBuildConfig, object]:
    parser = HfArgumentParser([BuildArgs, FusionBuildConfig], description=__doc__)
    add_sampler_arguments(parser, skip=("model", "batch_size", "self_repair"))  # the builder has its own two
    add_source_arguments(parser)
    args, config, rest = parser.parse_args_into_dataclasses(argv)
    return args, config, rest


def main(argv: list[str] | None = None) -> dict:
    args, config, rest = parse(argv)
    setup_logging()
    if not args.data and not rest.dataset_name:
        raise DataError("--data / --dataset-name: give prompt record files or a data set")
    rows = [r for f in args.data for r in load_records(f).to_list()]
    if rest.dataset_name:
        rows += load_source_from(rest, limit=None if args.data else args.max_prompts)
    records = merge_prompts(rows)
    records = records[: args.max_prompts] if args.max_prompts else records
    sampler_config = sampler_config_from_args(
        rest, model=args.model, batch_size=config.batch_size, self_repair=config.self_repair
    )
    tokenizer = load_tokenizer(args.tokenizer or args.model, trust_remote_code=sampler_config.trust_remote_code)
    sampler = make_sampler(sampler_config, tokenizer=tokenizer)
    try:
        stats = build_fusion(None, tokenizer, records, config, args.out, sampler=sampler, seed=args.seed)
    finally:
        if hasattr(sampler, "close"):
            sampler.close()  # a vLLM engine gives its GPU back
    print(json.dumps({k: stats[k] for k in ("prompts", "usable", "records", "labels", "label_sources")}, indent=2))
    return stats


if __name__ == "__main__":
    main()
