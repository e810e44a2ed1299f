"""Generate arithmetic-world records: a training set with teacher responses and a held-out test set.

    python scripts/make_arithmetic_data.py --out outputs/data --n-train 4000 --n-test 200 --levels 1 2 3

Writes ``train.jsonl`` (one record per problem and mode, with a ``response``) and ``test.jsonl`` (problems
only, disjoint from training). Slow records carry ``/think`` or no tag (slow is the default; by default half
of them each, so the model obeys both); fast ones ``/no_think``.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.arithmetic import LEVELS, ArithmeticTeacher, make_problems  # noqa: E402
from train.cli import setup_logging  # noqa: E402
from train.data import write_jsonl  # noqa: E402
from train.modes import Mode, apply_mode  # noqa: E402


def build(args: argparse.Namespace) -> tuple[list[dict], list[dict]]:
    test = make_problems(args.n_test, args.levels, seed=args.seed + 1)
    train = make_problems(args.n_train, args.levels, seed=args.seed, exclude={p["id"] for p in test})
    teacher = ArithmeticTeacher(verbosity=args.verbosity, error_rate=args.error_rate, seed=args.seed)
    rows = []
    rng = random.Random(args.seed)
    for p in train:
        for mode in map(Mode.parse, args.modes):
            tag = mode
            if mode == Mode.SLOW and (args.slow_tag == "none" or (args.slow_tag == "both" and rng.random() < 0.5)):
                tag = None  # no tag means slow too: teach both spellings of the request
            prompt = apply_mode(p["prompt"], tag)[0]["content"]
            rows.append({**p, "prompt": prompt, "response": teacher.respond(p, mode)})
    return rows, test


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--n-train", type=int, default=4000, help="training problems")
    parser.add_argument("--n-test", type=int, default=200, help="held-out problems")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 2, 3], choices=sorted(LEVELS))
    parser.add_argument(
        "--modes", nargs="+", default=["slow"], choices=["slow", "fast"], help="reply modes (both: slow fast)"
    )
    parser.add_argument(
        "--slow-tag",
        choices=["both", "think", "none"],
        default="both",
        help="slow prompts carry /think, no tag, or either at random (default: both)",
    )
    parser.add_argument("--verbosity", type=float, default=0.0, help="teacher's chance of a redundant step")
    parser.add_argument("--error-rate", type=float, default=0.0, help="teacher's chance of a wrong result")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    setup_logging()
    train, test = build(args)
    out = Path(args.out)
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "test.jsonl", test)
    print(f"wrote {len(train)} training and {len(test)} test records to {out}")


if __name__ == "__main__":
    main()
