"""Mode-aware evaluation of a model on a local benchmark file: fast, slow and auto mode side by side.

    python scripts/evaluate.py --model outputs/dual_system --data outputs/data/test.jsonl --out outputs/eval
    python scripts/evaluate.py --model M --data math500.jsonl --format math500 --k 4 --max-new-tokens 4096

Reports avg@k and pass@k, mean output tokens, tag compliance, the share of fast replies per difficulty bucket and
auto mode's right-mode rate (see ``train/eval/evaluation.py``). Writes ``<name>.json``, ``<name>.md`` (the table
printed here) and ``<name>.png`` (accuracy against tokens per mode) under ``--out``. The model samples on the best
device present (``--device``) in that device's precision (``--dtype``).
"""

from __future__ import annotations

import argparse
import time

from train.core.checks import exact_match
from train.core.cli import setup_logging
from train.core.device import detect_device, model_dtype
from train.core.loading import load_model_and_tokenizer
from train.eval import benchmarks
from train.eval.evaluation import evaluate, markdown_table, write_results

CHECKS = {"benchmark": benchmarks.check, "exact": exact_match}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model folder (or hub id) with a tokenizer")
    p.add_argument("--data", required=True, help="benchmark file: .jsonl, .json, .csv or .parquet")
    p.add_argument("--format", default="auto", choices=benchmarks.FORMATS, help="row format (auto: guessed)")
    p.add_argument("--modes", nargs="+", default=["fast", "slow", "auto"], help="modes to evaluate")
    p.add_argument("--k", type=int, default=1, help="replies per prompt (1: greedy; >1: sampled, gives pass@k)")
    p.add_argument("--temperature", type=float, default=0.6, help="sampling temperature when k > 1")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling when k > 1")
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
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    setup_logging()
    records = benchmarks.load_benchmark(args.data, args.format, args.limit, hint=not args.no_hint)
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
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        self_repair=args.self_repair,
        right_mode_threshold=args.right_mode_threshold,
    )
    results.update(model=args.model, data=args.data, wall_s=round(time.perf_counter() - start, 1))
    paths = write_results(results, args.out, args.name)
    print(markdown_table(results))
    print(f"wall time {results['wall_s']} s; results in {paths['json']}, {paths['md']}, {paths['png']}")
    return results


if __name__ == "__main__":
    main()
