"""Benchmark of the distillation recipe on the arithmetic world, every arm measured in the same run.

    OMP_NUM_THREADS=1 python scripts/bench/distill.py --out outputs/bench-distill   # ~15-25 min on 2 busy cores
    python scripts/bench/distill.py --out /tmp/bench-smoke --quick          # a smoke run of the whole pipeline

The teacher makes mistakes (``--error-rate``) and pads its traces (``--verbosity``); K replies per prompt are
verified and the shortest correct one kept, giving the pool. A small model is warmed up on a slice of it (so that
complexities spread over [0, 1]), then three arms run ``recipes/distill.py`` for ``--iterations`` rounds with the
same budget of training examples and steps per iteration:

* ``aware+ema``: model-aware selection (Gaussian around complexity 0.5), EMA merge between iterations;
* ``random+ema``: random selection of the same size, EMA merge (the baseline of (a));
* ``aware+none``: model-aware selection, no merge (the baseline of (b); it shares iteration 0 with ``aware+ema``,
  which has nothing to merge yet, by resuming from a copy of it);
* ``aware@0.8+ema``: model-aware selection with the Gaussian centred at complexity 0.8 instead of 0.5.

``--aggregate DIR [DIR ...]`` prints the mean (and range) over runs with different ``--seed``.

Reported: held-out accuracy on hard problems (level 3) after each iteration, accuracy on the first iteration's
data at the end (forgetting), and (c) the mean trace length of kept data with shortest-correct selection against
keeping the first correct reply and against keeping an unverified reply (with its error rate).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
import statistics
import time
from pathlib import Path

from rewards.verify import Verifier, rejection_sample, reply_correct
from train.core.cli import run_script, setup_logging
from train.core.data import difficulty_bucket, validate_record, write_jsonl
from train.core.modes import QWEN3_THINK
from train.distill.loop import iteration_dir, write_json
from train.distill.teacher import ArithmeticBackend
from train.world.arithmetic import make_problems
from train.world.tiny import make_tiny

ROOT = Path(__file__).resolve().parents[2]

logger = logging.getLogger("bench.distill")

ARMS = {
    "aware+ema": ["--selection", "model_aware", "--merge_method", "ema"],
    "random+ema": ["--selection", "random", "--merge_method", "ema"],
    "aware+none": ["--selection", "model_aware", "--merge_method", "none"],
    "aware@0.8+ema": ["--selection", "model_aware", "--merge_method", "ema", "--center", "0.8"],
}


def build_pool(args: argparse.Namespace, out: Path) -> dict:
    """Teacher replies (K per prompt), verified, shortest correct kept; trace-length comparison for (c)."""
    test = [validate_record(p) for p in make_problems(args.n_test_hard, levels=(3,), seed=101)]
    test += [validate_record(p) for p in make_problems(args.n_test_easy, levels=(1, 2), seed=102)]
    exclude = {r["id"] for r in test}
    train = [validate_record(p) for p in make_problems(args.pool, levels=(1, 2, 3), seed=0, exclude=exclude)]
    teacher = ArithmeticBackend(verbosity=args.verbosity, error_rate=args.error_rate, seed=0, think=QWEN3_THINK)
    samples = teacher.generate(train, args.k)
    rows = [{**r, "samples": [s.as_sample() for s in ss]} for r, ss in zip(train, samples)]
    kept, report = rejection_sample(rows, Verifier(think=QWEN3_THINK), progress=False)
    write_jsonl(out / "pool.jsonl", kept)
    write_jsonl(out / "test.jsonl", test)
    # (c) what the kept data would look like without shortest-correct selection.
    rng = random.Random(0)
    first_correct, unverified, unverified_wrong = [], [], 0
    for row in rows:
        ok = [s for s in row["samples"] if reply_correct(s["text"], row, QWEN3_THINK)]
        if ok:
            first_correct.append(ok[0]["num_tokens"])
        pick = rng.choice(row["samples"])
        unverified.append(pick["num_tokens"])
        unverified_wrong += not reply_correct(pick["text"], row, QWEN3_THINK)
    return {
        "pool": len(kept),
        "prompts": len(rows),
        "kept_rate": report["math"]["kept_rate"],
        "tokens_shortest_correct": statistics.mean(r["num_tokens"] for r in kept),
        "tokens_first_correct": statistics.mean(first_correct),
        "tokens_unverified": statistics.mean(unverified),
        "unverified_error_rate": unverified_wrong / len(rows),
    }


def warm_up(args: argparse.Namespace, out: Path) -> Path:
    """A small model trained briefly on a slice of the pool, so that its pass rates spread over [0, 1]."""
    model_dir = make_tiny(out / "init", size=args.size, seed=args.seed, think=QWEN3_THINK)
    pool = [json.loads(x) for x in (out / "pool.jsonl").read_text().splitlines()]
    write_jsonl(out / "warmup.jsonl", random.Random(1).sample(pool, min(args.warmup_examples, len(pool))))
    run_script(ROOT / "recipes/sft.py", *[
        "--model_name_or_path", str(model_dir), "--train_files", str(out / "warmup.jsonl"),
        "--output_dir", str(out / "warm"), "--max_steps", str(args.warmup_steps),
        "--per_device_train_batch_size", str(args.batch_size), "--learning_rate", "3e-3",
        "--lr_scheduler_type", "constant", "--max_length", "160", "--assistant_only_loss", "true",
        "--save_strategy", "no", "--report_to", "none", "--logging_steps", "50", "--disable_tqdm", "true",
        "--seed", str(args.seed), "--dtype", "float32",
    ])  # fmt: skip
    return out / "warm"


def run_arm(name: str, args: argparse.Namespace, out: Path, model: Path) -> dict:
    arm_dir = out / name.replace("+", "_")
    if name == "aware+none" and not iteration_dir(arm_dir, 0).exists():
        # Iteration 0 has nothing to merge with, so it is the same run as aware+ema's: resume from a copy.
        shutil.copytree(iteration_dir(out / "aware_ema", 0), iteration_dir(arm_dir, 0))
        shutil.copy2(out / "aware_ema" / "initial_metrics.json", arm_dir / "initial_metrics.json")
    start = time.perf_counter()
    run_script(ROOT / "recipes/distill.py", *[
        "--config", str(ROOT / "recipes/configs/tiny/distill.yaml"),
        "--model_name_or_path", str(model), "--train_file", str(out / "pool.jsonl"),
        "--eval_file", str(out / "test.jsonl"), "--output_dir", str(arm_dir),
        "--iterations", str(args.iterations), "--candidates_per_iteration", str(args.candidates),
        "--target_size", str(args.target_size), "--complexity_samples", str(args.samples),
        "--max_steps", str(args.steps), "--per_device_train_batch_size", str(args.batch_size),
        "--max_new_tokens", "80", "--generation_batch_size", "128", "--eval_max_samples", "100000",
        "--hard_min_difficulty", "3", "--track_first_iteration", str(args.first_eval),
        "--replay_fraction", "0.1", "--seed", str(args.seed), "--selection_seed", str(args.seed), *ARMS[name],
    ])  # fmt: skip
    seconds = time.perf_counter() - start
    metrics = [json.loads((iteration_dir(arm_dir, t) / "metrics.json").read_text()) for t in range(args.iterations)]
    stats = [json.loads((iteration_dir(arm_dir, t) / "data_stats.json").read_text()) for t in range(args.iterations)]
    initial = json.loads((arm_dir / "initial_metrics.json").read_text())["held_out"]
    return {
        "seconds": seconds,
        "initial_hard": initial.get("accuracy_hard"),
        "initial_all": initial["accuracy"],
        "hard": [m["held_out"].get("accuracy_hard") for m in metrics],
        "all": [m["held_out"]["accuracy"] for m in metrics],
        "first_data_end": metrics[-1]["first_iteration_data"]["accuracy"],
        "first_data_after_0": metrics[0]["first_iteration_data"]["accuracy"],
        "mean_selected_complexity": [s.get("mean_complexity_after") for s in stats],
        "selected_by_difficulty": [s.get("difficulty_after") for s in stats],
    }


def table(results: dict, pool: dict, iterations: int) -> str:
    head = "| arm | " + " | ".join(f"hard acc. it {t}" for t in range(iterations))
    lines = [head + " | all acc. (end) | it-0 data acc. after it 0 / at end |",
             "|---|" + "---|" * (iterations + 2)]  # fmt: skip
    base = results["random+ema"]["hard"][-1]
    for name, r in results.items():
        cells = " | ".join(f"{h:.3f}" for h in r["hard"])
        lines.append(f"| {name} | {cells} | {r['all'][-1]:.3f} | {r['first_data_after_0']:.3f} / "
                     f"{r['first_data_end']:.3f} |")  # fmt: skip
    lines.append("")
    lines.append("| arm | selected data per iteration: share of level 3 (mean complexity) |")
    lines.append("|---|---|")
    for name, r in results.items():
        cells = []
        for by, mc in zip(r["selected_by_difficulty"], r["mean_selected_complexity"]):
            level3 = sum(n for b, n in (by or {}).items() if difficulty_bucket(b) == "3")  # "3" or "3.0"
            share = level3 / max(sum(by.values()), 1) if by else None
            cells.append(("n/a" if share is None else f"{share:.2f}") + ("" if mc is None else f" ({mc:.2f})"))
        lines.append(f"| {name} | " + ", ".join(cells) + " |")
    lines.append("")
    lines.append(f"Starting model: hard acc. {results['aware+ema']['initial_hard']:.3f}, all "
                 f"{results['aware+ema']['initial_all']:.3f}.")  # fmt: skip
    if base:
        ratio = results["aware+ema"]["hard"][-1] / base
        lines.append(f"Final hard accuracy, model-aware / random: {ratio:.2f}x.")
    lines.append("")
    lines.append("| kept data | mean trace tokens | ratio to shortest-correct | wrong answers kept |")
    lines.append("|---|---|---|---|")
    s = pool["tokens_shortest_correct"]
    lines.append(f"| shortest correct (K={pool['k']}) | {s:.1f} | 1.00 | 0 |")
    lines.append(
        f"| first correct | {pool['tokens_first_correct']:.1f} | {pool['tokens_first_correct'] / s:.2f} | 0 |"
    )
    lines.append(f"| one reply, unverified | {pool['tokens_unverified']:.1f} | {pool['tokens_unverified'] / s:.2f} | "
                 f"{pool['unverified_error_rate']:.1%} |")  # fmt: skip
    return "\n".join(lines)


def aggregate(outs: list[str]) -> str:
    """Mean and range over seeds of the headline numbers of each arm."""
    runs = [json.loads((Path(o) / "results.json").read_text()) for o in outs]
    iterations = runs[0]["args"]["iterations"]
    arms = [a for a in runs[0]["arms"] if all(a in r["arms"] for r in runs)]

    def cell(values: list[float]) -> str:
        return f"{statistics.mean(values):.3f} ({min(values):.3f}-{max(values):.3f})"

    lines = [f"Mean (min-max) over {len(runs)} seeds ({', '.join(str(r['args']['seed']) for r in runs)}).", "",
             "| arm | " + " | ".join(f"hard acc. it {t}" for t in range(iterations))
             + " | all acc. (end) | it-0 data acc. at end |", "|---|" + "---|" * (iterations + 2)]  # fmt: skip
    for a in arms:
        hard = [cell([r["arms"][a]["hard"][t] for r in runs]) for t in range(iterations)]
        end = cell([r["arms"][a]["all"][-1] for r in runs])
        first = cell([r["arms"][a]["first_data_end"] for r in runs])
        lines.append(f"| {a} | " + " | ".join(hard) + f" | {end} | {first} |")
    initial = cell([r["arms"][arms[0]]["initial_hard"] for r in runs])
    lines += ["", f"Starting model, hard acc.: {initial}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder (reused: finished iterations are not redone)")
    parser.add_argument("--iterations", type=int, default=3, help="distillation iterations per arm")
    parser.add_argument("--pool", type=int, default=2000, help="prompts given to the teacher")
    parser.add_argument("--k", type=int, default=4, help="teacher replies per prompt")
    parser.add_argument("--error-rate", type=float, default=0.3, help="teacher's chance of a wrong result")
    parser.add_argument("--verbosity", type=float, default=0.5, help="teacher's chance of a padding line per step")
    parser.add_argument("--size", default="tiny", help="student size (train.world.tiny.SIZES)")
    parser.add_argument("--warmup-steps", type=int, default=400, help="SFT steps of the starting model")
    parser.add_argument("--warmup-examples", type=int, default=800, help="pool examples seen by the warm-up")
    parser.add_argument("--candidates", type=int, default=640, help="prompts scored per iteration")
    parser.add_argument("--samples", type=int, default=4, help="student replies per prompt (pass rate)")
    parser.add_argument("--target-size", type=int, default=160, help="training examples per iteration")
    parser.add_argument("--steps", type=int, default=80, help="training steps per iteration")
    parser.add_argument("--batch-size", type=int, default=32, help="training batch size")
    parser.add_argument("--n-test-hard", type=int, default=96, help="held-out level-3 problems")
    parser.add_argument("--n-test-easy", type=int, default=32, help="held-out level 1-2 problems")
    parser.add_argument("--first-eval", type=int, default=128, help="iteration-0 examples re-evaluated (forgetting)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run (numbers mean nothing)")
    parser.add_argument("--report-only", action="store_true", help="print the tables of an earlier run's results")
    parser.add_argument("--aggregate", nargs="+", metavar="DIR", help="print mean and range over these runs' results")
    args = parser.parse_args(argv)
    if args.aggregate:
        print(aggregate(args.aggregate))
        return {}
    if args.report_only:
        report = json.loads((Path(args.out) / "results.json").read_text())
        print(table(report["arms"], report["pool"], report["args"]["iterations"]))
        return report
    if args.quick:
        args.iterations, args.pool, args.warmup_steps, args.candidates = 2, 200, 10, 32
        args.samples, args.target_size, args.steps, args.n_test_hard, args.n_test_easy = 2, 16, 3, 8, 4
        args.first_eval, args.size = 8, "nano"
    setup_logging()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    pool = {**build_pool(args, out), "k": args.k}
    model = warm_up(args, out) if not (out / "warm" / "config.json").exists() else out / "warm"
    results = {name: run_arm(name, args, out, model) for name in ARMS}
    wall = time.perf_counter() - start
    report = {"args": vars(args), "pool": pool, "arms": results, "wall_seconds": wall}
    write_json(out / "results.json", report)
    print(table(results, pool, args.iterations))
    print(f"\nwall time {wall:.0f}s; results in {out / 'results.json'}")
    return report


if __name__ == "__main__":
    main()
