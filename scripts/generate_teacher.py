"""Teacher generation: K sampled replies per prompt, written as it goes and resumable.

    # the programmatic arithmetic teacher, with mistakes and padded traces
    python scripts/generate_teacher.py --input outputs/data/train.jsonl --out outputs/teacher.jsonl \
        --backend arithmetic --k 4 --error_rate 0.2 --verbosity 0.5
    # a model served by vLLM (or any OpenAI-compatible endpoint); --tokenizer (the student's) says the think format
    python scripts/generate_teacher.py --input prompts.jsonl --out teacher.jsonl --backend openai \
        --model Qwen/Qwen3-32B --base_url http://127.0.0.1:8000/v1 --k 8 --concurrency 64 --tokenizer STUDENT
    # vLLM's offline engine (pip install 'fastslow[vllm]'), or a local transformers model on a GPU
    python scripts/generate_teacher.py --input prompts.jsonl --out teacher.jsonl --backend vllm --model PATH \
        --gpu_memory_utilization 0.85 --tensor_parallel_size 2
    python scripts/generate_teacher.py --input P --out T --backend transformers --model PATH --device cuda:0
    # prompts from a data set (a hub id or a local path, converted by its preset) instead of --input
    python scripts/generate_teacher.py --dataset_name openai/gsm8k --dataset_config main --dataset_preset gsm8k \
        --out teacher.jsonl --backend openai --model Qwen/Qwen3-32B --tokenizer STUDENT

A rerun with the same --out skips the prompts already done. Replies are written in the run's think format: the
tokenizer's (--tokenizer, else a local --model's), or --think_start/--think_end; the arithmetic teacher writes
Qwen3's tags without either. Options can also come from a YAML file (--config teacher.yaml); every option is listed
by --help.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from train.core.cli import parse_args, setup_logging
from train.core.data import DataError, read_records
from train.core.sources import DatasetArguments, load_source_from
from train.distill.loop import write_json
from train.distill.teacher import TeacherConfig, generate_teacher, make_backend


@dataclass
class GenerateArguments:
    """Input, output and sampling budget of a teacher run (backend options are TeacherConfig's)."""

    out: str = field(metadata={"help": "Output JSONL; one line per prompt with its K samples. Resumed if it exists."})
    input: str | None = field(
        default=None,
        metadata={"help": "Records to answer (JSONL, JSON, CSV, Parquet; see train/core/data.py); or dataset_name."},
    )
    k: int = field(default=4, metadata={"help": "Samples per prompt."})
    chunk_size: int = field(default=64, metadata={"help": "Prompts per backend call; each chunk is flushed to disk."})
    limit: int | None = field(default=None, metadata={"help": "Answer only the first N records."})
    report: str | None = field(default=None, metadata={"help": "Write the run's counts (prompts, tokens) as JSON."})


def main(argv: list[str] | None = None) -> dict:
    args, teacher, source = parse_args((GenerateArguments, TeacherConfig, DatasetArguments), argv)
    setup_logging()
    if bool(args.input) == bool(source.dataset_name):
        raise DataError("input / dataset_name: give one source of prompts")
    records = read_records(args.input)[: args.limit] if args.input else load_source_from(source, limit=args.limit)
    report = generate_teacher(records, make_backend(teacher), args.out, k=args.k, chunk_size=args.chunk_size)
    if args.report:
        write_json(args.report, report.as_dict())
    print(
        f"{args.out}: {report.generated} prompts generated, {report.skipped} already done, "
        f"{report.samples} samples, {report.tokens} tokens, {report.seconds:.1f}s"
    )
    return report.as_dict()


if __name__ == "__main__":
    main()
