"""Simulate GRPO rollout scheduling: W generator workers, one learner, policies sync | ssp | priority | ssp+priority.

    python scripts/rl_scheduler_sim.py --workers 1024 --cv 1.0 --staleness 2
    python scripts/rl_scheduler_sim.py --lengths lengths.json --decode-s 0.02 --train-s 60 --policies sync ssp
    python scripts/rl_scheduler_sim.py --calibrate measured.json     # predicted vs measured idle fractions

Prints one row per policy: learner and generator idle fractions, total idle time (learner + generators, in
worker-hours), steps per hour, the reduction of total idle against the first policy, and the observed staleness
histogram. The model and the calibration file's schema are in docs/grpo_scheduler.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from train.rl.schedule_sim import POLICIES, LengthModel, SimConfig, calibrate, format_table, run_policies


def read_lengths(path: Path) -> tuple[float, ...]:
    """Group lengths from a JSON list or a text file with one number per line."""
    text = path.read_text(encoding="utf-8")
    try:
        values = json.loads(text) if text.lstrip().startswith("[") else [float(x) for x in text.split()]
    except ValueError as exc:
        raise SystemExit(f"{path}: expected a JSON list or one length per line: {exc}") from None
    if not values:
        raise SystemExit(f"{path}: no lengths")
    return tuple(float(x) for x in values)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policies", nargs="+", choices=POLICIES, default=list(POLICIES))
    parser.add_argument("--workers", type=int, default=1024, help="generator workers W")
    parser.add_argument("--batch-groups", type=int, help="groups B per learner step (default: 2 * workers)")
    parser.add_argument("--staleness", type=int, default=2, help="s for the ssp policies")
    parser.add_argument("--mean-len", type=float, default=4096.0, help="mean group length in tokens (lognormal)")
    parser.add_argument("--cv", type=float, default=1.0, help="coefficient of variation of the lengths (lognormal)")
    parser.add_argument("--lengths", type=Path, help="measured group lengths to resample instead of the lognormal")
    parser.add_argument("--max-len", type=float, default=32768.0, help="cap on a length (max_tokens); 0: none")
    parser.add_argument("--decode-s", type=float, default=0.01, help="seconds per decode step of a worker")
    parser.add_argument("--train-s", type=float, help="learner seconds per step (default: a batch's mean decode)")
    parser.add_argument("--predict-sigma", type=float, default=0.5, help="length predictor error (lognormal sigma)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calibrate", type=Path, help="measured runs (JSON): print predicted vs measured instead")
    return parser.parse_args(argv)


def base_config(args: argparse.Namespace) -> SimConfig:
    big_b = args.batch_groups or 2 * args.workers
    values = read_lengths(args.lengths) if args.lengths else None
    lengths = LengthModel(mean=args.mean_len, cv=args.cv, values=values, max_len=args.max_len or None)
    mean_len = sum(values) / len(values) if values else args.mean_len
    # default train time: the learner keeps up with the generators' mean throughput (neither side is the bottleneck)
    train_s = args.train_s if args.train_s is not None else big_b * mean_len * args.decode_s / args.workers
    return SimConfig(
        workers=args.workers,
        batch_groups=big_b,
        steps=args.steps,
        decode_s=args.decode_s,
        train_s=train_s,
        lengths=lengths,
        predict_sigma=args.predict_sigma,
        seed=args.seed,
    )


def print_calibration(path: Path, seed: int) -> None:
    print(f"{'run':<12} {'learner idle: predicted':>24} {'measured':>9} {'gen idle: predicted':>20} {'measured':>9}")
    for row in calibrate(path, seed=seed):
        print(
            f"{row['name']:<12} {row['predicted_learner_idle_fraction']:>24.1%}"
            f" {row['measured_learner_idle_fraction']:>9.1%} {row['predicted_generator_idle_fraction']:>20.1%}"
            f" {row['measured_generator_idle_fraction']:>9.1%}"
        )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.calibrate:
        print_calibration(args.calibrate, args.seed)
        return
    base = base_config(args)
    print(
        f"W={base.workers} B={base.batch_groups} steps={base.steps} s={args.staleness} train_s={base.train_s:.2f}"
        f" decode_s={base.decode_s} lengths={'file ' + str(args.lengths) if args.lengths else f'cv={args.cv}'}"
        f" seed={base.seed}"
    )
    results = run_policies(base, args.policies, args.staleness)
    print(format_table(results, reference=next(iter(results))))


if __name__ == "__main__":
    main()
