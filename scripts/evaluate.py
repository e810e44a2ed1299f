"""Mode-aware evaluation of a model on a benchmark: fast, slow and auto mode side by side.

    python scripts/evaluate.py --model outputs/dual_system --data outputs/data/test.jsonl --out outputs/eval
    # 16 samples per prompt, unbiased pass@1/4/8 from them
    python scripts/evaluate.py --model M --data math500.jsonl --format math500 --n 16 --k 1 4 8 --seed 0 \
        --max-new-tokens 4096
    python scripts/evaluate.py --model M --dataset-name HuggingFaceH4/MATH-500 --dataset-split test \
        --dataset-preset math500

Reports avg@n and pass@k (Chen et al.'s unbiased estimator from the n samples), mean output tokens, the truncation
rate (replies that hit --max-new-tokens), tag compliance, the share of fast replies per difficulty bucket, auto
mode's right-mode rate, and accuracy over token budgets (see ``train/eval/evaluation.py`` and
``train/eval/passk.py``). Writes under ``--out``: ``<name>.json`` (with the sampling settings), ``<name>.md`` (the
table printed here), ``<name>.png`` (accuracy against tokens per mode), ``<name>.budget.png`` (accuracy over token
budgets per mode) and ``<name>.generations.jsonl`` (every reply, its tokens, finish reason and correctness). The
model samples on the best device present (``--device``) in that device's precision (``--dtype``). Data: a local
benchmark file (``--data``, rows converted by ``--format``) or a data set (``--dataset-name``, a hub id or a local
path, with a preset or column mapping: ``train/core/sources.py``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from train.core.checks import exact_match
from train.core.cli import setup_logging
from train.core.device import detect_device, model_dtype
from train.core.loading import load_model_and_tokenizer
from train.core.sources import add_source_arguments
from train.eval import benchmarks
from train.eval.evaluation import evaluate, markdown_table, write_results

CHECKS = {"benchmark": benchmarks.check, "exact": exact_match}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model folder (or hub id) with a tokenizer")
    p.add_argument("--data", help="benchmark file: .jsonl, .json, .csv or .parquet (or --dataset-name)")
    p.add_argument("--format", default="auto", choices=benchmarks.FORMATS, help="row format (auto: guessed)")
    p.add_argument("--modes", nargs="+", default=["fast", "slow", "auto"], help="modes to evaluate")
    p.add_argument("--k", type=int, nargs="+", default=[1], help="pass@k values to report (each <= n)")
    p.add_argument("--n", type=int, default=None, help="replies per prompt (default: the largest k; 1: greedy)")
    p.add_argument("--temperature", type=float, default=0.6, help="sampling temperature when n > 1")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling when n > 1")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling")
    p.add_argument("--budget-points", type=int, default=16, help="token budgets on the accuracy-over-budget curve")
    p.add_argument("--max-new-tokens", type=int, default=256, help="token budget per reply")
    p.add_argument("--batch-size", type=int, default=64, help="prompts per generation batch")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N rows")
    p.add_argument("--check", default="benchmark", choices=sorted(CHECKS), help="answer checker")
    p.add_argument("--no-hint", action="store_true", help="do not add the answer-format hint to converted rows")
    p.add_argument("--self-repair", action="store_true", help="generate with repetition self-repair")
    p.add_argument("--right-mode-threshold", type=float, default=0.5, help="fast accuracy that makes fast right")
    p.add_argument(
        "--dtype",
        default=None,
        help="model dtype: float32, bfloat16, float16, auto (the checkpoint's); default: the device's (bf16 on CUDA "
        "and NPU, fp32 on CPU)",
    )
    p.add_argument(
        "--device", default="auto", help="device to sample on: cuda, npu, mps, cpu or auto (the best present)"
    )
    p.add_argument("--out", default="outputs/eval", help="output folder")
    p.add_argument("--name", default="eval", help="file name stem of the results")
    add_source_arguments(p)
    args = p.parse_args(argv)
    if bool(args.data) == bool(args.dataset_name):
        p.error("give exactly one of --data (a benchmark file) and --dataset-name (a data set)")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    setup_logging()
    if args.data:
        records = benchmarks.load_benchmark(args.data, args.format, args.limit, hint=not args.no_hint)
    else:
        # Benchmark conversion keeps multiple choice as task `choice`, scored on the option letter.
        records = benchmarks.load_benchmark_from(args, limit=args.limit, hint=not args.no_hint)
    device = detect_device() if args.device == "auto" else args.device
    model, tokenizer = load_model_and_tokenizer(args.model, dtype=args.dtype or model_dtype(device))
    model.to(device)
    start = time.perf_counter()
    results = evaluate(
        model,
        tokenizer,
        records,
        modes=args.modes,
        check=CHECKS[args.check],
        k=args.k,
        n=args.n,
        seed=args.seed,
        generations_path=Path(args.out) / f"{args.name}.generations.jsonl",
        budget_points=args.budget_points,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        self_repair=args.self_repair,
        right_mode_threshold=args.right_mode_threshold,
    )
    results.update(model=args.model, data=args.data or args.dataset_name, wall_s=round(time.perf_counter() - start, 1))
    paths = write_results(results, args.out, args.name)
    print(markdown_table(results))
    written = ", ".join(str(p) for p in [*paths.values(), results["generations"]])
    print(f"wall time {results['wall_s']} s; results in {written}")
    return results


if __name__ == "__main__":
    main()
