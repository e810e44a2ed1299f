"""Build Stage-2 fusion data: label each prompt fast or slow from the model's pass rates, pick targets, tag.

    python scripts/build_fusion_data.py --model outputs/sft --data outputs/data/train.jsonl --out outputs/fusion \
        --num_samples 4 --check exact --max_prompts 1000

Writes ``labels.jsonl`` (one line per prompt: pass rates, label, targets), ``fusion.jsonl`` (``/no_think``,
``/think``, untagged and ``/auto_think`` records, the recipe's ``fusion_file``), ``stats.json`` and ``labels.png``
(labels against difficulty). An interrupted build resumes from ``labels.jsonl``. Every option of the builder
(``train.dual_system.fusion.FusionBuildConfig``) is a flag; see ``--help``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from train.core.cli import setup_logging
from train.core.data import load_records
from train.core.device import detect_device, model_dtype
from train.core.loading import load_model_and_tokenizer
from train.dual_system.fusion import FusionBuildConfig, build_fusion, merge_prompts


@dataclass
class BuildArgs:
    """Inputs and output of the fusion data build."""

    model: str = field(metadata={"help": "The current (slow-mode) model: a folder or hub id."})
    data: list[str] = field(metadata={"help": "Prompt record files (prompt, task, answer/tests; response/pool)."})
    out: str = field(default="outputs/fusion", metadata={"help": "Output folder."})
    max_prompts: int | None = field(default=None, metadata={"help": "Label at most this many prompts."})
    dtype: str | None = field(
        default=None,
        metadata={
            "help": "Model dtype: float32, bfloat16, float16 or auto (the checkpoint's); default: the device's (bf16 "
            "on CUDA and NPU, fp32 on CPU)."
        },
    )
    device: str = field(
        default="auto", metadata={"help": "Device to sample on: cuda, npu, mps, cpu or auto (the best present)."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the sampling: the same seed gives the same labels."})


def main(argv: list[str] | None = None) -> dict:
    args, config = HfArgumentParser([BuildArgs, FusionBuildConfig]).parse_args_into_dataclasses(argv)
    setup_logging()
    records = merge_prompts([r for f in args.data for r in load_records(f).to_list()])
    records = records[: args.max_prompts] if args.max_prompts else records
    device = detect_device() if args.device == "auto" else args.device
    model, tokenizer = load_model_and_tokenizer(args.model, dtype=args.dtype or model_dtype(device))
    model.to(device)
    stats = build_fusion(model, tokenizer, records, config, args.out, seed=args.seed)
    print(json.dumps({k: stats[k] for k in ("prompts", "usable", "records", "labels", "label_sources")}, indent=2))
    return stats


if __name__ == "__main__":
    main()
