"""Data selection for distillation: rejection sampling of teacher replies, and model-aware complexity selection.

    # keep, per prompt, the shortest teacher reply that passes the MARS rule (math, code) and model (judge) layers
    python scripts/select_data.py verify --input outputs/teacher.jsonl --out outputs/pool.jsonl
    # score prompts by complexity for a student (1 - pass rate of N samples) and select a training set
    python scripts/select_data.py complexity --model outputs/sft --input outputs/pool.jsonl --out outputs/selected \
        --num-samples 8 --target-size 2000 --weighting gaussian --center 0.5 --width 0.2
    # the pass rates on a GPU with vLLM, or from a server (vllm serve outputs/sft)
    python scripts/select_data.py complexity --model outputs/sft --input P --out O --backend vllm \
        --gpu-memory-utilization 0.8
    # candidates from a data set (hub id or local path) instead of --input
    python scripts/select_data.py complexity --model outputs/sft --dataset-name openai/gsm8k --dataset-config main \
        --dataset-preset gsm8k --out O

`verify` prints how many prompts kept a response, per task. `complexity` is the distillation's measure-and-select
step (train.distill.stage.measure_and_select) on its own: it writes selected.jsonl, complexity.jsonl,
data_stats.json and complexity.png into --out. Its sampler is any backend of train.sampling (the shared flags
--backend, --device, --dtype, --gpu-memory-utilization, --base-url, ...; see `complexity --help`); the
transformers backend samples on the device accelerate chose, in its precision.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rewards.judge import Judge
from rewards.verify import Verifier, rejection_sample
from train.core.cli import setup_logging
from train.core.data import DataError, read_records, write_jsonl
from train.core.loading import load_tokenizer
from train.core.modes import ThinkFormat
from train.core.sources import add_source_arguments, load_source_from
from train.distill.config import DistillConfig
from train.distill.loop import write_json
from train.distill.selection import WEIGHTINGS, measure_complexity
from train.distill.stage import measure_and_select
from train.distill.teacher import read_teacher_file
from train.sampling import add_sampler_arguments, make_sampler, sampler_config_from_args


def run_verify(args: argparse.Namespace) -> dict:
    judge = None
    if args.judge_model:
        judge = Judge(kind=args.judge_kind, backend=args.judge_backend, model=args.judge_model,
                      base_url=args.judge_base_url, cache_dir=args.judge_cache)  # fmt: skip
    rows = read_teacher_file(args.input)
    think = ThinkFormat.from_tokenizer(load_tokenizer(args.tokenizer))  # the format the teacher wrote in
    kept, report = rejection_sample(rows, Verifier(think=think, judge=judge, judge_threshold=args.judge_threshold))
    write_jsonl(args.out, kept)
    write_json(args.report or Path(args.out).with_suffix(".report.json"), report)
    for task, r in report.items():
        print(
            f"{task}: kept {r['kept']} of {r['prompts']} prompts ({r['kept_rate']:.1%}); "
            f"{r['correct']} of {r['samples']} samples correct (rule {r['by_rule']}, judge {r['by_model']}, "
            f"undecided {r['undecided']}); mean kept tokens {r['mean_kept_tokens']:.1f}"
        )
    return report


def run_complexity(args: argparse.Namespace) -> dict:
    """The distillation's measure-and-select step on one model and one file (or data set) of candidates."""
    if bool(args.input) == bool(args.dataset_name):
        raise DataError("--input / --dataset-name: give one source of candidates")
    records = read_records(args.input, validate=False) if args.input else load_source_from(args)
    cfg = DistillConfig(
        weighting=args.weighting, center=args.center, width=args.width, band_lo=args.band[0], band_hi=args.band[1],
        target_size=args.target_size, replay_fraction=args.replay_fraction, mastered_max=args.mastered_max,
        selection_seed=args.seed, complexity_samples=args.num_samples, complexity_temperature=args.temperature,
        mode=args.mode, max_new_tokens=args.max_new_tokens, generation_batch_size=args.batch_size,
    )  # fmt: skip
    sampler_config = sampler_config_from_args(args)
    tokenizer = load_tokenizer(args.tokenizer or args.model, trust_remote_code=sampler_config.trust_remote_code)
    think = ThinkFormat.from_tokenizer(tokenizer)
    sampler = make_sampler(sampler_config, think, tokenizer=tokenizer)
    try:
        complexities = measure_complexity(
            None, None, records, num_samples=args.num_samples, mode=args.mode, temperature=args.temperature,
            max_new_tokens=args.max_new_tokens, seed=args.seed, sampler=sampler, think=think,
        )  # fmt: skip
    finally:
        if hasattr(sampler, "close"):
            sampler.close()  # a vLLM engine gives its GPU back
    write_jsonl(Path(args.out) / "complexity.jsonl", [{**r, "complexity": c} for r, c in zip(records, complexities)])
    stats = measure_and_select(args.model, records, cfg, args.out, think, seed=args.seed, complexities=complexities)
    print(json.dumps({k: stats[k] for k in ("candidates", "selected", "mean_complexity_before",
                                             "mean_complexity_after")}))  # fmt: skip
    return stats


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser("verify", help="rejection sampling: keep the shortest verified teacher reply per prompt")
    v.add_argument("--input", required=True, help="teacher JSONL from scripts/generate_teacher.py")
    v.add_argument("--out", required=True, help="output records (with `response`) JSONL")
    v.add_argument("--report", help="per-task report JSON (default: next to --out)")
    v.add_argument(
        "--tokenizer", required=True, help="the student's tokenizer folder: its think format is the teacher replies'"
    )
    v.add_argument("--judge-model", help="model layer: judge model name (http) or path (transformers); off if unset")
    v.add_argument("--judge-backend", default="http", choices=["http", "transformers"], help="judge backend")
    v.add_argument("--judge-base-url", default="http://127.0.0.1:8000/v1", help="judge endpoint (http backend)")
    v.add_argument("--judge-cache", help="folder caching judge replies")
    v.add_argument(
        "--judge-kind",
        default="equivalence",
        choices=["equivalence", "rubric"],
        help="equivalence: against the `answer` column; rubric: a graded answer (no reference needed)",
    )
    v.add_argument("--judge-threshold", type=float, default=0.5, help="lowest judge score counted as correct")
    c = sub.add_parser("complexity", help="model-aware complexity and selection")
    c.add_argument("--model", required=True, help="the current student: a folder (endpoint: the served name)")
    c.add_argument("--tokenizer", help="the student's tokenizer folder (default: --model; needed for an endpoint)")
    c.add_argument("--input", help="candidate records (or --dataset-name)")
    c.add_argument("--out", required=True, help="output folder")
    c.add_argument("--num-samples", type=int, default=8, help="replies sampled per prompt")
    c.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    c.add_argument("--max-new-tokens", type=int, default=256, help="longest sampled reply")
    c.add_argument("--mode", default=None, help="mode tag for sampling (slow, fast); default: the prompts' own")
    c.add_argument("--weighting", default="gaussian", choices=WEIGHTINGS, help="selection weights")
    c.add_argument("--center", type=float, default=0.5, help="gaussian centre")
    c.add_argument("--width", type=float, default=0.2, help="gaussian width")
    c.add_argument("--band", type=float, nargs=2, default=[0.25, 0.75], metavar=("LO", "HI"), help="band limits")
    c.add_argument("--target-size", type=int, default=None, help="examples to select")
    c.add_argument("--replay-fraction", type=float, default=0.0, help="share drawn from mastered prompts")
    c.add_argument("--mastered-max", type=float, default=0.0, help="complexity at or below which a prompt is mastered")
    c.add_argument("--seed", type=int, default=0, help="seed of the sampling and of the selection's draw")
    add_sampler_arguments(c, skip=("model",))  # --backend, --device, --dtype, --batch-size, vLLM's, the endpoint's
    add_source_arguments(c)
    args = parser.parse_args(argv)
    setup_logging()
    return run_verify(args) if args.command == "verify" else run_complexity(args)


if __name__ == "__main__":
    main()
