"""Generate arithmetic-world records: a training set with teacher responses and a held-out test set.

    python scripts/make_arithmetic_data.py --out outputs/data --n-train 4000 --n-test 200 --levels 1 2 3 \
        --think-format qwen3

Writes ``train.jsonl`` (one record per problem and mode, with a ``response``) and ``test.jsonl`` (problems
only, disjoint from training). Slow records carry ``/think`` or no tag (slow is the default; by default half
of them each, so the model obeys both); fast ones ``/no_think``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from train.core.cli import setup_logging
from train.core.data import write_jsonl
from train.core.modes import THINK_FORMATS
from train.world.arithmetic import LEVELS, make_dataset


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
    parser.add_argument(
        "--think-format",
        required=True,
        choices=sorted(THINK_FORMATS),
        help="think delimiters of the teacher's replies: qwen3 (<think>/</think>) or pangu ([unused16]/[unused17])",
    )
    args = parser.parse_args(argv)
    setup_logging()
    train, test = make_dataset(args.n_train, args.n_test, args.levels, args.modes, args.slow_tag,
                               args.verbosity, args.error_rate, args.seed,
                               think=THINK_FORMATS[args.think_format])  # fmt: skip
    out = Path(args.out)
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "test.jsonl", test)
    print(f"wrote {len(train)} training and {len(test)} test records to {out}")


if __name__ == "__main__":
    main()
